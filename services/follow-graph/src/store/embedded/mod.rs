//! Embedded backend on fjall (an LSM-tree KV store: crash-safe journal,
//! atomic cross-keyspace batches, forward and reverse range scans).
//!
//! Mutations take one writer lock, read what they need, and commit one
//! atomic batch synced to disk, so an edge, its mirror, the counts and the
//! versions never disagree, even after a crash. Keys are big-endian so byte
//! order is numeric order.

mod reads;
mod writes;

use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use feed_core::cache::ReadCache;
use feed_core::keys::{feed_key, feed_prefix, u64_at, u64_pair};
use feed_core::{FeedRef, UserId};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    BlockChange, Cause, EdgeChange, EdgeLogEntry, EdgeState, FeedCounts, Follower, GraphPolicy, GraphStore,
    Relationship, SHARD_BITS, StoreError, shard_of,
};

/// The embedded follow-graph store.
pub struct EmbeddedGraphStore {
    db: Database,
    /// user ‖ feed → ()
    following: Keyspace,
    /// len ‖ feed ‖ follower → muted (1 byte)
    followers: Keyspace,
    /// len ‖ feed ‖ shard → follower count in the shard
    shards: Keyspace,
    /// feed → followers (8) ‖ celebrity (1)
    feed_stats: Keyspace,
    /// user → following count (8) ‖ graph version (8)
    user_stats: Keyspace,
    /// user ‖ feed → edge version (kept after unfollow, so versions only grow)
    edge_versions: Keyspace,
    /// user ‖ target → ()
    blocks: Keyspace,
    /// user ‖ target → ()
    mutes: Keyspace,
    /// len ‖ feed ‖ member → ()
    members: Keyspace,
    /// Blocks and mutes in memory (few, and asked on every timeline read for
    /// each author on the page); changed after each commit.
    pairs: std::sync::RwLock<Pairs>,
    /// Whole follow lists of recently read users: every home read lists the
    /// reader's follows. Exact: an edge write drops its follower's list
    /// after the commit.
    lists: ReadCache<UserId, std::sync::Arc<[FeedRef]>>,
    /// Followers whose edges changed in the batch being written (writer lock held).
    changed: Mutex<Vec<UserId>>,
    /// seq → EdgeLogEntry (the change log, written in each change's batch)
    edge_log: Keyspace,
    next_seq: AtomicU64,
    policy: GraphPolicy,
    writer: Mutex<()>,
    sync: bool,
}

/// Blocks and mutes, as `user ‖ target` keys.
struct Pairs {
    blocks: std::collections::HashSet<[u8; 16]>,
    mutes: std::collections::HashSet<[u8; 16]>,
}

/// Users whose lists are kept.
const LISTS_KEPT: usize = 100_000;

/// Every 16-byte key of a keyspace.
fn keys_of(ks: &Keyspace) -> Result<std::collections::HashSet<[u8; 16]>, StoreError> {
    let mut out = std::collections::HashSet::new();
    for item in ks.iter() {
        let (k, _) = item.into_inner().map_err(be)?;
        if let Ok(key) = <[u8; 16]>::try_from(&k[..]) {
            out.insert(key);
        }
    }
    Ok(out)
}

fn be(e: fjall::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn user_feed_key(user: UserId, feed: &FeedRef) -> Vec<u8> {
    let mut k = user.to_be_bytes().to_vec();
    k.extend_from_slice(feed.to_string().as_bytes());
    k
}

impl EmbeddedGraphStore {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path, policy: GraphPolicy) -> Result<Self, StoreError> {
        let db = Database::builder(dir)
            .open()
            .map_err(|e| StoreError::from(feed_core::StorageError::opening(dir, e)))?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).map_err(be);
        let edge_log = ks("fg_edge_log")?;
        let blocks = ks("fg_blocks")?;
        let mutes = ks("fg_mutes")?;
        // The log resumes after its last entry: positions never repeat across restarts.
        let last = edge_log
            .last_key_value()
            .and_then(|g| g.key().ok())
            .map(|k| u64_at(&k, 0))
            .unwrap_or(0);
        Ok(Self {
            following: ks("fg_following")?,
            followers: ks("fg_followers")?,
            shards: ks("fg_shards")?,
            feed_stats: ks("fg_feed_stats")?,
            user_stats: ks("fg_user_stats")?,
            edge_versions: ks("fg_edge_versions")?,
            pairs: std::sync::RwLock::new(Pairs {
                blocks: keys_of(&blocks)?,
                mutes: keys_of(&mutes)?,
            }),
            blocks,
            mutes,
            members: ks("fg_members")?,
            next_seq: AtomicU64::new(last + 1),
            edge_log,
            db,
            policy,
            lists: ReadCache::new(LISTS_KEPT),
            changed: Mutex::new(Vec::new()),
            writer: Mutex::new(()),
            sync: true,
        })
    }

    /// Appends to the change log inside `batch`; caller holds the writer lock.
    fn log(&self, batch: &mut OwnedWriteBatch, edge: &EdgeState, cause: Cause) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        // Clock positions like the ScyllaDB log's, but one writer: each
        // above the last, so none is ever committed behind another.
        let floor = feed_core::edge_log::position_at(at_ms);
        let seq = match self
            .next_seq
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| Some(n.max(floor) + 1))
        {
            Ok(prev) | Err(prev) => prev.max(floor),
        };
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
        batch.insert(&self.edge_log, seq.to_be_bytes(), entry.encode_to_vec());
    }

    /// Whether acknowledged writes are fsynced (default true).
    pub fn with_sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is the database, which batches keep consistent.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn commit(&self, batch: OwnedWriteBatch) -> Result<(), StoreError> {
        let done = batch.commit().map_err(be).and_then(|()| {
            // Durable before the caller hears "done".
            if self.sync {
                self.db.persist(PersistMode::SyncAll).map_err(be)?;
            }
            Ok(())
        });
        // After the commit (or its failure), before the caller hears of it.
        let changed = std::mem::take(&mut *self.changed.lock().unwrap_or_else(|p| p.into_inner()));
        if !changed.is_empty() {
            self.lists.write(|lists| {
                for user in changed {
                    lists.remove(&user);
                }
            });
        }
        done
    }

    fn exists(ks: &Keyspace, key: &[u8]) -> Result<bool, StoreError> {
        ks.contains_key(key).map_err(be)
    }

    fn edge_version(&self, user: UserId, feed: &FeedRef) -> Result<u64, StoreError> {
        Ok(self
            .edge_versions
            .get(user_feed_key(user, feed))
            .map_err(be)?
            .map(|v| u64_at(&v, 0))
            .unwrap_or(0))
    }

    fn feed_counts_one(&self, feed: &FeedRef) -> Result<FeedCounts, StoreError> {
        Ok(match self.feed_stats.get(feed.to_string()).map_err(be)? {
            Some(v) => FeedCounts {
                followers: u64_at(&v, 0),
                celebrity: v.get(8) == Some(&1),
            },
            None => FeedCounts::default(),
        })
    }

    fn user_stats_one(&self, user: UserId) -> Result<(u64, u64), StoreError> {
        Ok(match self.user_stats.get(user.to_be_bytes()).map_err(be)? {
            Some(v) => (u64_at(&v, 0), u64_at(&v, 8)),
            None => (0, 0),
        })
    }

    fn pairs(&self) -> std::sync::RwLockReadGuard<'_, Pairs> {
        self.pairs.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the in-memory pairs after a commit.
    fn set_pair(&self, mutes: bool, key: [u8; 16], present: bool) {
        let mut p = self.pairs.write().unwrap_or_else(|p| p.into_inner());
        let set = if mutes { &mut p.mutes } else { &mut p.blocks };
        if present {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }

    /// How many pairs (blocks or mutes) `user` holds in `pairs`, counting
    /// no further than `up_to`.
    fn pair_count(&self, pairs: &Keyspace, user: UserId, up_to: u64) -> Result<u64, StoreError> {
        let mut n = 0;
        for item in pairs.prefix(user.to_be_bytes()) {
            item.key().map_err(be)?;
            n += 1;
            if n >= up_to {
                break;
            }
        }
        Ok(n)
    }

    fn is_muting(&self, user: UserId, target: UserId) -> Result<bool, StoreError> {
        Ok(self.pairs().mutes.contains(&u64_pair(user, target)))
    }

    fn either_blocks(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        let p = self.pairs();
        Ok(p.blocks.contains(&u64_pair(a, b)) || p.blocks.contains(&u64_pair(b, a)))
    }

    /// Writes user stats with a following-count delta and a graph-version bump.
    fn put_user_stats(
        &self,
        batch: &mut OwnedWriteBatch,
        user: UserId,
        following_delta: i64,
    ) -> Result<(), StoreError> {
        let (following, version) = self.user_stats_one(user)?;
        let following = following.saturating_add_signed(following_delta);
        let mut v = following.to_be_bytes().to_vec();
        v.extend_from_slice(&(version + 1).to_be_bytes());
        batch.insert(&self.user_stats, user.to_be_bytes(), v);
        Ok(())
    }

    /// Adds or removes the edge inside `batch`; caller holds the writer lock.
    fn write_edge(
        &self,
        batch: &mut OwnedWriteBatch,
        follower: UserId,
        feed: &FeedRef,
        add: bool,
        muted: bool,
    ) -> Result<u64, StoreError> {
        let version = self.edge_version(follower, feed)? + 1;
        batch.insert(
            &self.edge_versions,
            user_feed_key(follower, feed),
            version.to_be_bytes(),
        );
        let delta: i64 = if add { 1 } else { -1 };
        self.changed.lock().unwrap_or_else(|p| p.into_inner()).push(follower);
        if add {
            batch.insert(&self.following, user_feed_key(follower, feed), []);
            batch.insert(&self.followers, feed_key(feed, follower), [u8::from(muted)]);
        } else {
            batch.remove(&self.following, user_feed_key(follower, feed));
            batch.remove(&self.followers, feed_key(feed, follower));
        }
        let shard_key = feed_key(feed, shard_of(follower));
        let in_shard = self
            .shards
            .get(&shard_key)
            .map_err(be)?
            .map(|v| u64_at(&v, 0))
            .unwrap_or(0);
        match in_shard.saturating_add_signed(delta) {
            0 => batch.remove(&self.shards, shard_key),
            n => batch.insert(&self.shards, shard_key, n.to_be_bytes()),
        }
        let counts = self.feed_counts_one(feed)?;
        let followers = counts.followers.saturating_add_signed(delta);
        let celebrity = self.policy.celebrity(counts.celebrity, followers);
        let mut v = followers.to_be_bytes().to_vec();
        v.push(u8::from(celebrity));
        batch.insert(&self.feed_stats, feed.to_string(), v);
        self.put_user_stats(batch, follower, delta)?;
        Ok(version)
    }

    fn state(&self, follower: UserId, feed: &FeedRef) -> Result<EdgeState, StoreError> {
        let following = Self::exists(&self.following, &user_feed_key(follower, feed))?;
        let muted = match feed.user_id() {
            Some(owner) => self.is_muting(follower, owner)?,
            None => false,
        };
        Ok(EdgeState {
            follower,
            feed: feed.clone(),
            version: self.edge_version(follower, feed)?,
            following,
            muted,
        })
    }

    fn scan_followers(
        &self,
        feed: &FeedRef,
        from: u64,
        to_exclusive: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Follower>, StoreError> {
        let start = feed_key(feed, from);
        let end = match to_exclusive {
            Some(to) => feed_key(feed, to),
            None => {
                let mut p = feed_prefix(feed);
                p.extend_from_slice(&[0xFF; 9]);
                p
            }
        };
        let prefix_len = feed_prefix(feed).len();
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.followers.range(start..end) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.into_inner().map_err(be)?;
            out.push(Follower {
                user: u64_at(&k, prefix_len),
                muted: v.first() == Some(&1),
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl GraphStore for EmbeddedGraphStore {
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

    async fn relationships(&self, user: UserId, targets: &[UserId]) -> Result<Vec<Relationship>, StoreError> {
        reads::relationships(self, user, targets).await
    }

    async fn blocks_and_mutes(&self, user: UserId, targets: &[UserId]) -> Result<Vec<(bool, bool)>, StoreError> {
        reads::blocks_and_mutes(self, user, targets).await
    }

    async fn is_following(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, StoreError> {
        reads::is_following(self, user, feeds).await
    }

    async fn set_member(&self, feed: &FeedRef, user: UserId, member: bool) -> Result<bool, StoreError> {
        let _w = self.lock();
        let key = feed_core::keys::feed_key(feed, user);
        if Self::exists(&self.members, &key)? == member {
            return Ok(false);
        }
        let mut batch = self.db.batch();
        if member {
            batch.insert(&self.members, key, []);
        } else {
            batch.remove(&self.members, key);
        }
        self.commit(batch)?;
        Ok(true)
    }

    async fn is_member(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, StoreError> {
        feeds
            .iter()
            .map(|f| Self::exists(&self.members, &feed_core::keys::feed_key(f, user)))
            .collect()
    }

    async fn list_members(&self, feed: &FeedRef, after: UserId, limit: usize) -> Result<Vec<UserId>, StoreError> {
        let prefix = feed_core::keys::feed_prefix(feed);
        let len = prefix.len();
        let Some(from) = after.checked_add(1) else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for item in self.members.range(feed_core::keys::feed_key(feed, from)..) {
            let key = item.key().map_err(be)?;
            if !key.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push(u64_at(&key, len));
        }
        Ok(out)
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
        // In chunks: the writer lock is held per chunk, not for the whole trim.
        loop {
            let _w = self.lock();
            let mut batch = self.db.batch();
            let mut n = 0;
            for item in self.edge_log.range(..below_seq.to_be_bytes()).take(10_000) {
                let k = item.key().map_err(be)?;
                batch.remove(&self.edge_log, k);
                n += 1;
            }
            if n == 0 {
                return Ok(());
            }
            // Losing a trim to a crash only keeps entries longer: no fsync.
            batch.commit().map_err(be)?;
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.feed_stats.get("ping").map(|_| ()).map_err(be)
    }
}
