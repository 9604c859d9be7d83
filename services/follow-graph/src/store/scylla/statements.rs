//! Every statement of the follow graph store, prepared once at start.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use crate::store::StoreError;

pub(super) struct Statements {
    pub(super) following_insert: PreparedStatement,
    pub(super) following_delete: PreparedStatement,
    pub(super) following_get: PreparedStatement,
    pub(super) following_page: PreparedStatement,
    pub(super) following_page_after: PreparedStatement,
    pub(super) followers_upsert: PreparedStatement,
    pub(super) followers_delete: PreparedStatement,
    pub(super) followers_page: PreparedStatement,
    pub(super) shards_insert: PreparedStatement,
    pub(super) shards_list: PreparedStatement,
    pub(super) version_get: PreparedStatement,
    pub(super) version_insert: PreparedStatement,
    pub(super) version_update: PreparedStatement,
    pub(super) feed_stats_get: PreparedStatement,
    pub(super) feed_stats_insert: PreparedStatement,
    pub(super) feed_stats_update: PreparedStatement,
    pub(super) user_stats_get: PreparedStatement,
    pub(super) user_stats_insert: PreparedStatement,
    pub(super) user_stats_update: PreparedStatement,
    pub(super) block_insert: PreparedStatement,
    pub(super) block_count: PreparedStatement,
    pub(super) mute_count: PreparedStatement,
    pub(super) block_delete: PreparedStatement,
    pub(super) block_get: PreparedStatement,
    pub(super) mute_insert: PreparedStatement,
    pub(super) mute_delete: PreparedStatement,
    pub(super) mute_get: PreparedStatement,
    pub(super) member_insert: PreparedStatement,
    pub(super) member_delete: PreparedStatement,
    pub(super) member_get: PreparedStatement,
    pub(super) member_page: PreparedStatement,
    pub(super) log_insert: PreparedStatement,
    pub(super) log_page: PreparedStatement,
    pub(super) log_drop_bucket: PreparedStatement,
    pub(super) log_drop_below: PreparedStatement,
}

impl Statements {
    /// Prepares every statement against keyspace `k`.
    pub(super) async fn prepare(session: &Session, k: &str) -> Result<Self, StoreError> {
        let prep = |q: String| async move { Ok::<_, StoreError>(feed_cql::prepare(session, q).await?) };
        Ok(Self {
            following_insert: prep(format!("INSERT INTO {k}.fg_following (user_id, feed) VALUES (?, ?) IF NOT EXISTS")).await?,
            following_delete: prep(format!("DELETE FROM {k}.fg_following WHERE user_id = ? AND feed = ? IF EXISTS")).await?,
            following_get: prep(format!("SELECT feed FROM {k}.fg_following WHERE user_id = ? AND feed = ?")).await?,
            following_page: prep(format!("SELECT feed FROM {k}.fg_following WHERE user_id = ? LIMIT ?")).await?,
            following_page_after: prep(format!("SELECT feed FROM {k}.fg_following WHERE user_id = ? AND feed > ? LIMIT ?")).await?,
            followers_upsert: prep(format!(
                "INSERT INTO {k}.fg_followers (feed, shard, follower_id, muted) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            followers_delete: prep(format!(
                "DELETE FROM {k}.fg_followers WHERE feed = ? AND shard = ? AND follower_id = ?"
            ))
            .await?,
            followers_page: prep(format!(
                "SELECT follower_id, muted FROM {k}.fg_followers WHERE feed = ? AND shard = ? AND follower_id > ? LIMIT ?"
            ))
            .await?,
            shards_insert: prep(format!("INSERT INTO {k}.fg_shards (feed, shard) VALUES (?, ?)")).await?,
            shards_list: prep(format!("SELECT shard FROM {k}.fg_shards WHERE feed = ?")).await?,
            version_get: prep(format!("SELECT version FROM {k}.fg_edge_versions WHERE user_id = ? AND feed = ?")).await?,
            version_insert: prep(format!(
                "INSERT INTO {k}.fg_edge_versions (user_id, feed, version) VALUES (?, ?, 1) IF NOT EXISTS"
            ))
            .await?,
            version_update: prep(format!(
                "UPDATE {k}.fg_edge_versions SET version = ? WHERE user_id = ? AND feed = ? IF version = ?"
            ))
            .await?,
            feed_stats_get: prep(format!("SELECT followers, celebrity FROM {k}.fg_feed_stats WHERE feed = ?")).await?,
            feed_stats_insert: prep(format!(
                "INSERT INTO {k}.fg_feed_stats (feed, followers, celebrity) VALUES (?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            feed_stats_update: prep(format!(
                "UPDATE {k}.fg_feed_stats SET followers = ?, celebrity = ? WHERE feed = ? IF followers = ?"
            ))
            .await?,
            user_stats_get: prep(format!("SELECT following, graph_version FROM {k}.fg_user_stats WHERE user_id = ?")).await?,
            user_stats_insert: prep(format!(
                "INSERT INTO {k}.fg_user_stats (user_id, following, graph_version) VALUES (?, ?, 1) IF NOT EXISTS"
            ))
            .await?,
            user_stats_update: prep(format!(
                "UPDATE {k}.fg_user_stats SET following = ?, graph_version = ? WHERE user_id = ? IF graph_version = ?"
            ))
            .await?,
            block_insert: prep(format!("INSERT INTO {k}.fg_blocks (user_id, target_id) VALUES (?, ?) IF NOT EXISTS")).await?,
            block_count: prep(format!("SELECT target_id FROM {k}.fg_blocks WHERE user_id = ? LIMIT ?")).await?,
            mute_count: prep(format!("SELECT target_id FROM {k}.fg_mutes WHERE user_id = ? LIMIT ?")).await?,
            block_delete: prep(format!("DELETE FROM {k}.fg_blocks WHERE user_id = ? AND target_id = ? IF EXISTS")).await?,
            block_get: prep(format!("SELECT target_id FROM {k}.fg_blocks WHERE user_id = ? AND target_id = ?")).await?,
            mute_insert: prep(format!("INSERT INTO {k}.fg_mutes (user_id, target_id) VALUES (?, ?) IF NOT EXISTS")).await?,
            mute_delete: prep(format!("DELETE FROM {k}.fg_mutes WHERE user_id = ? AND target_id = ? IF EXISTS")).await?,
            mute_get: prep(format!("SELECT target_id FROM {k}.fg_mutes WHERE user_id = ? AND target_id = ?")).await?,
            member_insert: prep(format!("INSERT INTO {k}.fg_members (feed, user_id) VALUES (?, ?) IF NOT EXISTS")).await?,
            member_delete: prep(format!("DELETE FROM {k}.fg_members WHERE feed = ? AND user_id = ? IF EXISTS")).await?,
            member_get: prep(format!("SELECT user_id FROM {k}.fg_members WHERE feed = ? AND user_id = ?")).await?,
            member_page: prep(format!(
                "SELECT user_id FROM {k}.fg_members WHERE feed = ? AND user_id > ? LIMIT ?"
            ))
            .await?,
            log_insert: prep(format!("INSERT INTO {k}.fg_edge_log (bucket, seq, entry) VALUES (?, ?, ?)")).await?,
            log_drop_bucket: prep(format!("DELETE FROM {k}.fg_edge_log WHERE bucket = ?")).await?,
            log_drop_below: prep(format!("DELETE FROM {k}.fg_edge_log WHERE bucket = ? AND seq < ?")).await?,
            log_page: prep(format!("SELECT entry FROM {k}.fg_edge_log WHERE bucket = ? AND seq > ? LIMIT ?")).await?,
        })
    }
}
