//! ScyllaDB backend of the activity store (never run against a real cluster
//! on the build machines: no ScyllaDB server can be installed there; its
//! contract test runs when `FEED__SCYLLA__NODES` is set).
//!
//! Tables (created by `publish --migrate`, verified at start):
//! - `pub_activities (id)`: the activity, protobuf-encoded.
//! - `pub_foreign ((actor, foreign_id))`: claimed with a lightweight
//!   transaction, so a retry on another replica finds the first id (Invariant 6).
//! - `pub_outbox ((feed, day), id DESC)` and `pub_pulled`: outboxes bucketed
//!   by the id's day, as Discord buckets messages, so no partition grows
//!   without bound; `pub_outbox_days (feed, day DESC)` lists a feed's buckets.
//! - `pub_jobs (job_id)`, `pub_dead (job_id)`: pending and dead jobs;
//!   `pub_jobs_due (bucket, job_id)`: jobs by the minute they were last
//!   written, which the sweeper reads from its floor (`pub_meta`
//!   `sweep_floor`) up to the stale minute.
//! - `pub_scheduled*`: held items, by id, by actor and by due hour.
//! - `pub_meta (name)`: the edge-log cursor.
//!
//! The activity, its outbox rows and its jobs go in one logged batch after
//! the claim; a retry rewrites the same rows with the same id. Outbox ids
//! without an activity row are invisible (hydration drops them). Statements
//! are prepared once with LOCAL_QUORUM / LOCAL_SERIAL.

use std::sync::Arc;

use async_trait::async_trait;
use feed_core::{FeedRef, UserId, id::id_time_ms};
use feed_proto::common::v1::{Activity, DeliveryMode};
use feed_proto::events::v1::{Job, job};
use feed_proto::publish::v1::ScheduledActivity;
use feed_server::config::ScyllaConfig;
use futures::TryStreamExt;
use prost::Message;
use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

mod jobs;
mod scheduled;
mod schema;
mod statements;

pub use schema::migrate;
use statements::Statements;

use crate::store::{
    ActivityStore, DeadJob, ForeignClaim, ForeignRecord, JobState, JobStats, OutboxEntry, PendingWork, StorageError,
    adds_items,
};

/// Bumped when the schema changes; services refuse an older one.
pub const SCHEMA_VERSION: i32 = 3;
const COMPONENT: &str = "publish";
const DAY_MS: u64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
/// Scheduled items are looked for this many hours back (a long outage).
const DUE_LOOKBACK_HOURS: i64 = 24 * 7;
/// Width of a `pub_jobs_due` partition.
const SWEEP_BUCKET_MS: i64 = 60_000;

/// The `pub_jobs_due` partition of a write at `ms`.
fn sweep_bucket(ms: i64) -> i64 {
    ms.div_euclid(SWEEP_BUCKET_MS)
}

fn err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

fn unavailable(e: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(e.to_string())
}

fn i(v: u64) -> i64 {
    v as i64
}

fn day_of(id: u64) -> i64 {
    (id_time_ms(id) / DAY_MS) as i64
}

/// The ScyllaDB activity store.
pub struct ScyllaActivityStore {
    session: Session,
    st: Statements,
    /// The lowest `pub_jobs_due` bucket that may hold a row (None: not
    /// read yet); shared through `pub_meta` so a restart starts there.
    sweep_floor: tokio::sync::Mutex<Option<i64>>,
}

fn blob(v: Vec<u8>) -> CqlValue {
    CqlValue::Blob(v)
}
fn big(v: u64) -> CqlValue {
    CqlValue::BigInt(i(v))
}
fn text(v: impl Into<String>) -> CqlValue {
    CqlValue::Text(v.into())
}

impl ScyllaActivityStore {
    /// Connects, verifies the schema version and prepares every statement once.
    pub async fn connect(cfg: &ScyllaConfig) -> Result<Self, StorageError> {
        let session = feed_cql::connect_verified(cfg, COMPONENT, SCHEMA_VERSION).await?;
        let st = Statements::prepare(&session, &cfg.keyspace).await?;
        Ok(Self {
            session,
            st,
            sweep_floor: tokio::sync::Mutex::new(None),
        })
    }

    async fn exec(&self, p: &PreparedStatement, v: impl SerializeRow) -> Result<QueryResult, StorageError> {
        self.session.execute_unpaged(p, v).await.map_err(unavailable)
    }

    async fn rows<R>(&self, p: &PreparedStatement, v: impl SerializeRow) -> Result<Vec<R>, StorageError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let r = self.exec(p, v).await?.into_rows_result().map_err(err)?;
        r.rows::<R>().map_err(err)?.map(|x| x.map_err(err)).collect()
    }

    /// Every row of a small table, paged (pending jobs, dead jobs).
    async fn scan<R>(&self, p: &PreparedStatement) -> Result<Vec<R>, StorageError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        self.session
            .execute_iter(p.clone(), ())
            .await
            .map_err(unavailable)?
            .rows_stream::<R>()
            .map_err(err)?
            .try_collect()
            .await
            .map_err(err)
    }

    fn job_row(job: &Job, attempts: u32, updated_ms: i64) -> Vec<CqlValue> {
        vec![
            text(job.job_id.clone()),
            CqlValue::Int(attempts as i32),
            CqlValue::BigInt(updated_ms),
            CqlValue::BigInt(job.created_at_ms),
            blob(job.encode_to_vec()),
        ]
    }

    /// The pending-work index row of a job (insert, delete), if it has one.
    fn pending_index(
        &self,
        job: &Job,
    ) -> Option<(&PreparedStatement, &PreparedStatement, Vec<CqlValue>, Vec<CqlValue>)> {
        match &job.kind {
            Some(job::Kind::Fanout(f)) => Some((
                &self.st.pf_put,
                &self.st.pf_delete,
                vec![big(f.activity_id), text(job.job_id.clone())],
                vec![big(f.activity_id), text(job.job_id.clone())],
            )),
            Some(job::Kind::Edge(e)) if adds_items(e) => Some((
                &self.st.pb_put,
                &self.st.pb_delete,
                vec![big(e.follower_id), text(job.job_id.clone()), text(e.feed.clone())],
                vec![big(e.follower_id), text(job.job_id.clone())],
            )),
            _ => None,
        }
    }

    fn dead(row: (i32, i64, String, Vec<u8>)) -> Result<DeadJob, StorageError> {
        Ok(DeadJob {
            attempts: row.0 as u32,
            failed_ms: row.1,
            error: row.2,
            job: Job::decode(row.3.as_slice()).map_err(err)?,
        })
    }

    async fn days(&self, feed: &FeedRef, before: Option<u64>) -> Result<Vec<i64>, StorageError> {
        let upto = before.map(day_of).unwrap_or(i64::MAX);
        Ok(self
            .rows::<(i64,)>(&self.st.days_list, (feed.to_string(), upto))
            .await?
            .into_iter()
            .map(|(d,)| d)
            .collect())
    }

    /// One logged batch: the rows and the jobs land together or not at all.
    /// Engines differ on size: Cassandra refuses a batch over
    /// `batch_size_fail_threshold` (50 KiB by default), ScyllaDB over 1 MiB;
    /// a publish writes one activity twice, in its row and its event job,
    /// plus an entry and a job per target feed: about 65 KB for a
    /// maximum-size activity, so Cassandra needs ScyllaDB's threshold.
    /// Jobs count as written at `updated_ms` (default: their creation).
    async fn job_batch(
        &self,
        jobs: &[Job],
        extra: Vec<(&PreparedStatement, Vec<CqlValue>)>,
        updated_ms: Option<i64>,
    ) -> Result<(), StorageError> {
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_consistency(Consistency::LocalQuorum);
        let mut values: Vec<Vec<CqlValue>> = Vec::new();
        for job in jobs {
            let updated = updated_ms.unwrap_or(job.created_at_ms);
            batch.append_statement(self.st.job_put.clone());
            values.push(Self::job_row(job, 0, updated));
            batch.append_statement(self.st.due_put.clone());
            values.push(vec![CqlValue::BigInt(sweep_bucket(updated)), text(job.job_id.clone())]);
            if let Some((put, _, row, _)) = self.pending_index(job) {
                batch.append_statement(put.clone());
                values.push(row);
            }
        }
        for (st, v) in extra {
            batch.append_statement(st.clone());
            values.push(v);
        }
        if values.is_empty() {
            return Ok(());
        }
        self.session.batch(&batch, values).await.map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl ActivityStore for ScyllaActivityStore {
    async fn claim_foreign(
        &self,
        actor: UserId,
        foreign_id: &str,
        id: u64,
        fingerprint: u64,
    ) -> Result<ForeignClaim, StorageError> {
        let rows = self
            .exec(&self.st.foreign_claim, (i(actor), foreign_id, i(id), i(fingerprint)))
            .await?
            .into_rows_result()
            .map_err(err)?;
        // [applied], then the existing row's columns when not applied.
        let row = rows.maybe_first_row::<Row>().map_err(err)?.unwrap_or_default();
        let col = |n: usize| row.columns.get(n).cloned().flatten();
        match col(0) {
            Some(CqlValue::Boolean(true)) => Ok(ForeignClaim::Claimed),
            _ => {
                let mut held_id = None;
                let mut held_fp = None;
                for (spec, value) in rows.column_specs().iter().zip(row.columns.iter()) {
                    match (spec.name(), value) {
                        ("id", Some(CqlValue::BigInt(v))) => held_id = Some(*v as u64),
                        ("fingerprint", Some(CqlValue::BigInt(v))) => held_fp = Some(*v as u64),
                        _ => {}
                    }
                }
                Ok(ForeignClaim::Held {
                    id: held_id.ok_or_else(|| err("claim not applied but no id returned"))?,
                    fingerprint: held_fp.unwrap_or(0),
                })
            }
        }
    }

    async fn commit_publish(
        &self,
        activity: &Activity,
        outbox: &[OutboxEntry],
        jobs: &[Job],
    ) -> Result<(), StorageError> {
        let mut extra: Vec<(&PreparedStatement, Vec<CqlValue>)> = vec![(
            &self.st.activity_put,
            vec![big(activity.id), blob(activity.encode_to_vec())],
        )];
        for e in outbox {
            let feed = e.feed.to_string();
            let day = CqlValue::BigInt(day_of(e.id));
            extra.push((&self.st.days_put, vec![text(feed.clone()), day.clone()]));
            extra.push((
                &self.st.outbox_put,
                vec![text(feed.clone()), day.clone(), big(e.id), CqlValue::Int(e.mode as i32)],
            ));
            if e.mode == DeliveryMode::Pull {
                extra.push((&self.st.pulled_put, vec![text(feed), day, big(e.id)]));
            }
        }
        self.job_batch(jobs, extra, None).await
    }

    async fn get(&self, ids: &[u64]) -> Result<Vec<Option<Arc<Activity>>>, StorageError> {
        let reads = ids
            .iter()
            .map(|id| self.rows::<(Vec<u8>,)>(&self.st.activity_get, (i(*id),)));
        let results = futures::future::try_join_all(reads).await?;
        results
            .into_iter()
            .map(|rows| match rows.into_iter().next() {
                Some((body,)) => Activity::decode(body.as_slice())
                    .map(|a| Some(Arc::new(a)))
                    .map_err(err),
                None => Ok(None),
            })
            .collect()
    }

    async fn find_foreign(&self, actor: UserId, foreign_id: &str) -> Result<Option<ForeignRecord>, StorageError> {
        Ok(self
            .rows::<(i64, i64)>(&self.st.foreign_get, (i(actor), foreign_id))
            .await?
            .first()
            .map(|(id, fingerprint)| ForeignRecord {
                id: *id as u64,
                fingerprint: *fingerprint as u64,
            }))
    }

    async fn replace(&self, activity: &Activity, jobs: &[Job]) -> Result<(), StorageError> {
        self.job_batch(
            jobs,
            vec![(
                &self.st.activity_put,
                vec![big(activity.id), blob(activity.encode_to_vec())],
            )],
            None,
        )
        .await
    }

    async fn outbox(
        &self,
        feed: &FeedRef,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StorageError> {
        let mut out = Vec::new();
        let upper = i(before.unwrap_or(i64::MAX as u64));
        for day in self.days(feed, before).await? {
            let want = (limit - out.len()).min(i32::MAX as usize) as i32;
            for (id, mode) in self
                .rows::<(i64, i32)>(&self.st.outbox_page, (feed.to_string(), day, upper, want))
                .await?
            {
                out.push(OutboxEntry {
                    feed: feed.clone(),
                    id: id as u64,
                    mode: DeliveryMode::try_from(mode).unwrap_or(DeliveryMode::Push),
                });
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn outbox_mode(&self, feed: &FeedRef, id: u64) -> Result<Option<DeliveryMode>, StorageError> {
        Ok(self
            .rows::<(i32,)>(&self.st.outbox_mode, (feed.to_string(), day_of(id), i(id)))
            .await?
            .first()
            .map(|(m,)| DeliveryMode::try_from(*m).unwrap_or(DeliveryMode::Push)))
    }

    async fn pulled(&self, feed: &FeedRef, before: Option<u64>, limit: usize) -> Result<Vec<u64>, StorageError> {
        let mut out = Vec::new();
        let upper = i(before.unwrap_or(i64::MAX as u64));
        for day in self.days(feed, before).await? {
            let want = (limit - out.len()).min(i32::MAX as usize) as i32;
            out.extend(
                self.rows::<(i64,)>(&self.st.pulled_page, (feed.to_string(), day, upper, want))
                    .await?
                    .into_iter()
                    .map(|(id,)| id as u64),
            );
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
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
            .rows::<(i64,)>(&self.st.meta_get, ("edge_cursor",))
            .await?
            .first()
            .map(|(v,)| *v as u64)
            .unwrap_or(0))
    }

    async fn record_edge_jobs(&self, jobs: &[Job], cursor: u64) -> Result<(), StorageError> {
        self.job_batch(
            jobs,
            vec![(&self.st.meta_put, vec![text("edge_cursor"), big(cursor)])],
            None,
        )
        .await
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.session
            .query_unpaged("SELECT now() FROM system.local", ())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
