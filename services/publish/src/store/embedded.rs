//! Embedded backend on fjall. Every multi-row write is one atomic batch;
//! writes that promise durability (an accepted publish, a recorded job) are
//! synced before returning. Job completions and heartbeats are not synced:
//! losing one in a crash only re-runs an idempotent job.

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
    ActivityStore, Claim, DeadJob, ForeignRecord, JobState, JobStats, OutboxEntry, PendingWork, StoreError, adds_items,
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

/// The two pending-work indexes.
#[derive(Debug, Clone, Copy)]
enum PendingIndex {
    /// activity id ‖ job id → ()
    Fanout,
    /// follower ‖ job id → feed
    Backfill,
}

/// The pending-work index entry of a job, if it has one.
fn pending_index(job: &Job) -> Option<(PendingIndex, Vec<u8>, Vec<u8>)> {
    match &job.kind {
        Some(job::Kind::Fanout(f)) => {
            let mut k = f.activity_id.to_be_bytes().to_vec();
            k.extend_from_slice(job.job_id.as_bytes());
            Some((PendingIndex::Fanout, k, vec![]))
        }
        Some(job::Kind::Edge(e)) if adds_items(e) => {
            let mut k = e.follower_id.to_be_bytes().to_vec();
            k.extend_from_slice(job.job_id.as_bytes());
            Some((PendingIndex::Backfill, k, e.feed.as_bytes().to_vec()))
        }
        _ => None,
    }
}

/// A committed change to a pending index or to a job record, for the in-memory mirrors.
enum PendingOp {
    Add(PendingIndex, Vec<u8>, Vec<u8>),
    Remove(PendingIndex, Vec<u8>),
    /// job id, updated ms, created ms
    JobPut(Vec<u8>, i64, i64),
    JobGone(Vec<u8>),
}

/// Live job records: when each was last changed (for the sweeper) and
/// created (for the stats), without their bodies.
#[derive(Default)]
struct JobMirror {
    /// job id → (updated ms, created ms)
    times: HashMap<Vec<u8>, (i64, i64)>,
    by_updated: BTreeSet<(i64, Vec<u8>)>,
    by_created: BTreeSet<(i64, Vec<u8>)>,
}

impl JobMirror {
    fn load(jobs: &Keyspace) -> Result<Self, StoreError> {
        let mut m = Self::default();
        for item in jobs.iter() {
            let (k, v) = item.into_inner().map_err(be)?;
            let state = decode_job(&v)?;
            m.put(k.to_vec(), state.updated_ms, state.job.created_at_ms);
        }
        Ok(m)
    }

    fn put(&mut self, id: Vec<u8>, updated_ms: i64, created_ms: i64) {
        self.remove(&id);
        self.by_updated.insert((updated_ms, id.clone()));
        self.by_created.insert((created_ms, id.clone()));
        self.times.insert(id, (updated_ms, created_ms));
    }

    fn remove(&mut self, id: &[u8]) {
        if let Some((updated, created)) = self.times.remove(id) {
            self.by_updated.remove(&(updated, id.to_vec()));
            self.by_created.remove(&(created, id.to_vec()));
        }
    }

    /// Up to `limit` job ids last changed before `before_ms`, oldest first.
    fn stale(&self, before_ms: i64, limit: usize) -> Vec<Vec<u8>> {
        self.by_updated
            .iter()
            .take_while(|(t, _)| *t < before_ms)
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect()
    }
}

/// The pending indexes in memory.
#[derive(Default)]
struct PendingMirror {
    /// activity id ‖ job id
    fanout: std::collections::BTreeSet<Vec<u8>>,
    /// follower ‖ job id → feed
    backfill: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
}

impl PendingMirror {
    fn load(fanout: &Keyspace, backfill: &Keyspace) -> Result<Self, StoreError> {
        let mut m = Self::default();
        for item in fanout.iter() {
            let (k, _) = item.into_inner().map_err(be)?;
            m.fanout.insert(k.to_vec());
        }
        for item in backfill.iter() {
            let (k, v) = item.into_inner().map_err(be)?;
            m.backfill.insert(k.to_vec(), v.to_vec());
        }
        Ok(m)
    }
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
fn feeds_in(ks: &Keyspace) -> Result<HashSet<Vec<u8>>, StoreError> {
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

fn be(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn u32_at(v: &[u8], at: usize) -> u32 {
    v.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

/// Job record: attempts (4) ‖ updated ms (8) ‖ Job.
fn job_value(job: &Job, attempts: u32, updated_ms: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + job.encoded_len());
    v.extend_from_slice(&attempts.to_be_bytes());
    v.extend_from_slice(&(updated_ms as u64).to_be_bytes());
    job.encode(&mut v).expect("Vec grows as needed");
    v
}

fn decode_job(v: &[u8]) -> Result<JobState, StoreError> {
    Ok(JobState {
        attempts: u32_at(v, 0),
        updated_ms: u64_at(v, 4) as i64,
        job: Job::decode(v.get(12..).unwrap_or_default()).map_err(be)?,
    })
}

/// Dead record: attempts (4) ‖ failed ms (8) ‖ error length (4) ‖ error ‖ Job.
fn dead_value(state: &JobState, error: &str, now_ms: i64) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&state.attempts.to_be_bytes());
    v.extend_from_slice(&(now_ms as u64).to_be_bytes());
    v.extend_from_slice(&(error.len() as u32).to_be_bytes());
    v.extend_from_slice(error.as_bytes());
    state.job.encode(&mut v).expect("Vec grows as needed");
    v
}

fn decode_dead(v: &[u8]) -> Result<DeadJob, StoreError> {
    let len = u32_at(v, 12) as usize;
    let error = v.get(16..16 + len).ok_or_else(|| be("short dead record"))?;
    Ok(DeadJob {
        attempts: u32_at(v, 0),
        failed_ms: u64_at(v, 4) as i64,
        error: String::from_utf8_lossy(error).into_owned(),
        job: Job::decode(v.get(16 + len..).unwrap_or_default()).map_err(be)?,
    })
}

fn mode_byte(m: DeliveryMode) -> u8 {
    m as i32 as u8
}

impl EmbeddedActivityStore {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = Database::builder(dir).open().map_err(be)?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).map_err(be);
        let pending_fanout = ks("pub_pending_fanout")?;
        let pulled = ks("pub_pulled")?;
        let pending_backfill = ks("pub_pending_backfill")?;
        let jobs = ks("pub_jobs")?;
        let jobs_mem = Mutex::new(JobMirror::load(&jobs)?);
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
            dead: ks("pub_dead")?,
            scheduled: ks("pub_scheduled")?,
            scheduled_by_time: ks("pub_scheduled_by_time")?,
            scheduled_by_actor: ks("pub_scheduled_by_actor")?,
            meta: ks("pub_meta")?,
            pending_mem: Mutex::new(PendingMirror::load(&pending_fanout, &pending_backfill)?),
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

    fn commit(&self, batch: OwnedWriteBatch, durable: bool) -> Result<(), StoreError> {
        batch.commit().map_err(be)?;
        if durable && self.sync {
            self.db.persist(PersistMode::SyncAll).map_err(be)?;
        }
        Ok(())
    }

    /// Adds jobs to `batch`; returns the pending-index changes to apply once it commits.
    fn put_jobs_in(&self, batch: &mut OwnedWriteBatch, jobs: &[Job]) -> Vec<PendingOp> {
        let mut ops = Vec::new();
        for job in jobs {
            batch.insert(&self.jobs, job.job_id.as_bytes(), job_value(job, 0, job.created_at_ms));
            ops.push(PendingOp::JobPut(
                job.job_id.as_bytes().to_vec(),
                job.created_at_ms,
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
    ) -> Result<Claim, StoreError> {
        let _w = self.lock();
        let key = Self::foreign_key(actor, foreign_id);
        if let Some(v) = self.foreign.get(&key).map_err(be)? {
            return Ok(Claim::Held {
                id: u64_at(&v, 0),
                fingerprint: u64_at(&v, 8),
            });
        }
        let mut v = id.to_be_bytes().to_vec();
        v.extend_from_slice(&fingerprint.to_be_bytes());
        let mut batch = self.db.batch();
        batch.insert(&self.foreign, key, v);
        self.commit(batch, true)?;
        Ok(Claim::Claimed)
    }

    async fn commit_publish(
        &self,
        activity: &Activity,
        outbox: &[OutboxEntry],
        jobs: &[Job],
    ) -> Result<(), StoreError> {
        let _w = self.lock();
        let mut batch = self.db.batch();
        batch.insert(&self.activities, activity.id.to_be_bytes(), activity.encode_to_vec());
        for e in outbox {
            batch.insert(&self.outbox, feed_key(&e.feed, e.id), [mode_byte(e.mode)]);
            if e.mode == DeliveryMode::Pull {
                batch.insert(&self.pulled, feed_key(&e.feed, e.id), []);
            }
        }
        let ops = self.put_jobs_in(&mut batch, jobs);
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

    async fn get(&self, ids: &[u64]) -> Result<Vec<Option<Arc<Activity>>>, StoreError> {
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

    async fn find_foreign(&self, actor: UserId, foreign_id: &str) -> Result<Option<ForeignRecord>, StoreError> {
        Ok(self
            .foreign
            .get(Self::foreign_key(actor, foreign_id))
            .map_err(be)?
            .map(|v| ForeignRecord {
                id: u64_at(&v, 0),
                fingerprint: u64_at(&v, 8),
            }))
    }

    async fn replace(&self, activity: &Activity, jobs: &[Job]) -> Result<(), StoreError> {
        let _w = self.lock();
        let mut batch = self.db.batch();
        batch.insert(&self.activities, activity.id.to_be_bytes(), activity.encode_to_vec());
        let ops = self.put_jobs_in(&mut batch, jobs);
        self.commit(batch, true)?;
        self.activity_cache.write(|m| {
            m.insert(activity.id, Arc::new(activity.clone()));
        });
        self.apply_pending(ops);
        Ok(())
    }

    async fn outbox(&self, feed: &FeedRef, before: Option<u64>, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
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

    async fn outbox_mode(&self, feed: &FeedRef, id: u64) -> Result<Option<DeliveryMode>, StoreError> {
        Ok(self
            .outbox
            .get(feed_key(feed, id))
            .map_err(be)?
            .map(|v| DeliveryMode::try_from(i32::from(v.first().copied().unwrap_or(0))).unwrap_or(DeliveryMode::Push)))
    }

    async fn pulled(&self, feed: &FeedRef, before: Option<u64>, limit: usize) -> Result<Vec<u64>, StoreError> {
        super::pulled_via_many(self, feed, before, limit).await
    }

    async fn pulled_many(
        &self,
        feeds: &[FeedRef],
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(usize, Vec<u64>)>, StoreError> {
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

    async fn put_jobs(&self, jobs: &[Job]) -> Result<(), StoreError> {
        let _w = self.lock();
        let mut batch = self.db.batch();
        let ops = self.put_jobs_in(&mut batch, jobs);
        self.commit(batch, true)?;
        self.apply_pending(ops);
        Ok(())
    }

    async fn job(&self, job_id: &str) -> Result<Option<JobState>, StoreError> {
        self.jobs
            .get(job_id.as_bytes())
            .map_err(be)?
            .map(|v| decode_job(&v))
            .transpose()
    }

    async fn complete_job(&self, job_id: &str, spawned: &[Job]) -> Result<(), StoreError> {
        let _w = self.lock();
        let mut batch = self.db.batch();
        // Sub-jobs are recorded durably before their parent is done.
        let mut ops = self.put_jobs_in(&mut batch, spawned);
        if let Some(state) = self
            .jobs
            .get(job_id.as_bytes())
            .map_err(be)?
            .map(|v| decode_job(&v))
            .transpose()?
            && let Some((index, key, _)) = pending_index(&state.job)
        {
            batch.remove(self.index_keyspace(index), key.clone());
            ops.push(PendingOp::Remove(index, key));
        }
        batch.remove(&self.jobs, job_id.as_bytes());
        ops.push(PendingOp::JobGone(job_id.as_bytes().to_vec()));
        self.commit(batch, !spawned.is_empty())?;
        self.apply_pending(ops);
        Ok(())
    }

    async fn fail_job(&self, job_id: &str, error: &str, max_attempts: u32, now_ms: i64) -> Result<bool, StoreError> {
        let _w = self.lock();
        let Some(mut state) = self
            .jobs
            .get(job_id.as_bytes())
            .map_err(be)?
            .map(|v| decode_job(&v))
            .transpose()?
        else {
            return Ok(false);
        };
        state.attempts += 1;
        let mut batch = self.db.batch();
        let dead = state.attempts >= max_attempts;
        let op = if dead {
            batch.remove(&self.jobs, job_id.as_bytes());
            batch.insert(&self.dead, job_id.as_bytes(), dead_value(&state, error, now_ms));
            PendingOp::JobGone(job_id.as_bytes().to_vec())
        } else {
            batch.insert(
                &self.jobs,
                job_id.as_bytes(),
                job_value(&state.job, state.attempts, now_ms),
            );
            PendingOp::JobPut(job_id.as_bytes().to_vec(), now_ms, state.job.created_at_ms)
        };
        self.commit(batch, dead)?;
        self.apply_pending(vec![op]);
        Ok(dead)
    }

    async fn stale_jobs(&self, stale_before_ms: i64, now_ms: i64, limit: usize) -> Result<Vec<Job>, StoreError> {
        let _w = self.lock();
        let stale = self
            .jobs_mem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stale(stale_before_ms, limit);
        let mut out = Vec::new();
        let mut ops = Vec::new();
        let mut batch = self.db.batch();
        for id in stale {
            let Some(v) = self.jobs.get(&id).map_err(be)? else {
                continue;
            };
            let state = decode_job(&v)?;
            batch.insert(&self.jobs, id.clone(), job_value(&state.job, state.attempts, now_ms));
            ops.push(PendingOp::JobPut(id, now_ms, state.job.created_at_ms));
            out.push(state.job);
        }
        if !out.is_empty() {
            // A lost touch only means one more re-drive: no fsync needed.
            self.commit(batch, false)?;
            self.apply_pending(ops);
        }
        Ok(out)
    }

    async fn dead_jobs(&self, after: &str, limit: usize) -> Result<Vec<DeadJob>, StoreError> {
        let mut start = after.as_bytes().to_vec();
        if !after.is_empty() {
            start.push(0);
        }
        let mut out = Vec::new();
        for item in self.dead.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item.into_inner().map_err(be)?;
            out.push(decode_dead(&v)?);
        }
        Ok(out)
    }

    async fn revive_jobs(&self, ids: &[String], now_ms: i64) -> Result<Vec<Job>, StoreError> {
        let _w = self.lock();
        let mut revived = Vec::new();
        let mut batch = self.db.batch();
        let records: Vec<(Vec<u8>, DeadJob)> = if ids.is_empty() {
            self.dead
                .iter()
                .map(|i| {
                    let (k, v) = i.into_inner().map_err(be)?;
                    Ok((k.to_vec(), decode_dead(&v)?))
                })
                .collect::<Result<_, StoreError>>()?
        } else {
            let mut v = Vec::new();
            for id in ids {
                if let Some(raw) = self.dead.get(id.as_bytes()).map_err(be)? {
                    v.push((id.as_bytes().to_vec(), decode_dead(&raw)?));
                }
            }
            v
        };
        let mut ops = Vec::new();
        for (key, dead) in records {
            batch.remove(&self.dead, key.clone());
            batch.insert(&self.jobs, key.clone(), job_value(&dead.job, 0, now_ms));
            ops.push(PendingOp::JobPut(key, now_ms, dead.job.created_at_ms));
            revived.push(dead.job);
        }
        self.commit(batch, true)?;
        self.apply_pending(ops);
        Ok(revived)
    }

    async fn job_stats(&self) -> Result<JobStats, StoreError> {
        let mut stats = JobStats::default();
        {
            let jobs = self.jobs_mem.lock().unwrap_or_else(|p| p.into_inner());
            stats.pending = jobs.times.len() as u64;
            stats.oldest_created_ms = jobs.by_created.first().map_or(0, |(t, _)| *t);
        }
        stats.dead = self.dead.len().map_err(be)? as u64;
        Ok(stats)
    }

    async fn pending_work(&self, user: UserId) -> Result<PendingWork, StoreError> {
        let m = self.pending_mem.lock().unwrap_or_else(|p| p.into_inner());
        let fanout_from = m.fanout.first().map(|k| u64_at(k, 0));
        let mut backfill_feeds = Vec::new();
        let prefix = user.to_be_bytes();
        for (_, v) in m
            .backfill
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
        {
            if let Ok(f) = FeedRef::parse(&String::from_utf8_lossy(v))
                && !backfill_feeds.contains(&f)
            {
                backfill_feeds.push(f);
            }
        }
        Ok(PendingWork {
            fanout_from,
            backfill_feeds,
        })
    }

    async fn schedule(&self, item: &ScheduledActivity) -> Result<(), StoreError> {
        let actor = item.activity.as_ref().map(|a| a.actor).unwrap_or(0);
        let _w = self.lock();
        let mut batch = self.db.batch();
        batch.insert(&self.scheduled, item.schedule_id.as_bytes(), item.encode_to_vec());
        let mut tk = (item.publish_at_ms as u64).to_be_bytes().to_vec();
        tk.extend_from_slice(item.schedule_id.as_bytes());
        batch.insert(&self.scheduled_by_time, tk, []);
        let mut ak = actor.to_be_bytes().to_vec();
        ak.extend_from_slice(item.schedule_id.as_bytes());
        batch.insert(&self.scheduled_by_actor, ak, []);
        self.commit(batch, true)
    }

    async fn list_scheduled(
        &self,
        actor: UserId,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ScheduledActivity>, StoreError> {
        let prefix = actor.to_be_bytes();
        let mut start = prefix.to_vec();
        start.extend_from_slice(after.as_bytes());
        if !after.is_empty() {
            start.push(0);
        }
        let mut end = prefix.to_vec();
        end.push(0xFF);
        let mut out = Vec::new();
        for item in self.scheduled_by_actor.range(start..end) {
            if out.len() >= limit {
                break;
            }
            let k = item.key().map_err(be)?;
            if let Some(v) = self.scheduled.get(&k[8..]).map_err(be)? {
                out.push(ScheduledActivity::decode(&*v).map_err(be)?);
            }
        }
        Ok(out)
    }

    async fn remove_scheduled(&self, actor: UserId, schedule_id: &str) -> Result<bool, StoreError> {
        let _w = self.lock();
        let Some(v) = self.scheduled.get(schedule_id.as_bytes()).map_err(be)? else {
            return Ok(false);
        };
        let item = ScheduledActivity::decode(&*v).map_err(be)?;
        let owner = item.activity.as_ref().map(|a| a.actor).unwrap_or(0);
        if owner != actor {
            return Ok(false);
        }
        let mut batch = self.db.batch();
        batch.remove(&self.scheduled, schedule_id.as_bytes());
        let mut tk = (item.publish_at_ms as u64).to_be_bytes().to_vec();
        tk.extend_from_slice(schedule_id.as_bytes());
        batch.remove(&self.scheduled_by_time, tk);
        let mut ak = actor.to_be_bytes().to_vec();
        ak.extend_from_slice(schedule_id.as_bytes());
        batch.remove(&self.scheduled_by_actor, ak);
        self.commit(batch, true)?;
        Ok(true)
    }

    async fn due_scheduled(&self, now_ms: i64, limit: usize) -> Result<Vec<ScheduledActivity>, StoreError> {
        let end = ((now_ms.max(0) as u64) + 1).to_be_bytes();
        let mut out = Vec::new();
        for item in self.scheduled_by_time.range(..end.to_vec()) {
            if out.len() >= limit {
                break;
            }
            let k = item.key().map_err(be)?;
            if let Some(v) = self.scheduled.get(&k[8..]).map_err(be)? {
                out.push(ScheduledActivity::decode(&*v).map_err(be)?);
            }
        }
        Ok(out)
    }

    async fn edge_cursor(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get("edge_cursor")
            .map_err(be)?
            .map(|v| u64_at(&v, 0))
            .unwrap_or(0))
    }

    async fn record_edge_jobs(&self, jobs: &[Job], cursor: u64) -> Result<(), StoreError> {
        let _w = self.lock();
        let mut batch = self.db.batch();
        let ops = self.put_jobs_in(&mut batch, jobs);
        batch.insert(&self.meta, "edge_cursor", cursor.to_be_bytes());
        self.commit(batch, true)?;
        self.apply_pending(ops);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.jobs.get("ping").map(|_| ()).map_err(be)
    }
}
