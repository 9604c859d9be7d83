//! The worker job protocol: job ids, loading, completing and failing jobs,
//! and the sweeper that re-drives stale ones.

use feed_core::ApiError;
use feed_proto::common::v1::ActivityStatus;
use feed_proto::events::v1::{Job, job};

use super::Publisher;

/// What a fanout worker needs about a pending job.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedJob {
    /// The job.
    pub job: Job,
    /// Its activity is gone or deleted: fanout can stop.
    pub activity_deleted: bool,
    /// Failed attempts.
    pub attempts: u32,
}

/// Deterministic job ids: a replay or a re-drive finds the same record.
pub fn fanout_job_id(activity: u64, feed: &str, shard: Option<u64>) -> String {
    match shard {
        None => format!("fan/{activity}/{feed}"),
        Some(s) => format!("fan/{activity}/{feed}/{s}"),
    }
}

/// Deterministic purge job ids (root and per shard), like [`fanout_job_id`].
pub fn purge_job_id(activity: u64, feed: &str, shard: Option<u64>) -> String {
    match shard {
        None => format!("purge/{activity}/{feed}"),
        Some(s) => format!("purge/{activity}/{feed}/{s}"),
    }
}

impl Publisher {
    /// Re-drives jobs not changed for `stale_after_ms` that no queue holds
    /// any more (a flush lost them, or enqueueing failed). A job still
    /// waiting in a backlog, or in a worker's hands (a dead worker's are
    /// reclaimed from the stream), is left alone: re-driving those added a
    /// stream entry per job per stale period. Returns how many were
    /// re-enqueued.
    pub async fn sweep(&self, stale_after_ms: i64) -> Result<usize, ApiError> {
        let now = self.now();
        // Touched as they are read: a held job is asked about again one
        // stale period later, not on every sweep.
        let stale = self.store.stale_jobs(now - stale_after_ms, now, 10_000).await?;
        let ids: Vec<&str> = stale.iter().map(|j| j.job_id.as_str()).collect();
        let mut held = self.queue.held(&ids).await?;
        // Event jobs wait in notify's queue once a worker handed them over.
        let handed: Vec<usize> = (0..stale.len())
            .filter(|&i| !held[i] && matches!(stale[i].kind, Some(job::Kind::Event(_))))
            .collect();
        let handed_ids: Vec<&str> = handed.iter().map(|&i| ids[i]).collect();
        for (&i, in_events) in handed.iter().zip(self.events.held(&handed_ids).await?) {
            held[i] = in_events;
        }
        let total = stale.len();
        let lost: Vec<Job> = stale
            .into_iter()
            .zip(held)
            .filter_map(|(j, held)| (!held).then_some(j))
            .collect();
        metrics::counter!("feed_publish_sweep_held_total").increment((total - lost.len()) as u64);
        self.enqueue(&lost).await;
        if let Err(e) = self.queue.trim().await {
            tracing::warn!(error = %e, "stream trim failed");
        }
        Ok(lost.len())
    }

    /// A pending job for a worker; None once done.
    pub async fn load_job(&self, job_id: &str) -> Result<Option<LoadedJob>, ApiError> {
        let Some(state) = self.store.job(job_id).await? else {
            return Ok(None);
        };
        let activity_id = match &state.job.kind {
            Some(job::Kind::Fanout(f)) => Some(f.activity_id),
            _ => None,
        };
        let activity_deleted = match activity_id {
            Some(id) => !matches!(
                self.store.get(&[id]).await?.pop().flatten(),
                Some(a) if a.status != ActivityStatus::Deleted as i32
            ),
            None => false,
        };
        Ok(Some(LoadedJob {
            job: state.job,
            activity_deleted,
            attempts: state.attempts,
        }))
    }

    /// Marks a job done with the sub-jobs it spawned.
    pub async fn complete_job(&self, job_id: &str, spawned: &[Job]) -> Result<(), ApiError> {
        Ok(self.store.complete_job(job_id, spawned, self.now()).await?)
    }

    /// Records a failed attempt; true when the job is now dead-lettered: at
    /// the configured attempts, or at once when the failure is `permanent`.
    pub async fn fail_job(&self, job_id: &str, error: &str, permanent: bool) -> Result<bool, ApiError> {
        let attempts = if permanent { 1 } else { self.cfg.max_attempts };
        let dead = self.store.fail_job(job_id, error, attempts, self.now()).await?;
        if dead {
            metrics::counter!("feed_publish_dead_letters_total").increment(1);
            tracing::error!(job_id, error, "job dead-lettered");
        }
        Ok(dead)
    }
}
