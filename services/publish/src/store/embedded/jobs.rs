//! Job records: pending, completed, failed, dead-lettered, revived, and the
//! pending-work index reads consult.

use super::*;

/// The two pending-work indexes.
#[derive(Debug, Clone, Copy)]
pub(super) enum PendingIndex {
    /// activity id ‖ job id → ()
    Fanout,
    /// follower ‖ job id → feed
    Backfill,
}

/// The pending-work index entry of a job, if it has one.
pub(super) fn pending_index(job: &Job) -> Option<(PendingIndex, Vec<u8>, Vec<u8>)> {
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
pub(super) enum PendingOp {
    Add(PendingIndex, Vec<u8>, Vec<u8>),
    Remove(PendingIndex, Vec<u8>),
    /// job id, updated ms, created ms
    JobPut(Vec<u8>, i64, i64),
    JobGone(Vec<u8>),
    /// A fanout job dead-lettered (feed, activity id, job id), or revived.
    Stall(String, u64, Vec<u8>),
    Unstall(String, u64, Vec<u8>),
}

/// The feed and activity of a fanout job.
pub(super) fn fanout_of(job: &Job) -> Option<(&str, u64)> {
    match &job.kind {
        Some(job::Kind::Fanout(f)) => Some((f.feed.as_str(), f.activity_id)),
        _ => None,
    }
}

/// Live job records: when each was last changed (for the sweeper) and
/// created (for the stats), without their bodies.
#[derive(Default)]
pub(super) struct JobMirror {
    /// job id → (updated ms, created ms)
    pub(super) times: HashMap<Vec<u8>, (i64, i64)>,
    pub(super) by_updated: BTreeSet<(i64, Vec<u8>)>,
    pub(super) by_created: BTreeSet<(i64, Vec<u8>)>,
}

impl JobMirror {
    pub(super) fn load(jobs: &Keyspace) -> Result<Self, StorageError> {
        let mut m = Self::default();
        for item in jobs.iter() {
            let (k, v) = item.into_inner().map_err(be)?;
            let state = decode_job(&v)?;
            m.put(k.to_vec(), state.updated_ms, state.job.created_at_ms);
        }
        Ok(m)
    }

    pub(super) fn put(&mut self, id: Vec<u8>, updated_ms: i64, created_ms: i64) {
        self.remove(&id);
        self.by_updated.insert((updated_ms, id.clone()));
        self.by_created.insert((created_ms, id.clone()));
        self.times.insert(id, (updated_ms, created_ms));
    }

    pub(super) fn remove(&mut self, id: &[u8]) {
        if let Some((updated, created)) = self.times.remove(id) {
            self.by_updated.remove(&(updated, id.to_vec()));
            self.by_created.remove(&(created, id.to_vec()));
        }
    }

    /// Up to `limit` job ids last changed before `before_ms`, oldest first.
    pub(super) fn stale(&self, before_ms: i64, limit: usize) -> Vec<Vec<u8>> {
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
pub(super) struct PendingMirror {
    /// activity id ‖ job id
    pub(super) fanout: std::collections::BTreeSet<Vec<u8>>,
    /// follower ‖ job id → feed
    pub(super) backfill: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    /// Dead-lettered fanout jobs by source feed: (activity id, job id). They
    /// pin only their own feed's reads, not the global watermark.
    pub(super) stalled: std::collections::BTreeMap<String, BTreeSet<(u64, Vec<u8>)>>,
}

impl PendingMirror {
    pub(super) fn load(fanout: &Keyspace, backfill: &Keyspace, dead: &Keyspace) -> Result<Self, StorageError> {
        let mut m = Self::default();
        for item in dead.iter() {
            let (k, v) = item.into_inner().map_err(be)?;
            let d = decode_dead(&v)?;
            if let Some((feed, activity)) = fanout_of(&d.job) {
                m.stall(feed.to_owned(), activity, k.to_vec());
            }
        }
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

    pub(super) fn stall(&mut self, feed: String, activity: u64, job: Vec<u8>) {
        self.stalled.entry(feed).or_default().insert((activity, job));
    }

    pub(super) fn unstall(&mut self, feed: &str, activity: u64, job: &[u8]) {
        if let Some(set) = self.stalled.get_mut(feed) {
            set.remove(&(activity, job.to_vec()));
            if set.is_empty() {
                self.stalled.remove(feed);
            }
        }
    }
}

/// Job record: attempts (4) ‖ updated ms (8) ‖ Job.
pub(super) fn job_value(job: &Job, attempts: u32, updated_ms: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + job.encoded_len());
    v.extend_from_slice(&attempts.to_be_bytes());
    v.extend_from_slice(&(updated_ms as u64).to_be_bytes());
    job.encode(&mut v).expect("Vec grows as needed");
    v
}

pub(super) fn decode_job(v: &[u8]) -> Result<JobState, StorageError> {
    Ok(JobState {
        attempts: u32_at(v, 0),
        updated_ms: u64_at(v, 4) as i64,
        job: Job::decode(v.get(12..).unwrap_or_default()).map_err(be)?,
    })
}

/// Dead record: attempts (4) ‖ failed ms (8) ‖ error length (4) ‖ error ‖ Job.
pub(super) fn dead_value(state: &JobState, error: &str, now_ms: i64) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&state.attempts.to_be_bytes());
    v.extend_from_slice(&(now_ms as u64).to_be_bytes());
    v.extend_from_slice(&(error.len() as u32).to_be_bytes());
    v.extend_from_slice(error.as_bytes());
    state.job.encode(&mut v).expect("Vec grows as needed");
    v
}

pub(super) fn decode_dead(v: &[u8]) -> Result<DeadJob, StorageError> {
    let len = u32_at(v, 12) as usize;
    let error = v.get(16..16 + len).ok_or_else(|| be("short dead record"))?;
    Ok(DeadJob {
        attempts: u32_at(v, 0),
        failed_ms: u64_at(v, 4) as i64,
        error: String::from_utf8_lossy(error).into_owned(),
        job: Job::decode(v.get(16 + len..).unwrap_or_default()).map_err(be)?,
    })
}

pub(super) async fn put_jobs(store: &EmbeddedActivityStore, jobs: &[Job]) -> Result<(), StorageError> {
    let _w = store.lock();
    let mut batch = store.db.batch();
    let ops = store.put_jobs_in(&mut batch, jobs, None);
    store.commit(batch, true)?;
    store.apply_pending(ops);
    Ok(())
}

pub(super) async fn job(store: &EmbeddedActivityStore, job_id: &str) -> Result<Option<JobState>, StorageError> {
    store
        .jobs
        .get(job_id.as_bytes())
        .map_err(be)?
        .map(|v| decode_job(&v))
        .transpose()
}

pub(super) async fn complete_job(
    store: &EmbeddedActivityStore,
    job_id: &str,
    spawned: &[Job],
    now_ms: i64,
) -> Result<(), StorageError> {
    let _w = store.lock();
    let mut batch = store.db.batch();
    // Sub-jobs are recorded durably before their parent is done.
    let mut ops = store.put_jobs_in(&mut batch, spawned, Some(now_ms));
    if let Some(state) = store
        .jobs
        .get(job_id.as_bytes())
        .map_err(be)?
        .map(|v| decode_job(&v))
        .transpose()?
        && let Some((index, key, _)) = pending_index(&state.job)
    {
        batch.remove(store.index_keyspace(index), key.clone());
        ops.push(PendingOp::Remove(index, key));
    }
    batch.remove(&store.jobs, job_id.as_bytes());
    ops.push(PendingOp::JobGone(job_id.as_bytes().to_vec()));
    store.commit(batch, !spawned.is_empty())?;
    store.apply_pending(ops);
    Ok(())
}

pub(super) async fn fail_job(
    store: &EmbeddedActivityStore,
    job_id: &str,
    error: &str,
    max_attempts: u32,
    now_ms: i64,
) -> Result<bool, StorageError> {
    let _w = store.lock();
    let Some(mut state) = store
        .jobs
        .get(job_id.as_bytes())
        .map_err(be)?
        .map(|v| decode_job(&v))
        .transpose()?
    else {
        return Ok(false);
    };
    state.attempts += 1;
    state.job.failed_at_ms = now_ms;
    let mut batch = store.db.batch();
    let dead = state.attempts >= max_attempts;
    let mut ops = Vec::new();
    if dead {
        batch.remove(&store.jobs, job_id.as_bytes());
        batch.insert(&store.dead, job_id.as_bytes(), dead_value(&state, error, now_ms));
        ops.push(PendingOp::JobGone(job_id.as_bytes().to_vec()));
        // A dead fanout stops pinning every reader's watermark: only the
        // followers of its feed merge that feed from its id (see
        // `pending_work`). A dead backfill keeps its entry: it costs one
        // feed on one user's reads.
        if let Some((PendingIndex::Fanout, key, _)) = pending_index(&state.job) {
            batch.remove(&store.pending_fanout, key.clone());
            ops.push(PendingOp::Remove(PendingIndex::Fanout, key));
        }
        if let Some((feed, activity)) = fanout_of(&state.job) {
            ops.push(PendingOp::Stall(feed.to_owned(), activity, job_id.as_bytes().to_vec()));
        }
    } else {
        batch.insert(
            &store.jobs,
            job_id.as_bytes(),
            job_value(&state.job, state.attempts, now_ms),
        );
        ops.push(PendingOp::JobPut(
            job_id.as_bytes().to_vec(),
            now_ms,
            state.job.created_at_ms,
        ));
    }
    store.commit(batch, dead)?;
    store.apply_pending(ops);
    Ok(dead)
}

pub(super) async fn stale_jobs(
    store: &EmbeddedActivityStore,
    stale_before_ms: i64,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<Job>, StorageError> {
    let _w = store.lock();
    let stale = store
        .jobs_mem
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .stale(stale_before_ms, limit);
    let mut out = Vec::new();
    let mut ops = Vec::new();
    let mut batch = store.db.batch();
    for id in stale {
        let Some(v) = store.jobs.get(&id).map_err(be)? else {
            continue;
        };
        let state = decode_job(&v)?;
        batch.insert(&store.jobs, id.clone(), job_value(&state.job, state.attempts, now_ms));
        ops.push(PendingOp::JobPut(id, now_ms, state.job.created_at_ms));
        out.push(state.job);
    }
    if !out.is_empty() {
        // A lost touch only means one more re-drive: no fsync needed.
        store.commit(batch, false)?;
        store.apply_pending(ops);
    }
    Ok(out)
}

pub(super) async fn dead_jobs(
    store: &EmbeddedActivityStore,
    after: &str,
    limit: usize,
) -> Result<Vec<DeadJob>, StorageError> {
    let mut start = after.as_bytes().to_vec();
    if !after.is_empty() {
        start.push(0);
    }
    let mut out = Vec::new();
    for item in store.dead.range(start..) {
        if out.len() >= limit {
            break;
        }
        let (_, v) = item.into_inner().map_err(be)?;
        out.push(decode_dead(&v)?);
    }
    Ok(out)
}

pub(super) async fn revive_jobs(
    store: &EmbeddedActivityStore,
    ids: &[String],
    now_ms: i64,
) -> Result<Vec<Job>, StorageError> {
    let _w = store.lock();
    let mut revived = Vec::new();
    let mut batch = store.db.batch();
    let records: Vec<(Vec<u8>, DeadJob)> = if ids.is_empty() {
        store
            .dead
            .iter()
            .map(|i| {
                let (k, v) = i.into_inner().map_err(be)?;
                Ok((k.to_vec(), decode_dead(&v)?))
            })
            .collect::<Result<_, StorageError>>()?
    } else {
        let mut v = Vec::new();
        for id in ids {
            if let Some(raw) = store.dead.get(id.as_bytes()).map_err(be)? {
                v.push((id.as_bytes().to_vec(), decode_dead(&raw)?));
            }
        }
        v
    };
    let mut ops = Vec::new();
    for (key, dead) in records {
        batch.remove(&store.dead, key.clone());
        batch.insert(&store.jobs, key.clone(), job_value(&dead.job, 0, now_ms));
        if let Some((index, k, v)) = pending_index(&dead.job) {
            batch.insert(store.index_keyspace(index), k.clone(), v.clone());
            ops.push(PendingOp::Add(index, k, v));
        }
        if let Some((feed, activity)) = fanout_of(&dead.job) {
            ops.push(PendingOp::Unstall(feed.to_owned(), activity, key.clone()));
        }
        ops.push(PendingOp::JobPut(key, now_ms, dead.job.created_at_ms));
        revived.push(dead.job);
    }
    store.commit(batch, true)?;
    store.apply_pending(ops);
    Ok(revived)
}

pub(super) async fn job_stats(store: &EmbeddedActivityStore) -> Result<JobStats, StorageError> {
    let mut stats = JobStats::default();
    {
        let jobs = store.jobs_mem.lock().unwrap_or_else(|p| p.into_inner());
        stats.pending = jobs.times.len() as u64;
        stats.oldest_created_ms = jobs.by_created.first().map_or(0, |(t, _)| *t);
    }
    stats.dead = store.dead.len().map_err(be)? as u64;
    Ok(stats)
}

pub(super) async fn pending_work(store: &EmbeddedActivityStore, user: UserId) -> Result<PendingWork, StorageError> {
    let m = store.pending_mem.lock().unwrap_or_else(|p| p.into_inner());
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
    let stalled = m
        .stalled
        .iter()
        .filter_map(|(feed, set)| Some((FeedRef::parse(feed).ok()?, set.first()?.0)))
        .collect();
    Ok(PendingWork {
        fanout_from,
        backfill_feeds,
        stalled,
    })
}
