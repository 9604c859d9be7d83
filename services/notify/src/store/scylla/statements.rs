//! Every statement of the notification store, prepared once at start.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use crate::store::StorageError;

pub(super) struct Statements {
    pub(super) event_claim: PreparedStatement,
    pub(super) event_get: PreparedStatement,
    pub(super) announce_put: PreparedStatement,
    pub(super) announce_page: PreparedStatement,
    pub(super) note_insert: PreparedStatement,
    pub(super) note_put: PreparedStatement,
    pub(super) note_cas: PreparedStatement,
    pub(super) note_get: PreparedStatement,
    pub(super) note_page: PreparedStatement,
    pub(super) group_claim: PreparedStatement,
    pub(super) group_get: PreparedStatement,
    pub(super) group_move: PreparedStatement,
    pub(super) actor_claim: PreparedStatement,
    pub(super) user_get: PreparedStatement,
    pub(super) user_put: PreparedStatement,
    pub(super) sub_by_user_claim: PreparedStatement,
    pub(super) sub_by_object_put: PreparedStatement,
    pub(super) sub_by_object_get: PreparedStatement,
    pub(super) sub_by_user_list_object: PreparedStatement,
    pub(super) sub_by_user_delete: PreparedStatement,
    pub(super) sub_by_object_delete: PreparedStatement,
    pub(super) subs_of_user: PreparedStatement,
    pub(super) subs_of_user_after_type: PreparedStatement,
    pub(super) subs_of_user_after_object: PreparedStatement,
    pub(super) subs_of_user_after_reason: PreparedStatement,
    pub(super) subscribers_page: PreparedStatement,
    pub(super) job_put: PreparedStatement,
    pub(super) job_claim: PreparedStatement,
    pub(super) job_get: PreparedStatement,
    pub(super) job_delete: PreparedStatement,
    pub(super) job_list: PreparedStatement,
    pub(super) remind_log_put: PreparedStatement,
    pub(super) remind_log_after: PreparedStatement,
}

impl Statements {
    /// Prepares every statement against keyspace `k`.
    pub(super) async fn prepare(session: &Session, k: &str) -> Result<Self, StorageError> {
        let prep = |q: String| async move { feed_cql::prepare(session, q).await };
        Ok(Self {
            event_claim: prep(format!("INSERT INTO {k}.nt_events (event_id, id) VALUES (?, ?) IF NOT EXISTS")).await?,
            event_get: prep(format!("SELECT id FROM {k}.nt_events WHERE event_id = ?")).await?,
            announce_put: prep(format!("INSERT INTO {k}.nt_announces (k, id, rec) VALUES (0, ?, ?)")).await?,
            announce_page: prep(format!("SELECT rec FROM {k}.nt_announces WHERE k = 0 AND id < ? LIMIT ?")).await?,
            note_insert: prep(format!(
                "INSERT INTO {k}.nt_notes (user_id, id, rec, seq) VALUES (?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            note_put: prep(format!("INSERT INTO {k}.nt_notes (user_id, id, rec, seq) VALUES (?, ?, ?, ?)")).await?,
            note_cas: prep(format!(
                "UPDATE {k}.nt_notes SET rec = ?, seq = ? WHERE user_id = ? AND id = ? IF seq = ?"
            ))
            .await?,
            note_get: prep(format!("SELECT rec FROM {k}.nt_notes WHERE user_id = ? AND id = ?")).await?,
            note_page: prep(format!("SELECT rec FROM {k}.nt_notes WHERE user_id = ? AND id < ? LIMIT ?")).await?,
            group_claim: prep(format!(
                "INSERT INTO {k}.nt_groups (user_id, group_key, id) VALUES (?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            group_get: prep(format!("SELECT id FROM {k}.nt_groups WHERE user_id = ? AND group_key = ?")).await?,
            group_move: prep(format!(
                "UPDATE {k}.nt_groups SET id = ? WHERE user_id = ? AND group_key = ? IF id = ?"
            ))
            .await?,
            actor_claim: prep(format!(
                "INSERT INTO {k}.nt_group_actors (user_id, group_key, actor) VALUES (?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            user_get: prep(format!("SELECT state FROM {k}.nt_users WHERE user_id = ?")).await?,
            user_put: prep(format!("INSERT INTO {k}.nt_users (user_id, state) VALUES (?, ?)")).await?,
            sub_by_user_claim: prep(format!(
                "INSERT INTO {k}.nt_subs_by_user (user_id, object_type, object_id, reason, created_at_ms) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            sub_by_object_put: prep(format!(
                "INSERT INTO {k}.nt_subs_by_object (object_type, object_id, user_id, reason, since_ms) VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            sub_by_object_get: prep(format!(
                "SELECT since_ms FROM {k}.nt_subs_by_object WHERE object_type = ? AND object_id = ? AND user_id = ? AND reason = ?"
            ))
            .await?,
            sub_by_user_list_object: prep(format!(
                "SELECT reason FROM {k}.nt_subs_by_user WHERE user_id = ? AND object_type = ? AND object_id = ?"
            ))
            .await?,
            sub_by_user_delete: prep(format!(
                "DELETE FROM {k}.nt_subs_by_user WHERE user_id = ? AND object_type = ? AND object_id = ? AND reason = ?"
            ))
            .await?,
            sub_by_object_delete: prep(format!(
                "DELETE FROM {k}.nt_subs_by_object WHERE object_type = ? AND object_id = ? AND user_id = ? AND reason = ?"
            ))
            .await?,
            subs_of_user: prep(format!(
                "SELECT object_type, object_id, reason, created_at_ms FROM {k}.nt_subs_by_user WHERE user_id = ? LIMIT ?"
            ))
            .await?,
            subs_of_user_after_type: prep(format!(
                "SELECT object_type, object_id, reason, created_at_ms FROM {k}.nt_subs_by_user WHERE user_id = ? AND object_type > ? LIMIT ?"
            ))
            .await?,
            subs_of_user_after_object: prep(format!(
                "SELECT object_type, object_id, reason, created_at_ms FROM {k}.nt_subs_by_user WHERE user_id = ? AND object_type = ? AND object_id > ? LIMIT ?"
            ))
            .await?,
            subs_of_user_after_reason: prep(format!(
                "SELECT object_type, object_id, reason, created_at_ms FROM {k}.nt_subs_by_user WHERE user_id = ? AND object_type = ? AND object_id = ? AND reason > ? LIMIT ?"
            ))
            .await?,
            subscribers_page: prep(format!(
                "SELECT user_id, reason, since_ms FROM {k}.nt_subs_by_object WHERE object_type = ? AND object_id = ? AND user_id > ?"
            ))
            .await?,
            job_put: prep(format!("INSERT INTO {k}.nt_jobs (bucket, job_id, job) VALUES (0, ?, ?)")).await?,
            job_claim: prep(format!(
                "INSERT INTO {k}.nt_jobs (bucket, job_id, job) VALUES (0, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            job_get: prep(format!("SELECT job FROM {k}.nt_jobs WHERE bucket = 0 AND job_id = ?")).await?,
            job_delete: prep(format!("DELETE FROM {k}.nt_jobs WHERE bucket = 0 AND job_id = ?")).await?,
            job_list: prep(format!("SELECT job FROM {k}.nt_jobs WHERE bucket = 0 LIMIT ?")).await?,
            remind_log_put: prep(format!(
                "INSERT INTO {k}.nt_remind_log (object_type, object_id, action, occurred_at_ms, job_id, job) VALUES (?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            remind_log_after: prep(format!(
                "SELECT job FROM {k}.nt_remind_log WHERE object_type = ? AND object_id = ? AND action = ? AND occurred_at_ms > ? LIMIT ?"
            ))
            .await?,
        })
    }
}
