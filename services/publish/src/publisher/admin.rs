//! Operator calls: re-running a fanout, dead letters and their replay, lag.

use feed_core::ApiError;

use super::Publisher;
use crate::store::DeadJob;

/// How far fanout is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanoutLag {
    /// Jobs recorded and not done.
    pub pending_jobs: u64,
    /// Age of the oldest of them (0 when none).
    pub oldest_pending_age_ms: i64,
    /// Dead-lettered jobs.
    pub dead_letters: u64,
}

impl Publisher {
    /// Runs the fanout of an activity again (admin). Returns the job ids.
    pub async fn rerun_fanout(&self, id: u64) -> Result<Vec<String>, ApiError> {
        let a = self.resolve(Some(id), None).await?;
        let jobs = self.fanout_jobs(&a, &self.outbox_entries(&a).await?);
        self.store.put_jobs(&jobs).await?;
        self.enqueue(&jobs).await;
        Ok(jobs.into_iter().map(|j| j.job_id).collect())
    }

    /// Dead-lettered jobs (admin).
    pub async fn dead_letters(&self, after: &str, limit: usize) -> Result<Vec<DeadJob>, ApiError> {
        Ok(self.store.dead_jobs(after, limit).await?)
    }

    /// Moves dead jobs back to the queue (admin).
    pub async fn replay_dead(&self, ids: &[String]) -> Result<usize, ApiError> {
        let jobs = self.store.revive_jobs(ids, self.now()).await?;
        self.enqueue(&jobs).await;
        Ok(jobs.len())
    }

    /// Pending and dead job counts and the age of the oldest pending job (admin).
    pub async fn lag(&self) -> Result<FanoutLag, ApiError> {
        let s = self.store.job_stats().await?;
        Ok(FanoutLag {
            pending_jobs: s.pending,
            oldest_pending_age_ms: if s.pending == 0 {
                0
            } else {
                self.now().saturating_sub(s.oldest_created_ms).max(0)
            },
            dead_letters: s.dead,
        })
    }
}
