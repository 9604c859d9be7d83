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

/// The follow-graph service.
#[derive(Clone)]
pub struct FollowGraph {
    store: Arc<dyn GraphStore>,
    clock: Arc<dyn Clock>,
    /// Edge log readers by name: the newest position each asked to read
    /// after, and when (this process's view; a restart forgets them and
    /// trims by age alone until they call again).
    log_readers: Arc<Mutex<HashMap<String, (u64, u64)>>>,
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
        }
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
        let change = self.store.follow(follower, feed).await?;
        record("follow", change.changed);
        Ok(change)
    }

    /// follower stops following feed.
    pub async fn unfollow(&self, follower: UserId, feed: &FeedRef) -> Result<EdgeChange, ApiError> {
        let change = self.store.unfollow(follower, feed).await?;
        record("unfollow", change.changed);
        Ok(change)
    }

    /// user blocks target.
    pub async fn block(&self, user: UserId, target: UserId) -> Result<BlockChange, ApiError> {
        if user == target {
            return Err(ApiError::invalid("target_user_id", "a user cannot block themself"));
        }
        let change = self.store.block(user, target).await?;
        record("block", change.changed);
        Ok(change)
    }

    /// user lifts a block on target.
    pub async fn unblock(&self, user: UserId, target: UserId) -> Result<bool, ApiError> {
        let changed = self.store.unblock(user, target).await?;
        record("unblock", changed);
        Ok(changed)
    }

    /// user mutes or unmutes target.
    pub async fn set_mute(&self, user: UserId, target: UserId, muted: bool) -> Result<EdgeChange, ApiError> {
        if user == target {
            return Err(ApiError::invalid("target_user_id", "a user cannot mute themself"));
        }
        let change = self.store.set_mute(user, target, muted).await?;
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

    /// Per-user graph versions.
    pub async fn graph_versions(&self, users: &[UserId]) -> Result<Vec<u64>, ApiError> {
        Ok(self.store.graph_versions(users).await?)
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
}
