//! The activity store's tables, created by `publish --migrate`.

use feed_server::config::ScyllaConfig;

use super::{COMPONENT, SCHEMA_VERSION};
use crate::store::StorageError;

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
        // Jobs by the minute they were last written: the sweeper reads the
        // minutes gone stale, not the whole jobs table. Rows of finished or
        // rewritten jobs are dropped when a sweep meets them.
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.pub_jobs_due (bucket bigint, job_id text, PRIMARY KEY (bucket, job_id))"
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
        // One partition: dead-lettered fanout jobs by source feed (few; a
        // read merges only the followed ones, from their lowest id).
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.pub_stalled_fanout (p int, feed text, activity_id bigint, job_id text, PRIMARY KEY (p, feed, activity_id, job_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.pub_pending_backfill (follower bigint, job_id text, feed text, PRIMARY KEY (follower, job_id))"
        ),
    ]
}

/// Applies the schema (the `--migrate` step); safe to run again.
pub async fn migrate(cfg: &ScyllaConfig) -> Result<(), StorageError> {
    feed_cql::migrate(cfg, COMPONENT, SCHEMA_VERSION, &schema(&cfg.keyspace)).await
}
