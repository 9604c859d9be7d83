//! What publish and the fanout workers need from follow-graph; the shared
//! follow-graph client provides it over gRPC.

use async_trait::async_trait;
use feed_clients::FollowGraphClient;
use feed_core::{ApiError, FeedRef, UserId};
use feed_proto::events::v1::EdgeChange;

pub use feed_clients::Follower;

/// publish's name as an edge log reader: every replica shares one cursor,
/// so they are one reader.
const EDGE_LOG_READER: &str = "publish";

/// How far a feed's posts travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reach {
    /// Pulled at read time by its followers (nothing is pushed).
    pub celebrity: bool,
    /// Its followers.
    pub followers: u64,
}

/// The follow graph, as publish uses it.
#[async_trait]
pub trait Graph: Send + Sync + 'static {
    /// Celebrity flags and follower counts of feeds, in order.
    async fn reach(&self, feeds: &[FeedRef]) -> Result<Vec<Reach>, ApiError>;
    /// Whether `user` follows each feed, in order.
    async fn follows(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError>;
    /// Whether `user` is a member of each feed (may post there), in order.
    async fn members(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError>;
    /// Whether a block stands between `user` and each of `others` (either
    /// way), in order.
    async fn blocked(&self, user: UserId, others: &[UserId]) -> Result<Vec<bool>, ApiError>;
    /// follow-graph's edge change log after `after_seq`.
    async fn edge_changes(&self, after_seq: u64, limit: u32) -> Result<Vec<EdgeChange>, ApiError>;
    /// Current (version, following) of edges, in order.
    async fn edge_states(&self, edges: &[(UserId, FeedRef)]) -> Result<Vec<(u64, bool)>, ApiError>;
    /// Every feed `user` follows (bounded by follow-graph's max_following).
    async fn following(&self, user: UserId) -> Result<Vec<FeedRef>, ApiError>;
    /// The follower shards of a feed.
    async fn shards(&self, feed: &FeedRef) -> Result<Vec<u64>, ApiError>;
    /// One page of a shard after `after`; true when the shard is exhausted.
    async fn page(
        &self,
        feed: &FeedRef,
        shard: u64,
        after: UserId,
        limit: u32,
    ) -> Result<(Vec<Follower>, bool), ApiError>;
}

#[async_trait]
impl Graph for FollowGraphClient {
    async fn reach(&self, feeds: &[FeedRef]) -> Result<Vec<Reach>, ApiError> {
        Ok(self
            .feed_counts(feeds)
            .await?
            .into_iter()
            .map(|c| Reach {
                celebrity: c.celebrity,
                followers: c.followers,
            })
            .collect())
    }

    async fn follows(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError> {
        FollowGraphClient::follows(self, user, feeds).await
    }

    async fn members(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError> {
        FollowGraphClient::members(self, user, feeds).await
    }

    async fn blocked(&self, user: UserId, others: &[UserId]) -> Result<Vec<bool>, ApiError> {
        Ok(FollowGraphClient::relationships(self, user, others)
            .await?
            .into_iter()
            .map(|r| r.blocking || r.blocked_by)
            .collect())
    }

    async fn edge_changes(&self, after_seq: u64, limit: u32) -> Result<Vec<EdgeChange>, ApiError> {
        FollowGraphClient::edge_changes(self, EDGE_LOG_READER, after_seq, limit).await
    }

    async fn edge_states(&self, edges: &[(UserId, FeedRef)]) -> Result<Vec<(u64, bool)>, ApiError> {
        FollowGraphClient::edge_states(self, edges).await
    }

    async fn following(&self, user: UserId) -> Result<Vec<FeedRef>, ApiError> {
        FollowGraphClient::following(self, user).await
    }

    async fn shards(&self, feed: &FeedRef) -> Result<Vec<u64>, ApiError> {
        FollowGraphClient::shards(self, feed).await
    }

    async fn page(
        &self,
        feed: &FeedRef,
        shard: u64,
        after: UserId,
        limit: u32,
    ) -> Result<(Vec<Follower>, bool), ApiError> {
        FollowGraphClient::page(self, feed, shard, after, limit).await
    }
}
