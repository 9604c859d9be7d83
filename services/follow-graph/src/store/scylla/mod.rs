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

mod reads;
mod schema;
mod statements;
mod writes;

pub use schema::migrate;
use statements::Statements;

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
pub const SCHEMA_VERSION: i32 = 4;
const LOG_BUCKET_MS: u64 = 3_600_000;

fn log_bucket(seq: u64) -> u64 {
    seq / feed_core::edge_log::POSITIONS_PER_MS / LOG_BUCKET_MS
}
const COMPONENT: &str = "follow-graph";

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

/// The ScyllaDB follow-graph store.
pub struct ScyllaGraphStore {
    session: Session,
    st: Statements,
    policy: GraphPolicy,
    /// Log buckets below this one were dropped whole by this process.
    trimmed_below: tokio::sync::Mutex<Option<u64>>,
}

impl ScyllaGraphStore {
    /// Connects, verifies the schema version and prepares every statement once.
    pub async fn connect(cfg: &ScyllaConfig, policy: GraphPolicy) -> Result<Self, StoreError> {
        let session = feed_cql::connect_verified(cfg, COMPONENT, SCHEMA_VERSION).await?;
        let st = Statements::prepare(&session, &cfg.keyspace).await?;
        Ok(Self {
            session,
            st,
            policy,
            trimmed_below: tokio::sync::Mutex::new(None),
        })
    }

    async fn exec(&self, p: &PreparedStatement, v: impl SerializeRow) -> Result<QueryResult, StoreError> {
        Ok(feed_cql::execute(&self.session, p, v).await?)
    }

    /// Runs a lightweight transaction; true when it applied.
    async fn lwt(&self, p: &PreparedStatement, v: impl SerializeRow) -> Result<bool, StoreError> {
        Ok(feed_cql::applied(&self.session, p, v).await?)
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

    /// How many pairs `user` holds in the table `count` reads, counting no
    /// further than `up_to`.
    async fn pair_count(&self, count: &PreparedStatement, user: UserId, up_to: u64) -> Result<u64, StoreError> {
        let limit = up_to.clamp(1, i32::MAX as u64) as i32;
        let rows = self
            .exec(count, (i(user), limit))
            .await?
            .into_rows_result()
            .map_err(err)?;
        Ok(rows.rows_num() as u64)
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
        writes::follow(self, follower, feed).await
    }

    async fn unfollow(&self, follower: UserId, feed: &FeedRef) -> Result<EdgeChange, StoreError> {
        writes::unfollow(self, follower, feed).await
    }

    async fn block(&self, user: UserId, target: UserId) -> Result<BlockChange, StoreError> {
        writes::block(self, user, target).await
    }

    async fn unblock(&self, user: UserId, target: UserId) -> Result<bool, StoreError> {
        writes::unblock(self, user, target).await
    }

    async fn set_mute(&self, user: UserId, target: UserId, muted: bool) -> Result<EdgeChange, StoreError> {
        writes::set_mute(self, user, target, muted).await
    }

    async fn blocks_and_mutes(&self, user: UserId, targets: &[UserId]) -> Result<Vec<(bool, bool)>, StoreError> {
        reads::blocks_and_mutes(self, user, targets).await
    }

    async fn relationships(&self, user: UserId, targets: &[UserId]) -> Result<Vec<Relationship>, StoreError> {
        reads::relationships(self, user, targets).await
    }

    async fn is_following(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, StoreError> {
        reads::is_following(self, user, feeds).await
    }

    async fn set_member(&self, feed: &FeedRef, user: UserId, member: bool) -> Result<bool, StoreError> {
        let name = feed.to_string();
        let statement = if member {
            &self.st.member_insert
        } else {
            &self.st.member_delete
        };
        self.lwt(statement, (name.as_str(), i(user))).await
    }

    async fn is_member(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, StoreError> {
        let mut out = Vec::with_capacity(feeds.len());
        for f in feeds {
            out.push(self.exists(&self.st.member_get, (f.to_string(), i(user))).await?);
        }
        Ok(out)
    }

    async fn list_members(&self, feed: &FeedRef, after: UserId, limit: usize) -> Result<Vec<UserId>, StoreError> {
        let r = self
            .exec(
                &self.st.member_page,
                (feed.to_string(), i(after), limit.min(i32::MAX as usize) as i32),
            )
            .await?
            .into_rows_result()
            .map_err(err)?;
        r.rows::<(i64,)>()
            .map_err(err)?
            .map(|row| row.map(|(id,)| u(id)).map_err(err))
            .collect()
    }

    async fn list_followers(&self, feed: &FeedRef, after: UserId, limit: usize) -> Result<Vec<Follower>, StoreError> {
        reads::list_followers(self, feed, after, limit).await
    }

    async fn list_following(
        &self,
        user: UserId,
        after: Option<&FeedRef>,
        limit: usize,
    ) -> Result<Vec<FeedRef>, StoreError> {
        reads::list_following(self, user, after, limit).await
    }

    async fn follower_shards(&self, feed: &FeedRef) -> Result<Vec<u64>, StoreError> {
        reads::follower_shards(self, feed).await
    }

    async fn page_shard(
        &self,
        feed: &FeedRef,
        shard: u64,
        after: UserId,
        limit: usize,
    ) -> Result<Vec<Follower>, StoreError> {
        reads::page_shard(self, feed, shard, after, limit).await
    }

    async fn feed_counts(&self, feeds: &[FeedRef]) -> Result<Vec<FeedCounts>, StoreError> {
        reads::feed_counts(self, feeds).await
    }

    async fn following_counts(&self, users: &[UserId]) -> Result<Vec<u64>, StoreError> {
        reads::following_counts(self, users).await
    }

    async fn edge_states(&self, edges: &[(UserId, FeedRef)]) -> Result<Vec<EdgeState>, StoreError> {
        reads::edge_states(self, edges).await
    }

    async fn graph_versions(&self, users: &[UserId]) -> Result<Vec<u64>, StoreError> {
        reads::graph_versions(self, users).await
    }

    async fn edge_changes(&self, after_seq: u64, limit: usize) -> Result<Vec<EdgeLogEntry>, StoreError> {
        reads::edge_changes(self, after_seq, limit).await
    }

    async fn trim_edge_log(&self, below_seq: u64) -> Result<(), StoreError> {
        writes::trim_edge_log(self, below_seq).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.session
            .query_unpaged("SELECT now() FROM system.local", ())
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}
