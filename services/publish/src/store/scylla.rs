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
//! - `pub_jobs (job_id)`, `pub_dead (job_id)`: pending and dead jobs.
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

use super::{
    ActivityStore, Claim, DeadJob, ForeignRecord, JobState, JobStats, OutboxEntry, PendingWork, StoreError, adds_items,
};

/// Bumped when the schema changes; services refuse an older one.
pub const SCHEMA_VERSION: i32 = 2;
const COMPONENT: &str = "publish";
const DAY_MS: u64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
/// Scheduled items are looked for this many hours back (a long outage).
const DUE_LOOKBACK_HOURS: i64 = 24 * 7;

impl From<feed_server::scylla::ScyllaError> for StoreError {
    fn from(e: feed_server::scylla::ScyllaError) -> Self {
        match e {
            feed_server::scylla::ScyllaError::Unavailable(m) => StoreError::Unavailable(m),
            feed_server::scylla::ScyllaError::Backend(m) => StoreError::Backend(m),
        }
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn i(v: u64) -> i64 {
    v as i64
}

fn day_of(id: u64) -> i64 {
    (id_time_ms(id) / DAY_MS) as i64
}

fn schema(k: &str) -> Vec<String> {
    vec![
        format!("CREATE TABLE IF NOT EXISTS {k}.pub_activities (id bigint PRIMARY KEY, body blob)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.pub_foreign (actor bigint, foreign_id text, id bigint, fingerprint bigint, PRIMARY KEY ((actor, foreign_id)))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.pub_outbox (feed text, day bigint, id bigint, mode int, PRIMARY KEY ((feed, day), id)) WITH CLUSTERING ORDER BY (id DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.pub_pulled (feed text, day bigint, id bigint, PRIMARY KEY ((feed, day), id)) WITH CLUSTERING ORDER BY (id DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.pub_outbox_days (feed text, day bigint, PRIMARY KEY (feed, day)) WITH CLUSTERING ORDER BY (day DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.pub_jobs (job_id text PRIMARY KEY, attempts int, updated_ms bigint, created_ms bigint, body blob)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.pub_dead (job_id text PRIMARY KEY, attempts int, failed_ms bigint, error text, body blob)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.pub_scheduled (schedule_id text PRIMARY KEY, actor bigint, publish_at bigint, body blob)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.pub_scheduled_by_actor (actor bigint, schedule_id text, PRIMARY KEY (actor, schedule_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.pub_scheduled_due (hour bigint, publish_at bigint, schedule_id text, PRIMARY KEY (hour, publish_at, schedule_id))"
        ),
        format!("CREATE TABLE IF NOT EXISTS {k}.pub_meta (name text PRIMARY KEY, value bigint)"),
        // One partition: it holds only unfinished fanout jobs, and its first row is the watermark.
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.pub_pending_fanout (p int, activity_id bigint, job_id text, PRIMARY KEY (p, activity_id, job_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.pub_pending_backfill (follower bigint, job_id text, feed text, PRIMARY KEY (follower, job_id))"
        ),
    ]
}

/// Applies the schema (the `--migrate` step); safe to run again.
pub async fn migrate(cfg: &ScyllaConfig) -> Result<(), StoreError> {
    Ok(feed_server::scylla::migrate(cfg, COMPONENT, SCHEMA_VERSION, &schema(&cfg.keyspace)).await?)
}

struct Statements {
    activity_put: PreparedStatement,
    activity_get: PreparedStatement,
    foreign_claim: PreparedStatement,
    foreign_get: PreparedStatement,
    outbox_put: PreparedStatement,
    outbox_page: PreparedStatement,
    outbox_mode: PreparedStatement,
    pulled_put: PreparedStatement,
    pulled_page: PreparedStatement,
    days_put: PreparedStatement,
    days_list: PreparedStatement,
    job_put: PreparedStatement,
    job_get: PreparedStatement,
    job_delete: PreparedStatement,
    job_fail: PreparedStatement,
    jobs_all: PreparedStatement,
    job_touch: PreparedStatement,
    dead_put: PreparedStatement,
    dead_get: PreparedStatement,
    dead_delete: PreparedStatement,
    dead_page: PreparedStatement,
    dead_all: PreparedStatement,
    sched_put: PreparedStatement,
    sched_get: PreparedStatement,
    sched_delete: PreparedStatement,
    sched_actor_put: PreparedStatement,
    sched_actor_page: PreparedStatement,
    sched_actor_delete: PreparedStatement,
    sched_due_put: PreparedStatement,
    sched_due_page: PreparedStatement,
    sched_due_delete: PreparedStatement,
    meta_get: PreparedStatement,
    meta_put: PreparedStatement,
    pf_put: PreparedStatement,
    pf_delete: PreparedStatement,
    pf_first: PreparedStatement,
    pb_put: PreparedStatement,
    pb_delete: PreparedStatement,
    pb_list: PreparedStatement,
}

/// The ScyllaDB activity store.
pub struct ScyllaActivityStore {
    session: Session,
    st: Statements,
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
    pub async fn connect(cfg: &ScyllaConfig) -> Result<Self, StoreError> {
        let session = feed_server::scylla::connect_verified(cfg, COMPONENT, SCHEMA_VERSION).await?;
        let k = &cfg.keyspace;
        let prep = |q: String| {
            let session = &session;
            async move { Ok::<_, StoreError>(feed_server::scylla::prepare(session, q).await?) }
        };
        let st = Statements {
            activity_put: prep(format!("INSERT INTO {k}.pub_activities (id, body) VALUES (?, ?)")).await?,
            activity_get: prep(format!("SELECT body FROM {k}.pub_activities WHERE id = ?")).await?,
            foreign_claim: prep(format!(
                "INSERT INTO {k}.pub_foreign (actor, foreign_id, id, fingerprint) VALUES (?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            foreign_get: prep(format!(
                "SELECT id, fingerprint FROM {k}.pub_foreign WHERE actor = ? AND foreign_id = ?"
            ))
            .await?,
            outbox_put: prep(format!(
                "INSERT INTO {k}.pub_outbox (feed, day, id, mode) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            outbox_page: prep(format!(
                "SELECT id, mode FROM {k}.pub_outbox WHERE feed = ? AND day = ? AND id < ? LIMIT ?"
            ))
            .await?,
            outbox_mode: prep(format!(
                "SELECT mode FROM {k}.pub_outbox WHERE feed = ? AND day = ? AND id = ?"
            ))
            .await?,
            pulled_put: prep(format!("INSERT INTO {k}.pub_pulled (feed, day, id) VALUES (?, ?, ?)")).await?,
            pulled_page: prep(format!(
                "SELECT id FROM {k}.pub_pulled WHERE feed = ? AND day = ? AND id < ? LIMIT ?"
            ))
            .await?,
            days_put: prep(format!("INSERT INTO {k}.pub_outbox_days (feed, day) VALUES (?, ?)")).await?,
            days_list: prep(format!(
                "SELECT day FROM {k}.pub_outbox_days WHERE feed = ? AND day <= ?"
            ))
            .await?,
            job_put: prep(format!(
                "INSERT INTO {k}.pub_jobs (job_id, attempts, updated_ms, created_ms, body) VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            job_get: prep(format!(
                "SELECT attempts, updated_ms, body FROM {k}.pub_jobs WHERE job_id = ?"
            ))
            .await?,
            job_delete: prep(format!("DELETE FROM {k}.pub_jobs WHERE job_id = ?")).await?,
            job_fail: prep(format!(
                "UPDATE {k}.pub_jobs SET attempts = ?, updated_ms = ? WHERE job_id = ?"
            ))
            .await?,
            job_touch: prep(format!(
                "UPDATE {k}.pub_jobs SET updated_ms = ? WHERE job_id = ? IF EXISTS"
            ))
            .await?,
            jobs_all: prep(format!(
                "SELECT attempts, updated_ms, created_ms, body FROM {k}.pub_jobs"
            ))
            .await?,
            dead_put: prep(format!(
                "INSERT INTO {k}.pub_dead (job_id, attempts, failed_ms, error, body) VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            dead_get: prep(format!(
                "SELECT attempts, failed_ms, error, body FROM {k}.pub_dead WHERE job_id = ?"
            ))
            .await?,
            dead_delete: prep(format!("DELETE FROM {k}.pub_dead WHERE job_id = ?")).await?,
            dead_page: prep(format!(
                "SELECT attempts, failed_ms, error, body FROM {k}.pub_dead WHERE token(job_id) > token(?) LIMIT ?"
            ))
            .await?,
            dead_all: prep(format!("SELECT attempts, failed_ms, error, body FROM {k}.pub_dead")).await?,
            sched_put: prep(format!(
                "INSERT INTO {k}.pub_scheduled (schedule_id, actor, publish_at, body) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            sched_get: prep(format!(
                "SELECT actor, publish_at, body FROM {k}.pub_scheduled WHERE schedule_id = ?"
            ))
            .await?,
            sched_delete: prep(format!("DELETE FROM {k}.pub_scheduled WHERE schedule_id = ?")).await?,
            sched_actor_put: prep(format!(
                "INSERT INTO {k}.pub_scheduled_by_actor (actor, schedule_id) VALUES (?, ?)"
            ))
            .await?,
            sched_actor_page: prep(format!(
                "SELECT schedule_id FROM {k}.pub_scheduled_by_actor WHERE actor = ? AND schedule_id > ? LIMIT ?"
            ))
            .await?,
            sched_actor_delete: prep(format!(
                "DELETE FROM {k}.pub_scheduled_by_actor WHERE actor = ? AND schedule_id = ?"
            ))
            .await?,
            sched_due_put: prep(format!(
                "INSERT INTO {k}.pub_scheduled_due (hour, publish_at, schedule_id) VALUES (?, ?, ?)"
            ))
            .await?,
            sched_due_page: prep(format!(
                "SELECT schedule_id FROM {k}.pub_scheduled_due WHERE hour = ? AND publish_at <= ? LIMIT ?"
            ))
            .await?,
            sched_due_delete: prep(format!(
                "DELETE FROM {k}.pub_scheduled_due WHERE hour = ? AND publish_at = ? AND schedule_id = ?"
            ))
            .await?,
            meta_get: prep(format!("SELECT value FROM {k}.pub_meta WHERE name = ?")).await?,
            meta_put: prep(format!("INSERT INTO {k}.pub_meta (name, value) VALUES (?, ?)")).await?,
            pf_put: prep(format!(
                "INSERT INTO {k}.pub_pending_fanout (p, activity_id, job_id) VALUES (0, ?, ?)"
            ))
            .await?,
            pf_delete: prep(format!(
                "DELETE FROM {k}.pub_pending_fanout WHERE p = 0 AND activity_id = ? AND job_id = ?"
            ))
            .await?,
            pf_first: prep(format!(
                "SELECT activity_id FROM {k}.pub_pending_fanout WHERE p = 0 LIMIT 1"
            ))
            .await?,
            pb_put: prep(format!(
                "INSERT INTO {k}.pub_pending_backfill (follower, job_id, feed) VALUES (?, ?, ?)"
            ))
            .await?,
            pb_delete: prep(format!(
                "DELETE FROM {k}.pub_pending_backfill WHERE follower = ? AND job_id = ?"
            ))
            .await?,
            pb_list: prep(format!("SELECT feed FROM {k}.pub_pending_backfill WHERE follower = ?")).await?,
        };
        Ok(Self { session, st })
    }

    async fn exec(&self, p: &PreparedStatement, v: impl SerializeRow) -> Result<QueryResult, StoreError> {
        self.session.execute_unpaged(p, v).await.map_err(unavailable)
    }

    async fn rows<R>(&self, p: &PreparedStatement, v: impl SerializeRow) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let r = self.exec(p, v).await?.into_rows_result().map_err(err)?;
        r.rows::<R>().map_err(err)?.map(|x| x.map_err(err)).collect()
    }

    /// Every row of a small table, paged (pending jobs, dead jobs).
    async fn scan<R>(&self, p: &PreparedStatement) -> Result<Vec<R>, StoreError>
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

    fn dead(row: (i32, i64, String, Vec<u8>)) -> Result<DeadJob, StoreError> {
        Ok(DeadJob {
            attempts: row.0 as u32,
            failed_ms: row.1,
            error: row.2,
            job: Job::decode(row.3.as_slice()).map_err(err)?,
        })
    }

    async fn days(&self, feed: &FeedRef, before: Option<u64>) -> Result<Vec<i64>, StoreError> {
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
    /// a publish writes one activity (`extra` capped at 8 KiB) twice, in its
    /// row and its event job, plus an entry and a job per target feed.
    async fn job_batch(&self, jobs: &[Job], extra: Vec<(&PreparedStatement, Vec<CqlValue>)>) -> Result<(), StoreError> {
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_consistency(Consistency::LocalQuorum);
        let mut values: Vec<Vec<CqlValue>> = Vec::new();
        for job in jobs {
            batch.append_statement(self.st.job_put.clone());
            values.push(Self::job_row(job, 0, job.created_at_ms));
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
    ) -> Result<Claim, StoreError> {
        let rows = self
            .exec(&self.st.foreign_claim, (i(actor), foreign_id, i(id), i(fingerprint)))
            .await?
            .into_rows_result()
            .map_err(err)?;
        // [applied], then the existing row's columns when not applied.
        let row = rows.maybe_first_row::<Row>().map_err(err)?.unwrap_or_default();
        let col = |n: usize| row.columns.get(n).cloned().flatten();
        match col(0) {
            Some(CqlValue::Boolean(true)) => Ok(Claim::Claimed),
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
                Ok(Claim::Held {
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
    ) -> Result<(), StoreError> {
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
        self.job_batch(jobs, extra).await
    }

    async fn get(&self, ids: &[u64]) -> Result<Vec<Option<Arc<Activity>>>, StoreError> {
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

    async fn find_foreign(&self, actor: UserId, foreign_id: &str) -> Result<Option<ForeignRecord>, StoreError> {
        Ok(self
            .rows::<(i64, i64)>(&self.st.foreign_get, (i(actor), foreign_id))
            .await?
            .first()
            .map(|(id, fingerprint)| ForeignRecord {
                id: *id as u64,
                fingerprint: *fingerprint as u64,
            }))
    }

    async fn replace(&self, activity: &Activity, jobs: &[Job]) -> Result<(), StoreError> {
        self.job_batch(
            jobs,
            vec![(
                &self.st.activity_put,
                vec![big(activity.id), blob(activity.encode_to_vec())],
            )],
        )
        .await
    }

    async fn outbox(&self, feed: &FeedRef, before: Option<u64>, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
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

    async fn outbox_mode(&self, feed: &FeedRef, id: u64) -> Result<Option<DeliveryMode>, StoreError> {
        Ok(self
            .rows::<(i32,)>(&self.st.outbox_mode, (feed.to_string(), day_of(id), i(id)))
            .await?
            .first()
            .map(|(m,)| DeliveryMode::try_from(*m).unwrap_or(DeliveryMode::Push)))
    }

    async fn pulled(&self, feed: &FeedRef, before: Option<u64>, limit: usize) -> Result<Vec<u64>, StoreError> {
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

    async fn put_jobs(&self, jobs: &[Job]) -> Result<(), StoreError> {
        self.job_batch(jobs, vec![]).await
    }

    async fn job(&self, job_id: &str) -> Result<Option<JobState>, StoreError> {
        match self
            .rows::<(i32, i64, Vec<u8>)>(&self.st.job_get, (job_id,))
            .await?
            .into_iter()
            .next()
        {
            Some((attempts, updated_ms, body)) => Ok(Some(JobState {
                attempts: attempts as u32,
                updated_ms,
                job: Job::decode(body.as_slice()).map_err(err)?,
            })),
            None => Ok(None),
        }
    }

    async fn complete_job(&self, job_id: &str, spawned: &[Job]) -> Result<(), StoreError> {
        let mut done = vec![(&self.st.job_delete, vec![text(job_id)])];
        // Its pending-work row goes with it, in the same batch: reads merge
        // outboxes for as long as that row says the work is unfinished.
        let state = self.job(job_id).await?;
        if let Some((_, delete, _, row)) = state.as_ref().and_then(|s| self.pending_index(&s.job)) {
            done.push((delete, row));
        }
        self.job_batch(spawned, done).await
    }

    async fn fail_job(&self, job_id: &str, error: &str, max_attempts: u32, now_ms: i64) -> Result<bool, StoreError> {
        let Some(mut state) = self.job(job_id).await? else {
            return Ok(false);
        };
        state.attempts += 1;
        if state.attempts < max_attempts {
            self.exec(&self.st.job_fail, (state.attempts as i32, now_ms, job_id))
                .await?;
            return Ok(false);
        }
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_consistency(Consistency::LocalQuorum);
        batch.append_statement(self.st.dead_put.clone());
        batch.append_statement(self.st.job_delete.clone());
        let values: Vec<Vec<CqlValue>> = vec![
            vec![
                text(job_id),
                CqlValue::Int(state.attempts as i32),
                CqlValue::BigInt(now_ms),
                text(error),
                blob(state.job.encode_to_vec()),
            ],
            vec![text(job_id)],
        ];
        self.session.batch(&batch, values).await.map_err(unavailable)?;
        Ok(true)
    }

    async fn stale_jobs(&self, stale_before_ms: i64, now_ms: i64, limit: usize) -> Result<Vec<Job>, StoreError> {
        let rows = self.scan::<(i32, i64, i64, Vec<u8>)>(&self.st.jobs_all).await?;
        let mut out = Vec::new();
        for r in rows.into_iter().filter(|r| r.1 < stale_before_ms).take(limit) {
            let job = Job::decode(r.3.as_slice()).map_err(err)?;
            // IF EXISTS: a job completed meanwhile must not come back.
            let rows = self
                .exec(&self.st.job_touch, (now_ms, job.job_id.as_str()))
                .await?
                .into_rows_result()
                .map_err(err)?;
            let applied = rows
                .maybe_first_row::<Row>()
                .map_err(err)?
                .and_then(|r| r.columns.into_iter().next().flatten());
            if matches!(applied, Some(CqlValue::Boolean(true))) {
                out.push(job);
            }
        }
        Ok(out)
    }

    async fn dead_jobs(&self, after: &str, limit: usize) -> Result<Vec<DeadJob>, StoreError> {
        // Token order, not name order: the page token is the last job id seen.
        let rows = if after.is_empty() {
            self.scan::<(i32, i64, String, Vec<u8>)>(&self.st.dead_all)
                .await?
                .into_iter()
                .take(limit)
                .collect()
        } else {
            self.rows::<(i32, i64, String, Vec<u8>)>(&self.st.dead_page, (after, limit.min(i32::MAX as usize) as i32))
                .await?
        };
        rows.into_iter().map(Self::dead).collect()
    }

    async fn revive_jobs(&self, ids: &[String], now_ms: i64) -> Result<Vec<Job>, StoreError> {
        let dead: Vec<DeadJob> = if ids.is_empty() {
            self.scan::<(i32, i64, String, Vec<u8>)>(&self.st.dead_all)
                .await?
                .into_iter()
                .map(Self::dead)
                .collect::<Result<_, _>>()?
        } else {
            let mut v = Vec::new();
            for id in ids {
                if let Some(row) = self
                    .rows::<(i32, i64, String, Vec<u8>)>(&self.st.dead_get, (id.as_str(),))
                    .await?
                    .pop()
                {
                    v.push(Self::dead(row)?);
                }
            }
            v
        };
        for d in &dead {
            let mut batch = Batch::new(BatchType::Logged);
            batch.set_consistency(Consistency::LocalQuorum);
            batch.append_statement(self.st.job_put.clone());
            batch.append_statement(self.st.dead_delete.clone());
            let values: Vec<Vec<CqlValue>> = vec![Self::job_row(&d.job, 0, now_ms), vec![text(d.job.job_id.clone())]];
            self.session.batch(&batch, values).await.map_err(unavailable)?;
        }
        Ok(dead.into_iter().map(|d| d.job).collect())
    }

    async fn job_stats(&self) -> Result<JobStats, StoreError> {
        let pending = self.scan::<(i32, i64, i64, Vec<u8>)>(&self.st.jobs_all).await?;
        let dead = self.scan::<(i32, i64, String, Vec<u8>)>(&self.st.dead_all).await?;
        Ok(JobStats {
            pending: pending.len() as u64,
            oldest_created_ms: pending.iter().map(|r| r.2).min().unwrap_or(0),
            dead: dead.len() as u64,
        })
    }

    async fn pending_work(&self, user: UserId) -> Result<PendingWork, StoreError> {
        let fanout_from = self
            .rows::<(i64,)>(&self.st.pf_first, ())
            .await?
            .first()
            .map(|(id,)| *id as u64);
        let mut backfill_feeds = Vec::new();
        for (feed,) in self.rows::<(String,)>(&self.st.pb_list, (i(user),)).await? {
            if let Ok(f) = FeedRef::parse(&feed)
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
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_consistency(Consistency::LocalQuorum);
        batch.append_statement(self.st.sched_put.clone());
        batch.append_statement(self.st.sched_actor_put.clone());
        batch.append_statement(self.st.sched_due_put.clone());
        let id = item.schedule_id.clone();
        let values: Vec<Vec<CqlValue>> = vec![
            vec![
                text(id.clone()),
                big(actor),
                CqlValue::BigInt(item.publish_at_ms),
                blob(item.encode_to_vec()),
            ],
            vec![big(actor), text(id.clone())],
            vec![
                CqlValue::BigInt(item.publish_at_ms / HOUR_MS),
                CqlValue::BigInt(item.publish_at_ms),
                text(id),
            ],
        ];
        self.session.batch(&batch, values).await.map_err(unavailable)?;
        Ok(())
    }

    async fn list_scheduled(
        &self,
        actor: UserId,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ScheduledActivity>, StoreError> {
        let ids = self
            .rows::<(String,)>(
                &self.st.sched_actor_page,
                (i(actor), after, limit.min(i32::MAX as usize) as i32),
            )
            .await?;
        let mut out = Vec::new();
        for (id,) in ids {
            if let Some((_, _, body)) = self
                .rows::<(i64, i64, Vec<u8>)>(&self.st.sched_get, (id.as_str(),))
                .await?
                .pop()
            {
                out.push(ScheduledActivity::decode(body.as_slice()).map_err(err)?);
            }
        }
        Ok(out)
    }

    async fn remove_scheduled(&self, actor: UserId, schedule_id: &str) -> Result<bool, StoreError> {
        let Some((owner, at, _)) = self
            .rows::<(i64, i64, Vec<u8>)>(&self.st.sched_get, (schedule_id,))
            .await?
            .pop()
        else {
            return Ok(false);
        };
        if owner as u64 != actor {
            return Ok(false);
        }
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_consistency(Consistency::LocalQuorum);
        batch.append_statement(self.st.sched_delete.clone());
        batch.append_statement(self.st.sched_actor_delete.clone());
        batch.append_statement(self.st.sched_due_delete.clone());
        let values: Vec<Vec<CqlValue>> = vec![
            vec![text(schedule_id)],
            vec![big(actor), text(schedule_id)],
            vec![CqlValue::BigInt(at / HOUR_MS), CqlValue::BigInt(at), text(schedule_id)],
        ];
        self.session.batch(&batch, values).await.map_err(unavailable)?;
        Ok(true)
    }

    async fn due_scheduled(&self, now_ms: i64, limit: usize) -> Result<Vec<ScheduledActivity>, StoreError> {
        let now_hour = now_ms / HOUR_MS;
        let mut out = Vec::new();
        for hour in (now_hour - DUE_LOOKBACK_HOURS)..=now_hour {
            let want = (limit - out.len()).min(i32::MAX as usize) as i32;
            for (id,) in self
                .rows::<(String,)>(&self.st.sched_due_page, (hour, now_ms, want))
                .await?
            {
                if let Some((_, _, body)) = self
                    .rows::<(i64, i64, Vec<u8>)>(&self.st.sched_get, (id.as_str(),))
                    .await?
                    .pop()
                {
                    out.push(ScheduledActivity::decode(body.as_slice()).map_err(err)?);
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn edge_cursor(&self) -> Result<u64, StoreError> {
        Ok(self
            .rows::<(i64,)>(&self.st.meta_get, ("edge_cursor",))
            .await?
            .first()
            .map(|(v,)| *v as u64)
            .unwrap_or(0))
    }

    async fn record_edge_jobs(&self, jobs: &[Job], cursor: u64) -> Result<(), StoreError> {
        self.job_batch(jobs, vec![(&self.st.meta_put, vec![text("edge_cursor"), big(cursor)])])
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.session
            .query_unpaged("SELECT now() FROM system.local", ())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
