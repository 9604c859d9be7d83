//! Every statement of the activity store, prepared once at start.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use crate::store::StorageError;

pub(super) struct Statements {
    pub(super) activity_put: PreparedStatement,
    pub(super) activity_get: PreparedStatement,
    pub(super) foreign_claim: PreparedStatement,
    pub(super) foreign_get: PreparedStatement,
    pub(super) outbox_put: PreparedStatement,
    pub(super) outbox_page: PreparedStatement,
    pub(super) outbox_mode: PreparedStatement,
    pub(super) pulled_put: PreparedStatement,
    pub(super) pulled_page: PreparedStatement,
    pub(super) days_put: PreparedStatement,
    pub(super) days_list: PreparedStatement,
    pub(super) job_put: PreparedStatement,
    pub(super) job_get: PreparedStatement,
    pub(super) job_delete: PreparedStatement,
    pub(super) job_fail: PreparedStatement,
    pub(super) jobs_all: PreparedStatement,
    pub(super) job_touch: PreparedStatement,
    pub(super) due_put: PreparedStatement,
    pub(super) sf_put: PreparedStatement,
    pub(super) sf_delete: PreparedStatement,
    pub(super) sf_all: PreparedStatement,
    pub(super) due_delete: PreparedStatement,
    pub(super) due_bucket: PreparedStatement,
    pub(super) dead_put: PreparedStatement,
    pub(super) dead_get: PreparedStatement,
    pub(super) dead_delete: PreparedStatement,
    pub(super) dead_page: PreparedStatement,
    pub(super) dead_all: PreparedStatement,
    pub(super) sched_put: PreparedStatement,
    pub(super) sched_get: PreparedStatement,
    pub(super) sched_delete: PreparedStatement,
    pub(super) sched_actor_put: PreparedStatement,
    pub(super) sched_actor_page: PreparedStatement,
    pub(super) sched_actor_delete: PreparedStatement,
    pub(super) sched_due_put: PreparedStatement,
    pub(super) sched_due_page: PreparedStatement,
    pub(super) sched_due_delete: PreparedStatement,
    pub(super) meta_get: PreparedStatement,
    pub(super) meta_put: PreparedStatement,
    pub(super) pf_put: PreparedStatement,
    pub(super) pf_delete: PreparedStatement,
    pub(super) pf_first: PreparedStatement,
    pub(super) pb_put: PreparedStatement,
    pub(super) pb_delete: PreparedStatement,
    pub(super) pb_list: PreparedStatement,
}

impl Statements {
    /// Prepares every statement against keyspace `k`.
    pub(super) async fn prepare(session: &Session, k: &str) -> Result<Self, StorageError> {
        let prep = |q: String| async move { feed_cql::prepare(session, q).await };
        Ok(Self {
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
                "UPDATE {k}.pub_jobs SET attempts = ?, updated_ms = ?, body = ? WHERE job_id = ? IF EXISTS"
            ))
            .await?,
            job_touch: prep(format!(
                "UPDATE {k}.pub_jobs SET updated_ms = ? WHERE job_id = ? IF updated_ms = ?"
            ))
            .await?,
            sf_put: prep(format!(
                "INSERT INTO {k}.pub_stalled_fanout (p, feed, activity_id, job_id) VALUES (0, ?, ?, ?)"
            ))
            .await?,
            sf_delete: prep(format!(
                "DELETE FROM {k}.pub_stalled_fanout WHERE p = 0 AND feed = ? AND activity_id = ? AND job_id = ?"
            ))
            .await?,
            sf_all: prep(format!(
                "SELECT feed, activity_id FROM {k}.pub_stalled_fanout WHERE p = 0"
            ))
            .await?,
            due_put: prep(format!("INSERT INTO {k}.pub_jobs_due (bucket, job_id) VALUES (?, ?)")).await?,
            due_delete: prep(format!("DELETE FROM {k}.pub_jobs_due WHERE bucket = ? AND job_id = ?")).await?,
            due_bucket: prep(format!("SELECT job_id FROM {k}.pub_jobs_due WHERE bucket = ?")).await?,
            jobs_all: prep(format!(
                "SELECT job_id, attempts, updated_ms, created_ms, body FROM {k}.pub_jobs"
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
        })
    }
}
