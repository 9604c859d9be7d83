//! Embedded backend on fjall. Every multi-row write is one atomic batch;
//! writes that promise durability (an accepted publish, a recorded job) are
//! synced before returning. Job completions and heartbeats are not synced:
//! losing one in a crash only re-runs an idempotent job.

mod jobs;
mod scheduled;

use jobs::{JobMirror, PendingIndex, PendingMirror, PendingOp, job_value, pending_index};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use feed_core::cache::ReadCache;
use feed_core::keys::{feed_key, feed_prefix, push_feed_prefix, u64_at};
use feed_core::{FeedRef, UserId};
use feed_proto::common::v1::{Activity, DeliveryMode};
use feed_proto::events::v1::{Job, job};
use feed_proto::publish::v1::ScheduledActivity;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use prost::Message;

use super::heads::FeedHeads;
use super::{
    ActivityStore, DeadJob, ForeignClaim, ForeignRecord, JobState, JobStats, OutboxEntry, PendingWork, StorageError,
    adds_items,
};

/// The embedded activity store.
pub struct EmbeddedActivityStore {
    db: Database,
    activities: Keyspace,
    foreign: Keyspace,
    outbox: Keyspace,
    pulled: Keyspace,
    /// Recently read or written activities: every home read hydrates a page.
    /// Shared, so a hit holds the cache's lock for a reference count, not a
    /// deep copy (the copy is made after the lock is released).
    activity_cache: ReadCache<u64, Arc<Activity>>,
    /// The newest entries of recently read outboxes.
    outbox_heads: FeedHeads,
    /// `feed_prefix` of every feed with pull-mode entries (the celebrities):
    /// a home read asks each followed feed for them, and most never have any.
    pulled_feeds: Mutex<HashSet<Vec<u8>>>,
    /// The newest pull-mode ids of those feeds.
    pulled_heads: FeedHeads,
    jobs: Keyspace,
    dead: Keyspace,
    scheduled: Keyspace,
    scheduled_by_time: Keyspace,
    scheduled_by_actor: Keyspace,
    /// name → value (the edge-log cursor)
    meta: Keyspace,
    /// activity ‖ job id → () for unfinished fanout jobs
    pending_fanout: Keyspace,
    /// follower ‖ job id → feed for unfinished backfill jobs
    pending_backfill: Keyspace,
    /// The two pending indexes in memory, changed after each commit: every
    /// timeline read asks for them, and the keyspaces' fronts fill with
    /// tombstones of finished jobs that a scan would wade through.
    pending_mem: Mutex<PendingMirror>,
    /// The jobs keyspace's live records by time, in memory, for the same
    /// reason: the sweeper looks for stale jobs every few seconds and job
    /// stats are polled, while the keyspace holds a tombstone for every job
    /// ever finished.
    jobs_mem: Mutex<JobMirror>,
    writer: Mutex<()>,
    sync: bool,
}

/// Activities kept in memory.
const ACTIVITIES_KEPT: usize = 100_000;
/// Entries an outbox head keeps: a page of 20 reads 40.
const OUTBOX_HEAD: usize = 64;
/// Entries a pull-mode head keeps: celebrities are few and read by many.
const PULLED_HEAD: usize = 512;
/// Feeds whose heads are kept, per keyspace.
const HEAD_FEEDS: usize = 100_000;

/// The distinct feeds of a `len ‖ feed ‖ id` keyspace: one seek per feed.
fn feeds_in(ks: &Keyspace) -> Result<HashSet<Vec<u8>>, StorageError> {
    let mut out = HashSet::new();
    let mut start: Vec<u8> = Vec::new();
    while let Some(item) = ks.range(start.clone()..).next() {
        let (k, _) = item.into_inner().map_err(be)?;
        let plen = 1 + usize::from(k.first().copied().unwrap_or(0));
        let prefix = k.get(..plen).ok_or_else(|| be("short key"))?.to_vec();
        // Past every id of this feed.
        start = prefix.clone();
        start.extend_from_slice(&[0xFF; 9]);
        out.insert(prefix);
    }
    Ok(out)
}

fn be(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

fn u32_at(v: &[u8], at: usize) -> u32 {
    v.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

fn mode_byte(m: DeliveryMode) -> u8 {
    m as i32 as u8
}

impl EmbeddedActivityStore {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let db = Database::builder(dir)
            .open()
            .map_err(|e| StorageError::opening(dir, e))?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).map_err(be);
        let pending_fanout = ks("pub_pending_fanout")?;
        let pulled = ks("pub_pulled")?;
        let pending_backfill = ks("pub_pending_backfill")?;
        let jobs = ks("pub_jobs")?;
        let jobs_mem = Mutex::new(JobMirror::load(&jobs)?);
        let dead = ks("pub_dead")?;
        let pending_mem = Mutex::new(PendingMirror::load(&pending_fanout, &pending_backfill, &dead)?);
        Ok(Self {
            activities: ks("pub_activities")?,
            foreign: ks("pub_foreign")?,
            outbox: ks("pub_outbox")?,
            activity_cache: ReadCache::new(ACTIVITIES_KEPT),
            outbox_heads: FeedHeads::new(OUTBOX_HEAD, HEAD_FEEDS),
            pulled_feeds: Mutex::new(feeds_in(&pulled)?),
            pulled_heads: FeedHeads::new(PULLED_HEAD, HEAD_FEEDS),
            pulled,
            jobs,
            dead,
            scheduled: ks("pub_scheduled")?,
            scheduled_by_time: ks("pub_scheduled_by_time")?,
            scheduled_by_actor: ks("pub_scheduled_by_actor")?,
            meta: ks("pub_meta")?,
            pending_mem,
            jobs_mem,
            pending_fanout,
            pending_backfill,
            db,
            writer: Mutex::new(()),
            sync: true,
        })
    }

    /// Whether acknowledged writes are fsynced (default true).
    pub fn with_sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn commit(&self, batch: OwnedWriteBatch, durable: bool) -> Result<(), StorageError> {
        batch.commit().map_err(be)?;
        if durable && self.sync {
            self.db.persist(PersistMode::SyncAll).map_err(be)?;
        }
        Ok(())
    }

    /// Adds jobs to `batch`; returns the pending-index changes to apply once it commits.
    /// Records `jobs` as written at `updated_ms` (default: their creation).
    fn put_jobs_in(&self, batch: &mut OwnedWriteBatch, jobs: &[Job], updated_ms: Option<i64>) -> Vec<PendingOp> {
        let mut ops = Vec::new();
        for job in jobs {
            let updated = updated_ms.unwrap_or(job.created_at_ms);
            batch.insert(&self.jobs, job.job_id.as_bytes(), job_value(job, 0, updated));
            ops.push(PendingOp::JobPut(
                job.job_id.as_bytes().to_vec(),
                updated,
                job.created_at_ms,
            ));
            if let Some((index, key, value)) = pending_index(job) {
                batch.insert(self.index_keyspace(index), key.clone(), value.clone());
                ops.push(PendingOp::Add(index, key, value));
            }
        }
        ops
    }

    fn index_keyspace(&self, index: PendingIndex) -> &Keyspace {
        match index {
            PendingIndex::Fanout => &self.pending_fanout,
            PendingIndex::Backfill => &self.pending_backfill,
        }
    }

    /// Applies committed pending-index and job changes to the in-memory mirrors.
    fn apply_pending(&self, ops: Vec<PendingOp>) {
        let mut m = self.pending_mem.lock().unwrap_or_else(|p| p.into_inner());
        let mut jobs = self.jobs_mem.lock().unwrap_or_else(|p| p.into_inner());
        for op in ops {
            match op {
                PendingOp::Add(PendingIndex::Fanout, k, _) => {
                    m.fanout.insert(k);
                }
                PendingOp::Add(PendingIndex::Backfill, k, v) => {
                    m.backfill.insert(k, v);
                }
                PendingOp::Remove(PendingIndex::Fanout, k) => {
                    m.fanout.remove(&k);
                }
                PendingOp::Remove(PendingIndex::Backfill, k) => {
                    m.backfill.remove(&k);
                }
                PendingOp::JobPut(id, updated, created) => jobs.put(id, updated, created),
                PendingOp::JobGone(id) => jobs.remove(&id),
                PendingOp::Stall(feed, activity, job) => m.stall(feed, activity, job),
                PendingOp::Unstall(feed, activity, job) => m.unstall(&feed, activity, &job),
            }
        }
    }

    fn foreign_key(actor: UserId, foreign_id: &str) -> Vec<u8> {
        let mut k = actor.to_be_bytes().to_vec();
        k.extend_from_slice(foreign_id.as_bytes());
        k
    }
}

#[async_trait]
impl ActivityStore for EmbeddedActivityStore {
    async fn claim_foreign(
        &self,
        actor: UserId,
        foreign_id: &str,
        id: u64,
        fingerprint: u64,
    ) -> Result<ForeignClaim, StorageError> {
        let _w = self.lock();
        let key = Self::foreign_key(actor, foreign_id);
        if let Some(v) = self.foreign.get(&key).map_err(be)? {
            return Ok(ForeignClaim::Held {
                id: u64_at(&v, 0),
                fingerprint: u64_at(&v, 8),
            });
        }
        let mut v = id.to_be_bytes().to_vec();
        v.extend_from_slice(&fingerprint.to_be_bytes());
        let mut batch = self.db.batch();
        batch.insert(&self.foreign, key, v);
        self.commit(batch, true)?;
        Ok(ForeignClaim::Claimed)
    }

    async fn commit_publish(
        &self,
        activity: &Activity,
        outbox: &[OutboxEntry],
        jobs: &[Job],
    ) -> Result<(), StorageError> {
        let _w = self.lock();
        let mut batch = self.db.batch();
        batch.insert(&self.activities, activity.id.to_be_bytes(), activity.encode_to_vec());
        for e in outbox {
            batch.insert(&self.outbox, feed_key(&e.feed, e.id), [mode_byte(e.mode)]);
            if e.mode == DeliveryMode::Pull {
                batch.insert(&self.pulled, feed_key(&e.feed, e.id), []);
            }
        }
        let ops = self.put_jobs_in(&mut batch, jobs, None);
        self.commit(batch, true)?;
        // After the commit, under the writer lock: a reader never sees an id
        // that may not exist, and Publish has not returned yet.
        self.activity_cache.write(|m| {
            m.insert(activity.id, Arc::new(activity.clone()));
        });
        let committed: Vec<(Vec<u8>, &OutboxEntry)> = outbox.iter().map(|e| (feed_prefix(&e.feed), e)).collect();
        self.outbox_heads
            .committed(committed.iter().map(|(p, e)| (p.as_slice(), e.id, mode_byte(e.mode))));
        let pulled: Vec<(&[u8], u64, u8)> = committed
            .iter()
            .filter(|(_, e)| e.mode == DeliveryMode::Pull)
            .map(|(p, e)| (p.as_slice(), e.id, 0))
            .collect();
        if !pulled.is_empty() {
            self.pulled_feeds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(pulled.iter().map(|(p, _, _)| p.to_vec()));
            self.pulled_heads.committed(pulled);
        }
        self.apply_pending(ops);
        Ok(())
    }

    async fn get(&self, ids: &[u64]) -> Result<Vec<Option<Arc<Activity>>>, StorageError> {
        let (mut found, ticket) = self.activity_cache.get_many(ids, Arc::clone);
        let mut filled = Vec::new();
        for (id, slot) in ids.iter().zip(found.iter_mut()) {
            if slot.is_none()
                && let Some(v) = self.activities.get(id.to_be_bytes()).map_err(be)?
            {
                let a = Arc::new(Activity::decode(&*v).map_err(be)?);
                filled.push((*id, a.clone()));
                *slot = Some(a);
            }
        }
        if !filled.is_empty() {
            self.activity_cache.fill_many(ticket, filled);
        }
        Ok(found)
    }

    async fn find_foreign(&self, actor: UserId, foreign_id: &str) -> Result<Option<ForeignRecord>, StorageError> {
        Ok(self
            .foreign
            .get(Self::foreign_key(actor, foreign_id))
            .map_err(be)?
            .map(|v| ForeignRecord {
                id: u64_at(&v, 0),
                fingerprint: u64_at(&v, 8),
            }))
    }

    async fn replace(&self, activity: &Activity, jobs: &[Job]) -> Result<(), StorageError> {
        let _w = self.lock();
        let mut batch = self.db.batch();
        batch.insert(&self.activities, activity.id.to_be_bytes(), activity.encode_to_vec());
        let ops = self.put_jobs_in(&mut batch, jobs, None);
        self.commit(batch, true)?;
        self.activity_cache.write(|m| {
            m.insert(activity.id, Arc::new(activity.clone()));
        });
        self.apply_pending(ops);
        Ok(())
    }

    async fn outbox(
        &self,
        feed: &FeedRef,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StorageError> {
        Ok(self
            .outbox_heads
            .below(&self.outbox, &feed_prefix(feed), before, limit)?
            .into_iter()
            .map(|(id, mode)| OutboxEntry {
                feed: feed.clone(),
                id,
                mode: DeliveryMode::try_from(i32::from(mode)).unwrap_or(DeliveryMode::Push),
            })
            .collect())
    }

    async fn outbox_mode(&self, feed: &FeedRef, id: u64) -> Result<Option<DeliveryMode>, StorageError> {
        Ok(self
            .outbox
            .get(feed_key(feed, id))
            .map_err(be)?
            .map(|v| DeliveryMode::try_from(i32::from(v.first().copied().unwrap_or(0))).unwrap_or(DeliveryMode::Push)))
    }

    async fn pulled(&self, feed: &FeedRef, before: Option<u64>, limit: usize) -> Result<Vec<u64>, StorageError> {
        super::pulled_via_many(self, feed, before, limit).await
    }

    async fn pulled_many(
        &self,
        feeds: &[FeedRef],
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(usize, Vec<u64>)>, StorageError> {
        // One lock and one key buffer for all the feeds, not one each.
        let mut key = Vec::with_capacity(64);
        let pulled: Vec<(usize, Vec<u8>)> = {
            let set = self.pulled_feeds.lock().unwrap_or_else(|p| p.into_inner());
            feeds
                .iter()
                .enumerate()
                .filter_map(|(i, feed)| {
                    key.clear();
                    push_feed_prefix(&mut key, feed);
                    set.contains(key.as_slice()).then(|| (i, key.clone()))
                })
                .collect()
        };
        let (indexes, prefixes): (Vec<usize>, Vec<Vec<u8>>) = pulled.into_iter().unzip();
        let lists = self.pulled_heads.below_many(&self.pulled, &prefixes, before, limit)?;
        Ok(indexes
            .into_iter()
            .zip(lists)
            .filter(|(_, ids)| !ids.is_empty())
            .collect())
    }

    async fn put_jobs(&self, jobs: &[Job]) -> Result<(), StorageError> {
        jobs::put_jobs(self, jobs).await
    }

    async fn job(&self, job_id: &str) -> Result<Option<JobState>, StorageError> {
        jobs::job(self, job_id).await
    }

    async fn complete_job(&self, job_id: &str, spawned: &[Job], now_ms: i64) -> Result<(), StorageError> {
        jobs::complete_job(self, job_id, spawned, now_ms).await
    }

    async fn fail_job(&self, job_id: &str, error: &str, max_attempts: u32, now_ms: i64) -> Result<bool, StorageError> {
        jobs::fail_job(self, job_id, error, max_attempts, now_ms).await
    }

    async fn stale_jobs(&self, stale_before_ms: i64, now_ms: i64, limit: usize) -> Result<Vec<Job>, StorageError> {
        jobs::stale_jobs(self, stale_before_ms, now_ms, limit).await
    }

    async fn dead_jobs(&self, after: &str, limit: usize) -> Result<Vec<DeadJob>, StorageError> {
        jobs::dead_jobs(self, after, limit).await
    }

    async fn revive_jobs(&self, ids: &[String], now_ms: i64) -> Result<Vec<Job>, StorageError> {
        jobs::revive_jobs(self, ids, now_ms).await
    }

    async fn job_stats(&self) -> Result<JobStats, StorageError> {
        jobs::job_stats(self).await
    }

    async fn pending_work(&self, user: UserId) -> Result<PendingWork, StorageError> {
        jobs::pending_work(self, user).await
    }

    async fn schedule(&self, item: &ScheduledActivity) -> Result<(), StorageError> {
        scheduled::schedule(self, item).await
    }

    async fn list_scheduled(
        &self,
        actor: UserId,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ScheduledActivity>, StorageError> {
        scheduled::list_scheduled(self, actor, after, limit).await
    }

    async fn remove_scheduled(&self, actor: UserId, schedule_id: &str) -> Result<bool, StorageError> {
        scheduled::remove_scheduled(self, actor, schedule_id).await
    }

    async fn due_scheduled(&self, now_ms: i64, limit: usize) -> Result<Vec<ScheduledActivity>, StorageError> {
        scheduled::due_scheduled(self, now_ms, limit).await
    }

    async fn edge_cursor(&self) -> Result<u64, StorageError> {
        Ok(self
            .meta
            .get("edge_cursor")
            .map_err(be)?
            .map(|v| u64_at(&v, 0))
            .unwrap_or(0))
    }

    async fn record_edge_jobs(&self, jobs: &[Job], cursor: u64) -> Result<(), StorageError> {
        let _w = self.lock();
        let mut batch = self.db.batch();
        let ops = self.put_jobs_in(&mut batch, jobs, None);
        batch.insert(&self.meta, "edge_cursor", cursor.to_be_bytes());
        self.commit(batch, true)?;
        self.apply_pending(ops);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.jobs.get("ping").map(|_| ()).map_err(be)
    }
}
