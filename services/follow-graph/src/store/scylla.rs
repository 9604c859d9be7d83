//! ScyllaDB backend.
//!
//! Tables (created by `--migrate`, verified at start):
//! - `fg_following (user_id, feed)`: a user's follows; one partition per
//!   user, bounded by `max_following`.
//! - `fg_followers ((feed, shard), follower_id)`: a feed's followers, one
//!   partition per 65,536-id shard, so no partition grows without bound.
//! - `fg_shards (feed, shard)`: the shards a feed has ever used.
//! - `fg_edge_versions ((user_id, feed))`, `fg_feed_stats (feed)`,
//!   `fg_user_stats (user_id)`: versions and counts, changed only by
//!   lightweight-transaction compare-and-set, so a retried or concurrent
//!   change is counted once.
//! - `fg_blocks`, `fg_mutes ((user_id), target_id)`.
//! - `fg_edge_log ((bucket), seq)`: the edge change log, one partition per
//!   hour of positions.
//!
//! The edge row is claimed first with `INSERT ... IF NOT EXISTS`; only the
//! writer whose claim applied bumps counts and versions. Its mirror row in
//! `fg_followers` is an idempotent upsert that a retried Follow re-asserts, so
//! a crash between the two steps loses no follower. (A crash after the claim
//! and before the count CAS leaves the count one short: counts are exact
//! under retries and concurrency, not under a mid-call crash.)
//!
//! Statements are prepared once, with LOCAL_QUORUM and LOCAL_SERIAL set
//! explicitly; multi-row reads are paged.

use async_trait::async_trait;
use feed_core::{FeedRef, UserId};
use feed_server::config::ScyllaConfig;
use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

use super::{
    BlockChange, Cause, EdgeChange, EdgeLogEntry, EdgeState, FeedCounts, Follower, GraphPolicy, GraphStore,
    Relationship, StoreError, shard_of,
};

/// Bumped when the schema below changes; services refuse an older schema.
pub const SCHEMA_VERSION: i32 = 3;
const LOG_BUCKET_MS: u64 = 3_600_000;

fn log_bucket(seq: u64) -> u64 {
    seq / feed_core::edge_log::POSITIONS_PER_MS / LOG_BUCKET_MS
}
const COMPONENT: &str = "follow-graph";

fn schema(keyspace: &str) -> Vec<String> {
    let k = keyspace;
    vec![
        format!("CREATE TABLE IF NOT EXISTS {k}.fg_following (user_id bigint, feed text, PRIMARY KEY (user_id, feed))"),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.fg_followers (feed text, shard bigint, follower_id bigint, muted boolean, PRIMARY KEY ((feed, shard), follower_id))"
        ),
        format!("CREATE TABLE IF NOT EXISTS {k}.fg_shards (feed text, shard bigint, PRIMARY KEY (feed, shard))"),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.fg_edge_versions (user_id bigint, feed text, version bigint, PRIMARY KEY ((user_id, feed)))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.fg_feed_stats (feed text PRIMARY KEY, followers bigint, celebrity boolean)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.fg_user_stats (user_id bigint PRIMARY KEY, following bigint, graph_version bigint)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.fg_blocks (user_id bigint, target_id bigint, PRIMARY KEY (user_id, target_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.fg_mutes (user_id bigint, target_id bigint, PRIMARY KEY (user_id, target_id))"
        ),
        // One partition per hour of changes, in position order.
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.fg_edge_log (bucket bigint, seq bigint, entry blob, PRIMARY KEY (bucket, seq))"
        ),
    ]
}

impl From<feed_server::scylla::ScyllaError> for StoreError {
    fn from(e: feed_server::scylla::ScyllaError) -> Self {
        match e {
            feed_server::scylla::ScyllaError::Unavailable(m) => StoreError::Unavailable(m),
            feed_server::scylla::ScyllaError::Backend(m) => StoreError::Backend(m),
        }
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

// User ids are validated to fit i63, so the cast keeps bigint order.
fn i(v: u64) -> i64 {
    v as i64
}

fn u(v: i64) -> u64 {
    v as u64
}

/// Applies the schema (the `--migrate` step); safe to run again.
pub async fn migrate(cfg: &ScyllaConfig) -> Result<(), StoreError> {
    Ok(feed_server::scylla::migrate(cfg, COMPONENT, SCHEMA_VERSION, &schema(&cfg.keyspace)).await?)
}

struct Statements {
    following_insert: PreparedStatement,
    following_delete: PreparedStatement,
    following_get: PreparedStatement,
    following_page: PreparedStatement,
    following_page_after: PreparedStatement,
    followers_upsert: PreparedStatement,
    followers_delete: PreparedStatement,
    followers_page: PreparedStatement,
    shards_insert: PreparedStatement,
    shards_list: PreparedStatement,
    version_get: PreparedStatement,
    version_insert: PreparedStatement,
    version_update: PreparedStatement,
    feed_stats_get: PreparedStatement,
    feed_stats_insert: PreparedStatement,
    feed_stats_update: PreparedStatement,
    user_stats_get: PreparedStatement,
    user_stats_insert: PreparedStatement,
    user_stats_update: PreparedStatement,
    block_insert: PreparedStatement,
    block_delete: PreparedStatement,
    block_get: PreparedStatement,
    mute_insert: PreparedStatement,
    mute_delete: PreparedStatement,
    mute_get: PreparedStatement,
    log_insert: PreparedStatement,
    log_page: PreparedStatement,
}

/// The ScyllaDB follow-graph store.
pub struct ScyllaGraphStore {
    session: Session,
    st: Statements,
    policy: GraphPolicy,
}

impl ScyllaGraphStore {
    /// Connects, verifies the schema version and prepares every statement once.
    pub async fn connect(cfg: &ScyllaConfig, policy: GraphPolicy) -> Result<Self, StoreError> {
        let session = feed_server::scylla::connect_verified(cfg, COMPONENT, SCHEMA_VERSION).await?;
        let k = &cfg.keyspace;
        let prep = |q: String| {
            let session = &session;
            async move { Ok::<_, StoreError>(feed_server::scylla::prepare(session, q).await?) }
        };
        let st = Statements {
            following_insert: prep(format!("INSERT INTO {k}.fg_following (user_id, feed) VALUES (?, ?) IF NOT EXISTS")).await?,
            following_delete: prep(format!("DELETE FROM {k}.fg_following WHERE user_id = ? AND feed = ? IF EXISTS")).await?,
            following_get: prep(format!("SELECT feed FROM {k}.fg_following WHERE user_id = ? AND feed = ?")).await?,
            following_page: prep(format!("SELECT feed FROM {k}.fg_following WHERE user_id = ? LIMIT ?")).await?,
            following_page_after: prep(format!("SELECT feed FROM {k}.fg_following WHERE user_id = ? AND feed > ? LIMIT ?")).await?,
            followers_upsert: prep(format!(
                "INSERT INTO {k}.fg_followers (feed, shard, follower_id, muted) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            followers_delete: prep(format!(
                "DELETE FROM {k}.fg_followers WHERE feed = ? AND shard = ? AND follower_id = ?"
            ))
            .await?,
            followers_page: prep(format!(
                "SELECT follower_id, muted FROM {k}.fg_followers WHERE feed = ? AND shard = ? AND follower_id > ? LIMIT ?"
            ))
            .await?,
            shards_insert: prep(format!("INSERT INTO {k}.fg_shards (feed, shard) VALUES (?, ?)")).await?,
            shards_list: prep(format!("SELECT shard FROM {k}.fg_shards WHERE feed = ?")).await?,
            version_get: prep(format!("SELECT version FROM {k}.fg_edge_versions WHERE user_id = ? AND feed = ?")).await?,
            version_insert: prep(format!(
                "INSERT INTO {k}.fg_edge_versions (user_id, feed, version) VALUES (?, ?, 1) IF NOT EXISTS"
            ))
            .await?,
            version_update: prep(format!(
                "UPDATE {k}.fg_edge_versions SET version = ? WHERE user_id = ? AND feed = ? IF version = ?"
            ))
            .await?,
            feed_stats_get: prep(format!("SELECT followers, celebrity FROM {k}.fg_feed_stats WHERE feed = ?")).await?,
            feed_stats_insert: prep(format!(
                "INSERT INTO {k}.fg_feed_stats (feed, followers, celebrity) VALUES (?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            feed_stats_update: prep(format!(
                "UPDATE {k}.fg_feed_stats SET followers = ?, celebrity = ? WHERE feed = ? IF followers = ?"
            ))
            .await?,
            user_stats_get: prep(format!("SELECT following, graph_version FROM {k}.fg_user_stats WHERE user_id = ?")).await?,
            user_stats_insert: prep(format!(
                "INSERT INTO {k}.fg_user_stats (user_id, following, graph_version) VALUES (?, ?, 1) IF NOT EXISTS"
            ))
            .await?,
            user_stats_update: prep(format!(
                "UPDATE {k}.fg_user_stats SET following = ?, graph_version = ? WHERE user_id = ? IF graph_version = ?"
            ))
            .await?,
            block_insert: prep(format!("INSERT INTO {k}.fg_blocks (user_id, target_id) VALUES (?, ?) IF NOT EXISTS")).await?,
            block_delete: prep(format!("DELETE FROM {k}.fg_blocks WHERE user_id = ? AND target_id = ? IF EXISTS")).await?,
            block_get: prep(format!("SELECT target_id FROM {k}.fg_blocks WHERE user_id = ? AND target_id = ?")).await?,
            mute_insert: prep(format!("INSERT INTO {k}.fg_mutes (user_id, target_id) VALUES (?, ?) IF NOT EXISTS")).await?,
            mute_delete: prep(format!("DELETE FROM {k}.fg_mutes WHERE user_id = ? AND target_id = ? IF EXISTS")).await?,
            mute_get: prep(format!("SELECT target_id FROM {k}.fg_mutes WHERE user_id = ? AND target_id = ?")).await?,
            log_insert: prep(format!("INSERT INTO {k}.fg_edge_log (bucket, seq, entry) VALUES (?, ?, ?)")).await?,
            log_page: prep(format!("SELECT entry FROM {k}.fg_edge_log WHERE bucket = ? AND seq > ? LIMIT ?")).await?,
        };
        Ok(Self { session, st, policy })
    }

    async fn exec(&self, p: &PreparedStatement, v: impl SerializeRow) -> Result<QueryResult, StoreError> {
        Ok(feed_server::scylla::execute(&self.session, p, v).await?)
    }

    /// Runs a lightweight transaction; true when it applied.
    async fn lwt(&self, p: &PreparedStatement, v: impl SerializeRow) -> Result<bool, StoreError> {
        Ok(feed_server::scylla::applied(&self.session, p, v).await?)
    }

    async fn exists(&self, p: &PreparedStatement, v: impl SerializeRow) -> Result<bool, StoreError> {
        Ok(self.exec(p, v).await?.into_rows_result().map_err(err)?.rows_num() > 0)
    }

    async fn edge_version(&self, user: UserId, feed: &str) -> Result<u64, StoreError> {
        let r = self
            .exec(&self.st.version_get, (i(user), feed))
            .await?
            .into_rows_result()
            .map_err(err)?;
        Ok(r.maybe_first_row::<(i64,)>()
            .map_err(err)?
            .map(|(v,)| u(v))
            .unwrap_or(0))
    }

    async fn bump_edge_version(&self, user: UserId, feed: &str) -> Result<u64, StoreError> {
        loop {
            let cur = self.edge_version(user, feed).await?;
            let applied = if cur == 0 {
                self.lwt(&self.st.version_insert, (i(user), feed)).await?
            } else {
                self.lwt(&self.st.version_update, (i(cur + 1), i(user), feed, i(cur)))
                    .await?
            };
            if applied {
                return Ok(cur + 1);
            }
        }
    }

    async fn feed_stats(&self, feed: &str) -> Result<Option<(u64, bool)>, StoreError> {
        let r = self
            .exec(&self.st.feed_stats_get, (feed,))
            .await?
            .into_rows_result()
            .map_err(err)?;
        Ok(r.maybe_first_row::<(Option<i64>, Option<bool>)>()
            .map_err(err)?
            .map(|(n, c)| (u(n.unwrap_or(0)), c.unwrap_or(false))))
    }

    async fn add_followers(&self, feed: &str, delta: i64) -> Result<(), StoreError> {
        loop {
            let applied = match self.feed_stats(feed).await? {
                None => {
                    let n = 0u64.saturating_add_signed(delta);
                    self.lwt(
                        &self.st.feed_stats_insert,
                        (feed, i(n), self.policy.celebrity(false, n)),
                    )
                    .await?
                }
                Some((cur, celeb)) => {
                    let n = cur.saturating_add_signed(delta);
                    self.lwt(
                        &self.st.feed_stats_update,
                        (i(n), self.policy.celebrity(celeb, n), feed, i(cur)),
                    )
                    .await?
                }
            };
            if applied {
                return Ok(());
            }
        }
    }

    async fn user_stats(&self, user: UserId) -> Result<Option<(u64, u64)>, StoreError> {
        let r = self
            .exec(&self.st.user_stats_get, (i(user),))
            .await?
            .into_rows_result()
            .map_err(err)?;
        Ok(r.maybe_first_row::<(Option<i64>, Option<i64>)>()
            .map_err(err)?
            .map(|(f, v)| (u(f.unwrap_or(0)), u(v.unwrap_or(0)))))
    }

    /// Adds `delta` to the following count and bumps the graph version (CAS on the version).
    async fn touch_user(&self, user: UserId, delta: i64) -> Result<(), StoreError> {
        loop {
            let applied = match self.user_stats(user).await? {
                None => {
                    let n = 0u64.saturating_add_signed(delta);
                    self.lwt(&self.st.user_stats_insert, (i(user), i(n))).await?
                }
                Some((following, version)) => {
                    let n = following.saturating_add_signed(delta);
                    self.lwt(&self.st.user_stats_update, (i(n), i(version + 1), i(user), i(version)))
                        .await?
                }
            };
            if applied {
                return Ok(());
            }
        }
    }

    async fn blocks(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        self.exists(&self.st.block_get, (i(a), i(b))).await
    }

    async fn muting(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        self.exists(&self.st.mute_get, (i(a), i(b))).await
    }

    async fn is_following_one(&self, user: UserId, feed: &str) -> Result<bool, StoreError> {
        self.exists(&self.st.following_get, (i(user), feed)).await
    }

    async fn state(&self, follower: UserId, feed: &FeedRef) -> Result<EdgeState, StoreError> {
        let name = feed.to_string();
        Ok(EdgeState {
            follower,
            feed: feed.clone(),
            version: self.edge_version(follower, &name).await?,
            following: self.is_following_one(follower, &name).await?,
            muted: match feed.user_id() {
                Some(owner) => self.muting(follower, owner).await?,
                None => false,
            },
        })
    }

    async fn write_mirror(&self, follower: UserId, feed: &str, muted: bool) -> Result<(), StoreError> {
        let shard = i(shard_of(follower));
        self.exec(&self.st.followers_upsert, (feed, shard, i(follower), muted))
            .await?;
        self.exec(&self.st.shards_insert, (feed, shard)).await?;
        Ok(())
    }

    /// Removes an existing edge; the claim (LWT delete) makes one caller the remover.
    async fn remove_edge(&self, follower: UserId, feed: &FeedRef) -> Result<Option<u64>, StoreError> {
        let name = feed.to_string();
        if !self
            .lwt(&self.st.following_delete, (i(follower), name.as_str()))
            .await?
        {
            return Ok(None);
        }
        self.exec(
            &self.st.followers_delete,
            (name.as_str(), i(shard_of(follower)), i(follower)),
        )
        .await?;
        let version = self.bump_edge_version(follower, &name).await?;
        self.add_followers(&name, -1).await?;
        self.touch_user(follower, -1).await?;
        Ok(Some(version))
    }

    /// Appends to the change log. Positions are clock-ordered
    /// (ms * 10^6 + a random tie-break) and partitioned by hour; a writer
    /// whose clock lags can land behind a consumer's position, which is why
    /// the jobs built from this log are idempotent and version-checked.
    async fn log(&self, edge: &EdgeState, cause: Cause) -> Result<(), StoreError> {
        use prost::Message as _;
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        // Replicas write the log: a random tie-breaker below the next
        // millisecond keeps their positions apart.
        let per_ms = feed_core::edge_log::POSITIONS_PER_MS;
        let seq =
            feed_core::edge_log::position_at(at_ms) + (uuid::Uuid::new_v4().as_u128() % u128::from(per_ms)) as u64;
        let entry = EdgeLogEntry {
            seq,
            follower_id: edge.follower,
            feed: edge.feed.to_string(),
            edge_version: edge.version,
            following: edge.following,
            muted: edge.muted,
            cause: cause as i32,
            at_ms: at_ms as i64,
        };
        self.exec(&self.st.log_insert, (i(log_bucket(seq)), i(seq), entry.encode_to_vec()))
            .await?;
        Ok(())
    }

    async fn page(&self, feed: &str, shard: u64, after: UserId, limit: usize) -> Result<Vec<Follower>, StoreError> {
        let r = self
            .exec(
                &self.st.followers_page,
                (feed, i(shard), i(after), limit.min(i32::MAX as usize) as i32),
            )
            .await?
            .into_rows_result()
            .map_err(err)?;
        r.rows::<(i64, Option<bool>)>()
            .map_err(err)?
            .map(|row| {
                row.map(|(id, muted)| Follower {
                    user: u(id),
                    muted: muted.unwrap_or(false),
                })
                .map_err(err)
            })
            .collect()
    }
}

#[async_trait]
impl GraphStore for ScyllaGraphStore {
    async fn follow(&self, follower: UserId, feed: &FeedRef) -> Result<EdgeChange, StoreError> {
        let name = feed.to_string();
        let owner = feed.user_id();
        let muted = match owner {
            Some(o) => {
                if self.blocks(follower, o).await? || self.blocks(o, follower).await? {
                    return Err(StoreError::Blocked { follower, feed: name });
                }
                self.muting(follower, o).await?
            }
            None => false,
        };
        if self.is_following_one(follower, &name).await? {
            // A retry after a crash re-asserts the mirror row (idempotent upsert).
            self.write_mirror(follower, &name, muted).await?;
            return Ok(EdgeChange {
                changed: false,
                edge: self.state(follower, feed).await?,
            });
        }
        if self.user_stats(follower).await?.map(|s| s.0).unwrap_or(0) >= self.policy.max_following {
            return Err(StoreError::TooManyFollows(self.policy.max_following));
        }
        if !self
            .lwt(&self.st.following_insert, (i(follower), name.as_str()))
            .await?
        {
            return Ok(EdgeChange {
                changed: false,
                edge: self.state(follower, feed).await?,
            });
        }
        self.write_mirror(follower, &name, muted).await?;
        let version = self.bump_edge_version(follower, &name).await?;
        self.add_followers(&name, 1).await?;
        self.touch_user(follower, 1).await?;
        let edge = EdgeState {
            follower,
            feed: feed.clone(),
            version,
            following: true,
            muted,
        };
        self.log(&edge, Cause::Follow).await?;
        // A block written while we claimed the edge: one of us sees the other
        // (quorum writes, quorum reads), so undo rather than leave a follow across it.
        if let Some(o) = owner
            && (self.blocks(follower, o).await? || self.blocks(o, follower).await?)
        {
            self.remove_edge(follower, feed).await?;
            return Err(StoreError::Blocked { follower, feed: name });
        }
        Ok(EdgeChange { changed: true, edge })
    }

    async fn unfollow(&self, follower: UserId, feed: &FeedRef) -> Result<EdgeChange, StoreError> {
        let changed = self.remove_edge(follower, feed).await?.is_some();
        let edge = self.state(follower, feed).await?;
        if changed {
            self.log(&edge, Cause::Unfollow).await?;
        }
        Ok(EdgeChange { changed, edge })
    }

    async fn block(&self, user: UserId, target: UserId) -> Result<BlockChange, StoreError> {
        if !self.lwt(&self.st.block_insert, (i(user), i(target))).await? {
            return Ok(BlockChange {
                changed: false,
                removed: vec![],
            });
        }
        let mut removed = Vec::new();
        for (a, b) in [(user, target), (target, user)] {
            let feed = FeedRef::user(b);
            match self.remove_edge(a, &feed).await? {
                Some(version) => {
                    let edge = EdgeState {
                        follower: a,
                        muted: self.muting(a, b).await?,
                        feed,
                        version,
                        following: false,
                    };
                    self.log(&edge, Cause::Block).await?;
                    removed.push(edge);
                }
                None => self.touch_user(a, 0).await?,
            }
        }
        Ok(BlockChange { changed: true, removed })
    }

    async fn unblock(&self, user: UserId, target: UserId) -> Result<bool, StoreError> {
        let changed = self.lwt(&self.st.block_delete, (i(user), i(target))).await?;
        if changed {
            for (a, b) in [(user, target), (target, user)] {
                // Reads dropped b's items from a's inbox while the block
                // stood: the logged change brings them back (see embedded).
                let feed = FeedRef::user(b);
                let version = self.bump_edge_version(a, &feed.to_string()).await?;
                let edge = EdgeState {
                    version,
                    ..self.state(a, &feed).await?
                };
                self.log(&edge, Cause::Unblock).await?;
                self.touch_user(a, 0).await?;
            }
        }
        Ok(changed)
    }

    async fn set_mute(&self, user: UserId, target: UserId, muted: bool) -> Result<EdgeChange, StoreError> {
        let feed = FeedRef::user(target);
        let name = feed.to_string();
        let changed = if muted {
            self.lwt(&self.st.mute_insert, (i(user), i(target))).await?
        } else {
            self.lwt(&self.st.mute_delete, (i(user), i(target))).await?
        };
        if !changed {
            return Ok(EdgeChange {
                changed,
                edge: self.state(user, &feed).await?,
            });
        }
        let following = self.is_following_one(user, &name).await?;
        if following {
            self.write_mirror(user, &name, muted).await?;
        }
        let version = self.bump_edge_version(user, &name).await?;
        self.touch_user(user, 0).await?;
        let edge = EdgeState {
            follower: user,
            feed,
            version,
            following,
            muted,
        };
        self.log(&edge, if muted { Cause::Mute } else { Cause::Unmute }).await?;
        Ok(EdgeChange { changed, edge })
    }

    async fn blocks_and_mutes(&self, user: UserId, targets: &[UserId]) -> Result<Vec<(bool, bool)>, StoreError> {
        let mut out = Vec::with_capacity(targets.len());
        for &t in targets {
            let blocked = self.blocks(user, t).await? || self.blocks(t, user).await?;
            out.push((blocked, self.muting(user, t).await?));
        }
        Ok(out)
    }

    async fn relationships(&self, user: UserId, targets: &[UserId]) -> Result<Vec<Relationship>, StoreError> {
        let me = FeedRef::user(user).to_string();
        let mut out = Vec::with_capacity(targets.len());
        for &t in targets {
            out.push(Relationship {
                target: t,
                following: self.is_following_one(user, &FeedRef::user(t).to_string()).await?,
                followed_by: self.is_following_one(t, &me).await?,
                blocking: self.blocks(user, t).await?,
                blocked_by: self.blocks(t, user).await?,
                muting: self.muting(user, t).await?,
                muted_by: self.muting(t, user).await?,
            });
        }
        Ok(out)
    }

    async fn is_following(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, StoreError> {
        let mut out = Vec::with_capacity(feeds.len());
        for f in feeds {
            out.push(self.is_following_one(user, &f.to_string()).await?);
        }
        Ok(out)
    }

    async fn list_followers(&self, feed: &FeedRef, after: UserId, limit: usize) -> Result<Vec<Follower>, StoreError> {
        let name = feed.to_string();
        let mut out = Vec::new();
        for shard in self.follower_shards(feed).await? {
            if shard < shard_of(after) {
                continue;
            }
            let need = limit - out.len();
            out.extend(self.page(&name, shard, after, need).await?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn list_following(
        &self,
        user: UserId,
        after: Option<&FeedRef>,
        limit: usize,
    ) -> Result<Vec<FeedRef>, StoreError> {
        let limit = limit.min(i32::MAX as usize) as i32;
        let result = match after {
            Some(f) => {
                self.exec(&self.st.following_page_after, (i(user), f.to_string(), limit))
                    .await?
            }
            None => self.exec(&self.st.following_page, (i(user), limit)).await?,
        };
        let rows = result.into_rows_result().map_err(err)?;
        rows.rows::<(String,)>()
            .map_err(err)?
            .map(|r| r.map_err(err).and_then(|(s,)| FeedRef::parse(&s).map_err(err)))
            .collect()
    }

    async fn follower_shards(&self, feed: &FeedRef) -> Result<Vec<u64>, StoreError> {
        let pager = self
            .session
            .execute_iter(self.st.shards_list.clone(), (feed.to_string(),))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let rows: Vec<(i64,)> = pager
            .rows_stream::<(i64,)>()
            .map_err(err)?
            .try_collect()
            .await
            .map_err(err)?;
        Ok(rows.into_iter().map(|(s,)| u(s)).collect())
    }

    async fn page_shard(
        &self,
        feed: &FeedRef,
        shard: u64,
        after: UserId,
        limit: usize,
    ) -> Result<Vec<Follower>, StoreError> {
        self.page(&feed.to_string(), shard, after, limit).await
    }

    async fn feed_counts(&self, feeds: &[FeedRef]) -> Result<Vec<FeedCounts>, StoreError> {
        let mut out = Vec::with_capacity(feeds.len());
        for f in feeds {
            let (followers, celebrity) = self.feed_stats(&f.to_string()).await?.unwrap_or((0, false));
            out.push(FeedCounts { followers, celebrity });
        }
        Ok(out)
    }

    async fn following_counts(&self, users: &[UserId]) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::with_capacity(users.len());
        for &user in users {
            out.push(self.user_stats(user).await?.map(|s| s.0).unwrap_or(0));
        }
        Ok(out)
    }

    async fn edge_states(&self, edges: &[(UserId, FeedRef)]) -> Result<Vec<EdgeState>, StoreError> {
        let mut out = Vec::with_capacity(edges.len());
        for (user, feed) in edges {
            out.push(self.state(*user, feed).await?);
        }
        Ok(out)
    }

    async fn graph_versions(&self, users: &[UserId]) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::with_capacity(users.len());
        for &user in users {
            out.push(self.user_stats(user).await?.map(|s| s.1).unwrap_or(0));
        }
        Ok(out)
    }

    async fn edge_changes(&self, after_seq: u64, limit: usize) -> Result<Vec<EdgeLogEntry>, StoreError> {
        use prost::Message as _;
        let now_bucket = log_bucket(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| feed_core::edge_log::position_at(d.as_millis() as u64))
                .unwrap_or(0),
        ) + 1; // a writer whose clock runs ahead of this one's
        // Positions older than a week are gone from the consumer's view.
        let mut bucket = log_bucket(after_seq).max(now_bucket.saturating_sub(24 * 7));
        let mut out = Vec::new();
        while bucket <= now_bucket && out.len() < limit {
            let want = (limit - out.len()).min(i32::MAX as usize) as i32;
            let rows = self
                .exec(&self.st.log_page, (i(bucket), i(after_seq), want))
                .await?
                .into_rows_result()
                .map_err(err)?;
            for row in rows.rows::<(Vec<u8>,)>().map_err(err)? {
                let (bytes,) = row.map_err(err)?;
                out.push(EdgeLogEntry::decode(bytes.as_slice()).map_err(err)?);
            }
            bucket += 1;
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.session
            .query_unpaged("SELECT now() FROM system.local", ())
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}
