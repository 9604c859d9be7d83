//! The activity store: activities, feed outboxes, the (actor, foreign_id)
//! index, durable job records and scheduled items.

use std::sync::Arc;

use async_trait::async_trait;
use feed_core::{FeedRef, UserId};
use feed_proto::common::v1::{Activity, DeliveryMode};
use feed_proto::events::v1::{EdgeJob, EdgeJobKind, Job};
use feed_proto::publish::v1::ScheduledActivity;

pub mod contract;
pub mod embedded;
mod heads;
pub mod scylla;
pub mod shared_heads;

/// One entry of a feed's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The feed (`user:<actor>` or a `to` target).
    pub feed: FeedRef,
    /// The activity id.
    pub id: u64,
    /// How the item reaches this feed's followers, fixed at publish.
    pub mode: DeliveryMode,
}

/// Who holds an (actor, foreign_id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignClaim {
    /// This call claimed it for the offered id.
    Claimed,
    /// An earlier publish holds it.
    Held {
        /// Its activity id.
        id: u64,
        /// Fingerprint of its payload: a different one is a conflict.
        fingerprint: u64,
    },
}

/// Whether an edge job adds items to its follower's inbox (a backfill, or
/// a lifted block or mute): until it is done, reads merge its feed's
/// outbox above the floor ([`PendingWork::backfill_feeds`]).
pub fn adds_items(job: &EdgeJob) -> bool {
    matches!(
        EdgeJobKind::try_from(job.kind),
        Ok(EdgeJobKind::Backfill | EdgeJobKind::Relax)
    )
}

/// The record held by an (actor, foreign_id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForeignRecord {
    /// The activity id it was claimed for.
    pub id: u64,
    /// Fingerprint of the payload that claimed it.
    pub fingerprint: u64,
}

/// A pending job's durable record.
#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    /// The job.
    pub job: Job,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Last change (creation, heartbeat, failure), ms since the epoch.
    pub updated_ms: i64,
}

/// A job that failed too often.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadJob {
    /// The job.
    pub job: Job,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// When it was dead-lettered.
    pub failed_ms: i64,
}

/// Work a reader's inbox may not reflect yet (the home read's own type).
pub use feed_inbox::home::Pending as PendingWork;

/// Pending and dead job counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobStats {
    /// Jobs recorded and not done.
    pub pending: u64,
    /// Creation time of the oldest pending job (0 if none).
    pub oldest_created_ms: i64,
    /// Dead-lettered jobs.
    pub dead: u64,
}

pub use feed_core::StorageError;

/// [`ActivityStore::pulled`] of a store whose own call is `pulled_many`.
pub(crate) async fn pulled_via_many<S: ActivityStore + ?Sized>(
    store: &S,
    feed: &FeedRef,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<u64>, StorageError> {
    let mut found = store.pulled_many(std::slice::from_ref(feed), before, limit).await?;
    Ok(found.pop().map(|(_, ids)| ids).unwrap_or_default())
}

/// Storage of activities and everything written with them. Multi-row
/// writes are atomic: readers never see an activity without its outbox
/// entries or its jobs.
#[async_trait]
pub trait ActivityStore: Send + Sync + 'static {
    /// Claims (actor, foreign_id) for `id`, or reports who holds it.
    async fn claim_foreign(
        &self,
        actor: UserId,
        foreign_id: &str,
        id: u64,
        fingerprint: u64,
    ) -> Result<ForeignClaim, StorageError>;
    /// Writes the activity, its outbox entries and its jobs in one step.
    /// Idempotent: a retry with the same rows changes nothing.
    async fn commit_publish(
        &self,
        activity: &Activity,
        outbox: &[OutboxEntry],
        jobs: &[Job],
    ) -> Result<(), StorageError>;
    /// Activities by id, in order; None for unknown ids. Shared: a store
    /// that keeps activities in memory hands them out without a deep copy
    /// (a home read hydrates a page of them).
    async fn get(&self, ids: &[u64]) -> Result<Vec<Option<Arc<Activity>>>, StorageError>;
    /// The record held by (actor, foreign_id).
    async fn find_foreign(&self, actor: UserId, foreign_id: &str) -> Result<Option<ForeignRecord>, StorageError>;
    /// Replaces an existing activity row (update, soft delete) and records jobs, in one step.
    async fn replace(&self, activity: &Activity, jobs: &[Job]) -> Result<(), StorageError>;
    /// A feed's outbox below `before`, newest first.
    async fn outbox(&self, feed: &FeedRef, before: Option<u64>, limit: usize)
    -> Result<Vec<OutboxEntry>, StorageError>;
    /// The delivery mode of one outbox entry, if it exists.
    async fn outbox_mode(&self, feed: &FeedRef, id: u64) -> Result<Option<DeliveryMode>, StorageError>;
    /// A feed's pull-mode entries below `before`, newest first.
    async fn pulled(&self, feed: &FeedRef, before: Option<u64>, limit: usize) -> Result<Vec<u64>, StorageError>;
    /// [`Self::pulled`] of many feeds (a home read asks every followed
    /// feed; most have none): (index in `feeds`, entries) of those that have some.
    async fn pulled_many(
        &self,
        feeds: &[FeedRef],
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(usize, Vec<u64>)>, StorageError> {
        let mut out = Vec::new();
        for (i, feed) in feeds.iter().enumerate() {
            let ids = self.pulled(feed, before, limit).await?;
            if !ids.is_empty() {
                out.push((i, ids));
            }
        }
        Ok(out)
    }

    /// Records jobs (pending).
    async fn put_jobs(&self, jobs: &[Job]) -> Result<(), StorageError>;
    /// A pending job; None once done (or dead).
    async fn job(&self, job_id: &str) -> Result<Option<JobState>, StorageError>;
    /// Marks a job done and records the jobs it spawned, in one step; the
    /// spawned records count as written at `now_ms` (not at their root's
    /// creation: a root run late must not spawn jobs already stale).
    async fn complete_job(&self, job_id: &str, spawned: &[Job], now_ms: i64) -> Result<(), StorageError>;
    /// Records a failure; dead-letters the job at `max_attempts`. True when dead.
    async fn fail_job(&self, job_id: &str, error: &str, max_attempts: u32, now_ms: i64) -> Result<bool, StorageError>;
    /// Pending jobs not updated since `stale_before_ms`, for the sweeper to
    /// re-drive; each is marked updated at `now_ms`, so one that stays
    /// pending (a consumer is down) is handed out once per staleness period,
    /// not at every sweep.
    async fn stale_jobs(&self, stale_before_ms: i64, now_ms: i64, limit: usize) -> Result<Vec<Job>, StorageError>;
    /// Dead-lettered jobs after `after` (job id order).
    async fn dead_jobs(&self, after: &str, limit: usize) -> Result<Vec<DeadJob>, StorageError>;
    /// Moves dead jobs back to pending (all when `ids` is empty); returns them.
    async fn revive_jobs(&self, ids: &[String], now_ms: i64) -> Result<Vec<Job>, StorageError>;
    /// Job counts.
    async fn job_stats(&self) -> Result<JobStats, StorageError>;
    /// Unfinished fanout (any user) and backfill (this user) work. Dead jobs
    /// count as unfinished: their items are still missing from inboxes.
    async fn pending_work(&self, user: UserId) -> Result<PendingWork, StorageError>;

    /// Holds an item for later release.
    async fn schedule(&self, item: &ScheduledActivity) -> Result<(), StorageError>;
    /// An actor's scheduled items after `after` (schedule id order).
    async fn list_scheduled(
        &self,
        actor: UserId,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ScheduledActivity>, StorageError>;
    /// Removes a scheduled item; false when there was none.
    async fn remove_scheduled(&self, actor: UserId, schedule_id: &str) -> Result<bool, StorageError>;
    /// Items due at `now_ms`, oldest first.
    async fn due_scheduled(&self, now_ms: i64, limit: usize) -> Result<Vec<ScheduledActivity>, StorageError>;

    /// How far the follow-graph change log has been turned into jobs.
    async fn edge_cursor(&self) -> Result<u64, StorageError>;
    /// Records edge jobs and advances the cursor, in one step.
    async fn record_edge_jobs(&self, jobs: &[Job], cursor: u64) -> Result<(), StorageError>;

    /// Answers when usable.
    async fn ping(&self) -> Result<(), StorageError>;
}
