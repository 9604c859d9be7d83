//! Follow-graph domain logic: rules on top of the store, in plain Rust.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use feed_core::{ApiError, Clock, FeedRef, SystemClock, UserId};

use crate::store::{BlockChange, EdgeChange, EdgeState, FeedCounts, Follower, GraphStore, Relationship};

/// Counts of one user: feeds followed, and followers of `user:<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserCounts {
    /// The user.
    pub user: UserId,
    /// Feeds the user follows.
    pub following: u64,
    /// Followers of user:<id>.
    pub followers: u64,
}

/// Where follow-graph keeps graph tokens: a token names a user's graph
/// from its issue until a change to that graph withdraws it, so a reader
/// holding a follow list under a token still held knows the list is exact
/// without asking (`feed_inbox::graph_token` has the protocol).
#[async_trait::async_trait]
pub trait GraphTokens: Send + Sync + 'static {
    /// Each user's token, issued unless one is held, in order (0: none).
    async fn issue(&self, users: &[UserId]) -> Result<Vec<u64>, String>;
    /// Withdraws the users' tokens.
    async fn withdraw(&self, users: &[UserId]) -> Result<(), String>;
}

#[async_trait::async_trait]
impl GraphTokens for feed_inbox::GraphTokens {
    async fn issue(&self, users: &[UserId]) -> Result<Vec<u64>, String> {
        feed_inbox::GraphTokens::issue(self, users)
            .await
            .map_err(|e| e.to_string())
    }
    async fn withdraw(&self, users: &[UserId]) -> Result<(), String> {
        feed_inbox::GraphTokens::withdraw(self, users)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The token store and the users whose withdrawal failed (retried by
/// [`FollowGraph::sweep_tokens`] until it succeeds).
#[derive(Clone)]
struct Tokens {
    store: Arc<dyn GraphTokens>,
    unswept: Arc<Mutex<std::collections::BTreeSet<UserId>>>,
}

/// The follow-graph service.
#[derive(Clone)]
pub struct FollowGraph {
    store: Arc<dyn GraphStore>,
    clock: Arc<dyn Clock>,
    /// Edge log readers by name: the newest position each asked to read
    /// after, and when (this process's view; a restart forgets them and
    /// trims by age alone until they call again).
    log_readers: Arc<Mutex<HashMap<String, (u64, u64)>>>,
    tokens: Option<Tokens>,
}

/// How long the edge log keeps changes.
#[derive(Debug, Clone, Copy)]
pub struct LogRetention {
    /// Changes older than this go even if a reader has not passed them (a
    /// reader silent this long counts as gone).
    pub keep_ms: u64,
    /// How far below a reader's newest position changes stay: its late
    /// window re-reads behind its cursor, and a replica restarting from
    /// the stored cursor may start a little behind the newest read.
    pub behind_ms: u64,
}

impl Default for LogRetention {
    fn default() -> Self {
        Self {
            keep_ms: 7 * 24 * 3_600_000,
            behind_ms: feed_core::edge_log::LATE_WINDOW_MS + 10 * 60_000,
        }
    }
}

fn record(op: &'static str, changed: bool) {
    if changed {
        metrics::counter!("feed_followgraph_edge_changes_total", "op" => op).increment(1);
    }
}

impl FollowGraph {
    /// A service over `store`.
    pub fn new(store: Arc<dyn GraphStore>) -> Self {
        Self {
            store,
            clock: Arc::new(SystemClock),
            log_readers: Arc::default(),
            tokens: None,
        }
    }

    /// The same service issuing graph tokens on `tokens` (the split
    /// deployment, where timelines hold follow lists under them).
    pub fn with_tokens(mut self, tokens: Arc<dyn GraphTokens>) -> Self {
        self.tokens = Some(Tokens {
            store: tokens,
            unswept: Arc::default(),
        });
        self
    }

    /// Withdraws the graph tokens of `users` after a change to their graphs
    /// was tried (whatever its outcome: a write that timed out may still
    /// have committed), before it is answered. A withdrawal that fails is
    /// retried by [`FollowGraph::sweep_tokens`]; the change is answered
    /// anyway, since it is durable (DESIGN Invariant 11).
    async fn changed<T>(&self, users: &[UserId], outcome: T) -> T {
        if let Some(t) = &self.tokens
            && let Err(e) = t.store.withdraw(users).await
        {
            tracing::warn!(error = %e, ?users, "graph token withdrawal failed; retrying behind");
            metrics::counter!("feed_followgraph_token_withdrawals_failed_total").increment(1);
            t.unswept
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(users.iter().copied());
        }
        outcome
    }

    /// Retries the failed withdrawals; true when none is left.
    pub async fn sweep_tokens(&self) -> bool {
        let Some(t) = &self.tokens else {
            return true;
        };
        let users: Vec<UserId> = t
            .unswept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        if users.is_empty() {
            return true;
        }
        if t.store.withdraw(&users).await.is_err() {
            return false;
        }
        let mut unswept = t.unswept.lock().unwrap_or_else(|p| p.into_inner());
        for u in &users {
            unswept.remove(u);
        }
        unswept.is_empty()
    }

    /// The same service on another clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The backing store (readiness checks).
    pub fn store(&self) -> &Arc<dyn GraphStore> {
        &self.store
    }

    /// follower follows feed.
    pub async fn follow(&self, follower: UserId, feed: &FeedRef) -> Result<EdgeChange, ApiError> {
        if feed.user_id() == Some(follower) {
            // A reader always sees their own posts; a self-edge would only skew counts.
            return Err(ApiError::invalid("feed", "a user cannot follow their own feed"));
        }
        let change = self
            .changed(&[follower], self.store.follow(follower, feed).await)
            .await?;
        record("follow", change.changed);
        Ok(change)
    }

    /// follower stops following feed.
    pub async fn unfollow(&self, follower: UserId, feed: &FeedRef) -> Result<EdgeChange, ApiError> {
        let change = self
            .changed(&[follower], self.store.unfollow(follower, feed).await)
            .await?;
        record("unfollow", change.changed);
        Ok(change)
    }

    /// user blocks target.
    pub async fn block(&self, user: UserId, target: UserId) -> Result<BlockChange, ApiError> {
        if user == target {
            return Err(ApiError::invalid("target_user_id", "a user cannot block themself"));
        }
        // A block either way is part of both users' graphs.
        let change = self
            .changed(&[user, target], self.store.block(user, target).await)
            .await?;
        record("block", change.changed);
        Ok(change)
    }

    /// user lifts a block on target.
    pub async fn unblock(&self, user: UserId, target: UserId) -> Result<bool, ApiError> {
        let changed = self
            .changed(&[user, target], self.store.unblock(user, target).await)
            .await?;
        record("unblock", changed);
        Ok(changed)
    }

    /// user mutes or unmutes target.
    pub async fn set_mute(&self, user: UserId, target: UserId, muted: bool) -> Result<EdgeChange, ApiError> {
        if user == target {
            return Err(ApiError::invalid("target_user_id", "a user cannot mute themself"));
        }
        let change = self
            .changed(&[user], self.store.set_mute(user, target, muted).await)
            .await?;
        record(if muted { "mute" } else { "unmute" }, change.changed);
        Ok(change)
    }

    /// For each target: a block either way, and whether `user` mutes it.
    pub async fn blocks_and_mutes(&self, user: UserId, targets: &[UserId]) -> Result<Vec<(bool, bool)>, ApiError> {
        Ok(self.store.blocks_and_mutes(user, targets).await?)
    }

    /// Relationships of user to targets, and whether user follows feeds.
    pub async fn relationships(
        &self,
        user: UserId,
        targets: &[UserId],
        feeds: &[FeedRef],
    ) -> Result<(Vec<Relationship>, Vec<bool>), ApiError> {
        Ok((
            self.store.relationships(user, targets).await?,
            self.store.is_following(user, feeds).await?,
        ))
    }

    /// Whether `user` is a member of each of `feeds`, in order.
    pub async fn members(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError> {
        Ok(self.store.is_member(user, feeds).await?)
    }

    /// Makes `user` a member of `feed` or not; true when that changed. A
    /// user feed has no members: it is its owner's.
    pub async fn set_member(&self, feed: &FeedRef, user: UserId, member: bool) -> Result<bool, ApiError> {
        if feed.user_id().is_some() {
            return Err(ApiError::invalid("feed", "a user feed has no members"));
        }
        let changed = self.store.set_member(feed, user, member).await?;
        record(if member { "add_member" } else { "remove_member" }, changed);
        Ok(changed)
    }

    /// A page of members after `after`, and whether more follow.
    pub async fn list_members(
        &self,
        feed: &FeedRef,
        after: UserId,
        limit: usize,
    ) -> Result<(Vec<UserId>, bool), ApiError> {
        let mut page = self.store.list_members(feed, after, limit + 1).await?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }

    /// A page of followers after `after`, and whether more follow.
    pub async fn list_followers(
        &self,
        feed: &FeedRef,
        after: UserId,
        limit: usize,
    ) -> Result<(Vec<Follower>, bool), ApiError> {
        // Read one extra to know whether a next page exists without an empty last page.
        let mut page = self.store.list_followers(feed, after, limit + 1).await?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }

    /// A page of followed feeds after `after`, and whether more follow.
    pub async fn list_following(
        &self,
        user: UserId,
        after: Option<&FeedRef>,
        limit: usize,
    ) -> Result<(Vec<FeedRef>, bool), ApiError> {
        let mut page = self.store.list_following(user, after, limit + 1).await?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }

    /// Counts of feeds and users.
    pub async fn counts(
        &self,
        feeds: &[FeedRef],
        users: &[UserId],
    ) -> Result<(Vec<FeedCounts>, Vec<UserCounts>), ApiError> {
        let feed_counts = self.store.feed_counts(feeds).await?;
        let following = self.store.following_counts(users).await?;
        let user_feeds: Vec<FeedRef> = users.iter().map(|u| FeedRef::user(*u)).collect();
        let followers = self.store.feed_counts(&user_feeds).await?;
        let users = users
            .iter()
            .zip(following)
            .zip(followers)
            .map(|((&user, following), f)| UserCounts {
                user,
                following,
                followers: f.followers,
            })
            .collect();
        Ok((feed_counts, users))
    }

    /// Non-empty follower shards of feed, and the total follower count.
    pub async fn follower_shards(&self, feed: &FeedRef) -> Result<(Vec<u64>, u64), ApiError> {
        let shards = self.store.follower_shards(feed).await?;
        let total = self.store.feed_counts(std::slice::from_ref(feed)).await?[0].followers;
        Ok((shards, total))
    }

    /// One range page of a shard; `done` when nothing follows it in the shard.
    pub async fn page_shard(
        &self,
        feed: &FeedRef,
        shard: u64,
        after: UserId,
        limit: usize,
    ) -> Result<(Vec<Follower>, bool), ApiError> {
        let mut page = self.store.page_shard(feed, shard, after, limit + 1).await?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, !more))
    }

    /// Current edge states.
    pub async fn edge_states(&self, edges: &[(UserId, FeedRef)]) -> Result<Vec<EdgeState>, ApiError> {
        Ok(self.store.edge_states(edges).await?)
    }

    /// The edge change log after `after_seq`; a named `reader` has passed
    /// `after_seq` (see [`FollowGraph::trim_edge_log`]).
    pub async fn edge_changes(
        &self,
        after_seq: u64,
        limit: usize,
        reader: &str,
    ) -> Result<Vec<crate::store::EdgeLogEntry>, ApiError> {
        if !reader.is_empty() {
            let now = self.clock.now_ms();
            let mut readers = self.log_readers.lock().unwrap_or_else(|p| p.into_inner());
            let e = readers.entry(reader.to_owned()).or_insert((after_seq, now));
            *e = (e.0.max(after_seq), now);
        }
        Ok(self.store.edge_changes(after_seq, limit).await?)
    }

    /// Trims the edge log below what every reader seen within `keep_ms`
    /// has passed (less `behind_ms`), and below `keep_ms` of age in any
    /// case; returns the position trimmed below.
    pub async fn trim_edge_log(&self, r: LogRetention) -> Result<u64, ApiError> {
        use feed_core::edge_log::{POSITIONS_PER_MS, position_at};
        let now = self.clock.now_ms();
        let oldest_kept = position_at(now.saturating_sub(r.keep_ms));
        let passed = {
            let mut readers = self.log_readers.lock().unwrap_or_else(|p| p.into_inner());
            readers.retain(|_, (_, seen)| now.saturating_sub(*seen) < r.keep_ms);
            readers.values().map(|(seq, _)| *seq).min()
        };
        let bound = passed.map_or(oldest_kept, |p| {
            p.saturating_sub(r.behind_ms.saturating_mul(POSITIONS_PER_MS))
                .max(oldest_kept)
        });
        self.store.trim_edge_log(bound).await?;
        Ok(bound)
    }

    /// Per-user graph versions, each with the user's graph token (0 when
    /// none could be issued).
    pub async fn graph_versions(&self, users: &[UserId]) -> Result<Vec<(u64, u64)>, ApiError> {
        // Issued before the versions are read: a token names the graph as
        // it is from then on (until a change withdraws it).
        let tokens = match &self.tokens {
            // A withdrawal still owed first, or the token it owes might be
            // handed out again.
            Some(t) if self.sweep_tokens().await => t.store.issue(users).await.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "graph tokens not issued");
                vec![0; users.len()]
            }),
            _ => vec![0; users.len()],
        };
        let versions = self.store.graph_versions(users).await?;
        Ok(versions.into_iter().zip(tokens).collect())
    }
}

#[cfg(test)]
mod tests {
    use feed_core::ManualClock;

    use super::*;
    use crate::store::contract::contract_policy;
    use crate::store::embedded::EmbeddedGraphStore;

    const HOUR: u64 = 3_600_000;

    #[tokio::test]
    async fn the_edge_log_is_trimmed_below_every_live_reader_and_a_silent_reader_stops_holding_it() {
        let dir = tempfile::tempdir().expect("dir");
        let store = EmbeddedGraphStore::open(dir.path(), contract_policy()).expect("store");
        // The service's clock runs ten hours behind the store's positions:
        // no change is old enough to go by age, only readers decide.
        let clock = Arc::new(ManualClock::new(SystemClock.now_ms() - 10 * HOUR));
        let g = FollowGraph::new(Arc::new(store)).with_clock(clock.clone());
        for u in 1..=4 {
            g.follow(u, &FeedRef::user(9)).await.expect("follow");
        }
        let all: Vec<u64> = g
            .edge_changes(0, 100, "")
            .await
            .expect("log")
            .iter()
            .map(|c| c.seq)
            .collect();
        let left = || async {
            g.edge_changes(0, 100, "")
                .await
                .expect("log")
                .iter()
                .map(|c| c.seq)
                .collect::<Vec<u64>>()
        };
        let r = LogRetention {
            keep_ms: HOUR,
            behind_ms: 0,
        };
        g.trim_edge_log(r).await.expect("trim");
        assert_eq!(left().await, all, "no reader has passed anything: all kept");
        g.edge_changes(all[1], 100, "publish").await.expect("read");
        g.edge_changes(all[0], 100, "audit").await.expect("read");
        g.trim_edge_log(r).await.expect("trim");
        assert_eq!(left().await, all, "the slower reader holds the log");
        clock.advance(HOUR / 2);
        g.edge_changes(all[2], 100, "publish").await.expect("read");
        g.edge_changes(all[1], 100, "audit").await.expect("read");
        g.trim_edge_log(r).await.expect("trim");
        assert_eq!(left().await, all[1..], "below every reader's position");
        // audit falls silent for longer than the log keeps anything.
        clock.advance(HOUR + 1);
        g.edge_changes(all[3], 100, "publish").await.expect("read");
        g.trim_edge_log(r).await.expect("trim");
        assert_eq!(left().await, all[3..], "a silent reader no longer holds it");
        // No reader at all for longer than that: age alone bounds the log.
        clock.set(SystemClock.now_ms() + 2 * HOUR);
        g.trim_edge_log(r).await.expect("trim");
        assert!(left().await.is_empty(), "older than the log keeps");
    }

    /// Graph tokens in memory, recording withdrawals, with Redis "down" on demand.
    #[derive(Default)]
    struct FakeTokens {
        held: Mutex<HashMap<UserId, u64>>,
        next: std::sync::atomic::AtomicU64,
        withdrawn: Mutex<Vec<UserId>>,
        down: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl GraphTokens for FakeTokens {
        async fn issue(&self, users: &[UserId]) -> Result<Vec<u64>, String> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("down".into());
            }
            let mut held = self.held.lock().expect("held");
            Ok(users
                .iter()
                .map(|u| {
                    *held
                        .entry(*u)
                        .or_insert_with(|| self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1)
                })
                .collect())
        }
        async fn withdraw(&self, users: &[UserId]) -> Result<(), String> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("down".into());
            }
            let mut held = self.held.lock().expect("held");
            for u in users {
                held.remove(u);
            }
            self.withdrawn.lock().expect("withdrawn").extend_from_slice(users);
            Ok(())
        }
    }

    fn with_tokens() -> (FollowGraph, Arc<FakeTokens>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("dir");
        let store = EmbeddedGraphStore::open(dir.path(), contract_policy()).expect("store");
        let tokens = Arc::new(FakeTokens::default());
        (
            FollowGraph::new(Arc::new(store)).with_tokens(tokens.clone()),
            tokens,
            dir,
        )
    }

    fn withdrawn(t: &FakeTokens) -> Vec<UserId> {
        std::mem::take(&mut *t.withdrawn.lock().expect("withdrawn"))
    }

    #[tokio::test]
    async fn every_change_to_a_graph_withdraws_the_token_of_each_user_whose_graph_it_is() {
        let (g, tokens, _dir) = with_tokens();
        let alice = FeedRef::user(2);
        g.follow(1, &alice).await.expect("follow");
        assert_eq!(withdrawn(&tokens), vec![1]);
        // Unchanged too: a retried write may have committed the first time.
        g.follow(1, &alice).await.expect("follow again");
        assert_eq!(withdrawn(&tokens), vec![1]);
        g.set_mute(1, 2, true).await.expect("mute");
        assert_eq!(withdrawn(&tokens), vec![1]);
        g.block(3, 1).await.expect("block");
        assert_eq!(withdrawn(&tokens), vec![3, 1], "a block is part of both graphs");
        g.unblock(3, 1).await.expect("unblock");
        assert_eq!(withdrawn(&tokens), vec![3, 1]);
        g.unfollow(1, &alice).await.expect("unfollow");
        assert_eq!(withdrawn(&tokens), vec![1]);
        // Refused before the store: nothing to withdraw.
        g.block(1, 1).await.expect_err("self block");
        assert!(withdrawn(&tokens).is_empty());
    }

    #[tokio::test]
    async fn versions_come_with_tokens_that_last_until_a_change_withdraws_them() {
        let (g, _tokens, _dir) = with_tokens();
        let v = g.graph_versions(&[1, 2]).await.expect("versions");
        assert!(v.iter().all(|(_, t)| *t != 0), "{v:?}");
        assert_eq!(
            g.graph_versions(&[1]).await.expect("versions")[0],
            v[0],
            "unchanged graph, same token"
        );
        g.follow(1, &FeedRef::user(2)).await.expect("follow");
        let after = g.graph_versions(&[1, 2]).await.expect("versions");
        assert!(
            after[0].0 > v[0].0 && after[0].1 != v[0].1,
            "a change: new version, new token"
        );
        assert_eq!(after[1], v[1], "the followed user's graph is unchanged");
    }

    #[tokio::test]
    async fn a_withdrawal_that_failed_is_retried_and_no_token_is_issued_until_it_succeeds() {
        let (g, tokens, _dir) = with_tokens();
        let held = g.graph_versions(&[1]).await.expect("versions")[0].1;
        tokens.down.store(true, std::sync::atomic::Ordering::SeqCst);
        // Durable: answered, whatever Redis does.
        g.follow(1, &FeedRef::user(2))
            .await
            .expect("follow answered with Redis down");
        assert!(!g.sweep_tokens().await, "still owed");
        assert_eq!(
            g.graph_versions(&[1]).await.expect("versions")[0].1,
            0,
            "no token while Redis is down"
        );
        tokens.down.store(false, std::sync::atomic::Ordering::SeqCst);
        // The owed withdrawal goes first, so the stale token is not handed out again.
        let fresh = g.graph_versions(&[1]).await.expect("versions")[0].1;
        assert!(fresh != 0 && fresh != held, "the token held before the change is gone");
        assert!(g.sweep_tokens().await, "nothing owed");
    }
}
