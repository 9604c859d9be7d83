//! Fanout workers: take jobs from the queue, page followers from
//! follow-graph by shard, and write ids into live inboxes. At-least-once and
//! idempotent: a replayed job, or a job re-driven after a crash, changes
//! nothing that was already done.

mod ledger;
mod purge;

pub use ledger::{GrpcLedger, JobLedger};

use std::sync::Arc;
use std::time::Duration;

use feed_core::{ApiError, Clock, FeedRef, SystemClock};
use feed_inbox::InboxStore;

use feed_proto::common::v1::DeliveryMode;
use feed_proto::events::v1::{EdgeJob, EdgeJobKind, FanoutJob, Job, PurgeJob, job};
use feed_queue::Consumer;
use feed_server::Shutdown;

use crate::graph::Graph;
use crate::publisher::{LoadedJob, fanout_job_id, purge_job_id};
use crate::queue::{Delivery, EventQueue, FanoutQueue};

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Consumer name in the group (unique per worker process).
    pub consumer: String,
    /// Followers per page read from follow-graph and per inbox pipeline.
    pub page_size: u32,
    /// Jobs taken per receive.
    pub batch: usize,
    /// Jobs processed at once.
    pub concurrency: usize,
    /// A delivery unacknowledged this long is taken over (its worker died).
    pub reclaim_idle: Duration,
    /// Inbox cap: backfills read this many entries of the followed feed.
    pub inbox_cap: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            consumer: format!("worker-{}", uuid::Uuid::new_v4().simple()),
            page_size: 1000,
            batch: 16,
            concurrency: 4,
            reclaim_idle: Duration::from_secs(30),
            inbox_cap: 800,
        }
    }
}

/// One fanout worker.
#[derive(Clone)]
pub struct FanoutWorker {
    ledger: Arc<dyn JobLedger>,
    queue: Arc<dyn FanoutQueue>,
    events: Arc<EventQueue>,
    graph: Arc<dyn Graph>,
    inbox: Arc<dyn InboxStore>,
    cfg: WorkerConfig,
}

/// The longest a failed job waits for its next attempt, in reclaim periods.
const MAX_BACKOFF_PERIODS: u32 = 8;

/// Whether a job that failed `attempts` times, last at `failed_ms`, may
/// run again at `now_ms`. A failed delivery comes back
/// after one reclaim period (`reclaim_idle`); from the second failure on,
/// each retry waits twice as long as the one before (2, 4, then 8 periods
/// since the last failure), so a job failing on a peer that is down
/// spends its attempts over minutes instead of one per period, and does
/// not keep a worker busy meanwhile.
pub fn retry_due(attempts: u32, failed_ms: i64, now_ms: i64, reclaim_idle: Duration) -> bool {
    if attempts < 2 {
        return true;
    }
    let periods = 1u32
        .checked_shl(attempts - 1)
        .unwrap_or(u32::MAX)
        .min(MAX_BACKOFF_PERIODS);
    let wait_ms = reclaim_idle.as_millis().saturating_mul(u128::from(periods));
    now_ms.saturating_sub(failed_ms) as u128 >= wait_ms
}

fn feed_of(raw: &str) -> Result<FeedRef, ApiError> {
    FeedRef::parse(raw).map_err(|e| ApiError::Internal(format!("job feed {raw:?}: {e}")))
}

impl FanoutWorker {
    /// A worker over its dependencies.
    pub fn new(
        ledger: Arc<dyn JobLedger>,
        queue: Arc<dyn FanoutQueue>,
        events: Arc<EventQueue>,
        graph: Arc<dyn Graph>,
        inbox: Arc<dyn InboxStore>,
        cfg: WorkerConfig,
    ) -> Self {
        Self {
            ledger,
            queue,
            events,
            graph,
            inbox,
            cfg,
        }
    }

    /// Runs until shutdown: reclaims stalled deliveries, takes new ones,
    /// processes them concurrently.
    pub async fn run(self, shutdown: Shutdown) {
        tracing::info!(consumer = %self.cfg.consumer, "fanout worker started");
        let reader = Consumer {
            name: self.cfg.consumer.clone(),
            batch: self.cfg.batch,
            concurrency: self.cfg.concurrency,
            reclaim_idle: self.cfg.reclaim_idle,
            poll: Duration::from_millis(200),
        };
        let this = &self;
        reader
            .run(self.queue.as_ref(), shutdown.wait(), |d| async move {
                this.handle(&d).await
            })
            .await;
        tracing::info!(consumer = %self.cfg.consumer, "fanout worker stopped");
    }

    /// Processes one delivery and settles it: acknowledged when done or
    /// dead-lettered; left pending (to be reclaimed) after a failure, and
    /// left pending untouched while a failed job's backoff runs.
    pub async fn handle(&self, d: &Delivery) {
        let id = &d.job.job_id;
        let outcome = match self.ledger.load(id).await {
            Ok(None) => Ok(()),
            Ok(Some(loaded))
                if !retry_due(
                    loaded.attempts,
                    loaded.job.failed_at_ms,
                    SystemClock.now_ms() as i64,
                    self.cfg.reclaim_idle,
                ) =>
            {
                metrics::counter!("feed_fanout_retries_deferred_total").increment(1);
                return;
            }
            Ok(Some(loaded)) => self.run_job(id, loaded).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                if let Err(e) = self.queue.ack(d).await {
                    tracing::warn!(error = %e, job_id = %d.job.job_id, "ack failed; the job will replay harmlessly");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, job_id = %d.job.job_id, "job failed");
                metrics::counter!("feed_fanout_job_failures_total").increment(1);
                if let Ok(true) = self.ledger.fail(&d.job.job_id, &e.to_string()).await {
                    if let Err(err) = self.queue.dead_letter(&d.job, &e.to_string()).await {
                        tracing::warn!(error = %err, "dead-letter stream write failed; the durable record stands");
                    }
                    let _ = self.queue.ack(d).await;
                }
            }
        }
    }

    /// Runs one job by id from its durable record. A job that is done (or
    /// was never recorded) is skipped: replays change nothing.
    pub async fn process(&self, job_id: &str) -> Result<(), ApiError> {
        match self.ledger.load(job_id).await? {
            Some(loaded) => self.run_job(job_id, loaded).await,
            None => Ok(()),
        }
    }

    async fn run_job(&self, job_id: &str, loaded: LoadedJob) -> Result<(), ApiError> {
        match loaded.job.kind.clone() {
            Some(job::Kind::Fanout(f)) if loaded.activity_deleted => {
                tracing::debug!(activity = f.activity_id, "activity deleted before fanout; skipping");
                self.ledger.complete(job_id, &[]).await
            }
            Some(job::Kind::Fanout(f)) => match f.shard {
                None => {
                    self.split(job_id, &f.feed, |shard| Job {
                        job_id: fanout_job_id(f.activity_id, &f.feed, Some(shard)),
                        created_at_ms: loaded.job.created_at_ms,
                        failed_at_ms: 0,
                        // A burst's sub-jobs stay in its lane.
                        bulk: loaded.job.bulk,
                        kind: Some(job::Kind::Fanout(FanoutJob {
                            shard: Some(shard),
                            ..f.clone()
                        })),
                    })
                    .await
                }
                Some(shard) => self.push_shard(job_id, &f, shard).await,
            },
            Some(job::Kind::Purge(p)) => match p.shard {
                None => {
                    self.split(job_id, &p.feed, |shard| Job {
                        job_id: purge_job_id(p.activity_id, &p.feed, Some(shard)),
                        created_at_ms: loaded.job.created_at_ms,
                        failed_at_ms: 0,
                        // A burst's sub-jobs stay in its lane.
                        bulk: loaded.job.bulk,
                        kind: Some(job::Kind::Purge(PurgeJob {
                            shard: Some(shard),
                            ..p.clone()
                        })),
                    })
                    .await
                }
                Some(shard) => self.purge_shard(job_id, &p, shard).await,
            },
            Some(job::Kind::Edge(e)) => self.edge(job_id, &e).await,
            Some(job::Kind::Event(e)) => {
                // Handed to notify's queue, but not done: notify completes the
                // job once it has processed the event (CompleteJob). Until then
                // the durable job is the event's record, and the sweeper hands it
                // over again if the queue lost it (a Redis flush).
                self.events
                    .enqueue(std::slice::from_ref(&e))
                    .await
                    .map_err(|err| ApiError::Unavailable(err.to_string()))
            }
            None => self.ledger.complete(job_id, &[]).await,
        }
    }

    /// A root job becomes one sub-job per follower shard; the sub-jobs are
    /// recorded with the root's completion, then enqueued.
    async fn split(&self, job_id: &str, feed: &str, sub: impl Fn(u64) -> Job) -> Result<(), ApiError> {
        let started = std::time::Instant::now();
        let shards = self.graph.shards(&feed_of(feed)?).await?;
        let spawned: Vec<Job> = shards.into_iter().map(sub).collect();
        self.ledger.complete(job_id, &spawned).await?;
        if let Err(e) = self.queue.enqueue(&spawned).await {
            tracing::warn!(error = %e, "sub-job enqueue failed; the sweeper will re-drive");
        }
        tracing::debug!(
            job_id,
            sub_jobs = spawned.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "job split"
        );
        Ok(())
    }

    async fn push_shard(&self, job_id: &str, f: &FanoutJob, shard: u64) -> Result<(), ApiError> {
        let started = std::time::Instant::now();
        let feed = feed_of(&f.feed)?;
        let mut after = 0;
        let mut delivered = 0usize;
        loop {
            let (page, done) = self.graph.page(&feed, shard, after, self.cfg.page_size).await?;
            let Some(last) = page.last() else { break };
            after = last.user;
            // Muted followers still receive the id: mute is enforced at read
            // (Invariant 5), so unmuting needs no backfill of pushed items.
            let users: Vec<u64> = page.iter().map(|p| p.user).filter(|u| *u != f.actor).collect();
            delivered += self.inbox.push(&users, f.activity_id).await?;
            if done {
                break;
            }
        }
        metrics::counter!("feed_fanout_deliveries_total").increment(delivered as u64);
        tracing::debug!(
            job_id,
            delivered,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shard pushed"
        );
        self.ledger.complete(job_id, &[]).await
    }

    /// Backfill or purge one follower's inbox after an edge change; applies
    /// only while the job's edge version is still current (Invariant 4).
    async fn edge(&self, job_id: &str, e: &EdgeJob) -> Result<(), ApiError> {
        // A cold user has no inbox to fix: it is rebuilt when they return.
        if !self
            .inbox
            .is_live(e.follower_id)
            .await
            .map_err(|err| ApiError::Unavailable(err.to_string()))?
        {
            return self.ledger.complete(job_id, &[]).await;
        }
        let feed = feed_of(&e.feed)?;
        let edge = [(e.follower_id, feed.clone())];
        let (version, following) = self
            .graph
            .edge_states(&edge)
            .await?
            .first()
            .copied()
            .unwrap_or((0, false));
        if version != e.edge_version {
            // Superseded: the job of the newer version decides.
            return self.ledger.complete(job_id, &[]).await;
        }
        match EdgeJobKind::try_from(e.kind).unwrap_or(EdgeJobKind::Unspecified) {
            EdgeJobKind::Backfill if following => {
                let cap = self.cfg.inbox_cap.max(1);
                let items = self.ledger.outbox(&feed, cap).await?;
                let ids: Vec<u64> = items
                    .iter()
                    .filter(|i| {
                        i.mode == DeliveryMode::Push as i32 && !i.private && !i.deleted && i.actor != e.follower_id
                    })
                    .map(|i| i.id)
                    .collect();
                // Read to depth `cap`: nothing below the last entry is guaranteed.
                let floor = if items.len() >= cap {
                    items.last().map(|i| i.id).unwrap_or(0)
                } else {
                    0
                };
                self.inbox
                    .backfill(e.follower_id, &ids, floor)
                    .await
                    .map_err(|err| ApiError::Unavailable(err.to_string()))?;
                // An unfollow that raced this backfill may have purged before
                // we wrote: look again and undo what it would have removed.
                let (now_version, now_following) = self
                    .graph
                    .edge_states(&edge)
                    .await?
                    .first()
                    .copied()
                    .unwrap_or((0, false));
                if now_version != version && !now_following {
                    self.purge(e.follower_id).await?;
                }
            }
            // Whether or not user:<author> is followed: the items may come
            // through a tag or a group.
            EdgeJobKind::Relax => self.relax(e.follower_id, &feed).await?,
            EdgeJobKind::Purge if !following => self.purge(e.follower_id).await?,
            _ => {}
        }
        self.ledger.complete(job_id, &[]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_job_waits_twice_as_long_after_each_failure_up_to_eight_periods() {
        let period = Duration::from_secs(30);
        let waits: Vec<i64> = (0..=7)
            .map(|attempts| {
                (0..=300)
                    .map(|s| s * 1000)
                    .find(|&since| retry_due(attempts, 1_000_000, 1_000_000 + since, period))
                    .expect("due within 300 s")
                    / 1000
            })
            .collect();
        // No wait of its own before the first two attempts: the reclaim
        // period already spaces them.
        assert_eq!(waits, [0, 0, 60, 120, 240, 240, 240, 240]);
    }
}
