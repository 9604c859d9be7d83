//! The notification store's tables, created by `--migrate`.

use feed_server::config::ScyllaConfig;

use super::{COMPONENT, SCHEMA_VERSION};
use crate::store::{REMIND_LOG_RETENTION_MS, StorageError};

fn schema(k: &str) -> Vec<String> {
    vec![
        format!("CREATE TABLE IF NOT EXISTS {k}.nt_events (event_id text PRIMARY KEY, id bigint)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.nt_announces (k int, id bigint, rec blob, PRIMARY KEY (k, id)) WITH CLUSTERING ORDER BY (id DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.nt_notes (user_id bigint, id bigint, rec blob, seq bigint, PRIMARY KEY (user_id, id)) WITH CLUSTERING ORDER BY (id DESC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.nt_groups (user_id bigint, group_key text, id bigint, PRIMARY KEY (user_id, group_key))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.nt_group_actors (user_id bigint, group_key text, actor bigint, PRIMARY KEY ((user_id, group_key), actor))"
        ),
        format!("CREATE TABLE IF NOT EXISTS {k}.nt_users (user_id bigint PRIMARY KEY, state blob)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.nt_subs_by_object (object_type text, object_id text, user_id bigint, reason text, since_ms bigint, PRIMARY KEY ((object_type, object_id), user_id, reason))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.nt_subs_by_user (user_id bigint, object_type text, object_id text, reason text, created_at_ms bigint, PRIMARY KEY (user_id, object_type, object_id, reason))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.nt_jobs (bucket int, job_id text, job blob, PRIMARY KEY (bucket, job_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.nt_remind_log (object_type text, object_id text, action text, occurred_at_ms bigint, job_id text, job blob, PRIMARY KEY ((object_type, object_id, action), occurred_at_ms, job_id)) WITH default_time_to_live = {}",
            REMIND_LOG_RETENTION_MS / 1000
        ),
    ]
}

/// Applies the schema (the `--migrate` step); safe to run again.
pub async fn migrate(cfg: &ScyllaConfig) -> Result<(), StorageError> {
    feed_cql::migrate(cfg, COMPONENT, SCHEMA_VERSION, &schema(&cfg.keyspace)).await
}
