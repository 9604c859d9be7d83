//! The follow graph store's tables, created by `--migrate`.

use feed_server::config::ScyllaConfig;

use super::{COMPONENT, SCHEMA_VERSION};
use crate::store::StoreError;

fn schema(keyspace: &str) -> Vec<String> {
    let k = keyspace;
    vec![
        format!("CREATE TABLE IF NOT EXISTS {k}.fg_following (user_id bigint, feed text, PRIMARY KEY (user_id, feed))"),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.fg_followers (feed text, shard bigint, follower_id bigint, muted boolean, PRIMARY KEY ((feed, shard), follower_id))"
        ),
        format!("CREATE TABLE IF NOT EXISTS {k}.fg_shards (feed text, shard bigint, PRIMARY KEY (feed, shard))"),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.fg_edge_versions (user_id bigint, feed text, version bigint, PRIMARY KEY ((user_id, feed)))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.fg_feed_stats (feed text PRIMARY KEY, followers bigint, celebrity boolean)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.fg_user_stats (user_id bigint PRIMARY KEY, following bigint, graph_version bigint)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.fg_blocks (user_id bigint, target_id bigint, PRIMARY KEY (user_id, target_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.fg_mutes (user_id bigint, target_id bigint, PRIMARY KEY (user_id, target_id))"
        ),
        // Members of member-only feeds (group:, company:), by feed.
        format!("CREATE TABLE IF NOT EXISTS {k}.fg_members (feed text, user_id bigint, PRIMARY KEY (feed, user_id))"),
        // One partition per hour of changes, in position order.
        format!(
            "CREATE TABLE IF NOT EXISTS {k}.fg_edge_log (bucket bigint, seq bigint, entry blob, PRIMARY KEY (bucket, seq))"
        ),
    ]
}

/// Applies the schema (the `--migrate` step); safe to run again.
pub async fn migrate(cfg: &ScyllaConfig) -> Result<(), StoreError> {
    Ok(feed_cql::migrate(cfg, COMPONENT, SCHEMA_VERSION, &schema(&cfg.keyspace)).await?)
}
