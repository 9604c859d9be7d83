//! What publish and the fanout workers need from follow-graph, and its gRPC client.

use async_trait::async_trait;
use feed_core::{ApiError, FeedRef, UserId};
use feed_proto::events::v1::EdgeChange;
use feed_proto::followgraph::v1 as fg;
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use tonic::transport::Channel;

/// A follower as fanout sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Follower {
    /// The follower.
    pub user: UserId,
    /// The follower mutes the feed's owner (hidden on read, still pushed).
    pub muted: bool,
}

/// The follow graph, as publish uses it.
#[async_trait]
pub trait Graph: Send + Sync + 'static {
    /// Celebrity flags of feeds, in order.
    async fn celebrity(&self, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError>;
    /// Whether `user` follows each feed, in order.
    async fn follows(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError>;
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

/// follow-graph over gRPC, with an internal token.
#[derive(Clone)]
pub struct GrpcGraph {
    client: FollowGraphServiceClient<Channel>,
    auth: feed_server::auth::ServiceToken,
}

fn from_graph(s: tonic::Status) -> ApiError {
    ApiError::from_peer("follow-graph", &s)
}

impl GrpcGraph {
    /// A client on `channel` sending `token`.
    pub fn new(channel: Channel, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: FollowGraphServiceClient::new(channel),
            auth: feed_server::auth::ServiceToken::new(token)?,
        })
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        self.auth.request(msg)
    }
}

#[async_trait]
impl Graph for GrpcGraph {
    async fn celebrity(&self, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError> {
        let resp = self
            .client
            .clone()
            .get_counts(self.req(fg::GetCountsRequest {
                feeds: feeds.iter().map(|f| f.to_string()).collect(),
                user_ids: vec![],
            }))
            .await
            .map_err(from_graph)?;
        Ok(resp.into_inner().feeds.into_iter().map(|c| c.celebrity).collect())
    }

    async fn follows(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError> {
        let resp = self
            .client
            .clone()
            .get_relationships(self.req(fg::GetRelationshipsRequest {
                user_id: user,
                target_user_ids: vec![],
                feeds: feeds.iter().map(|f| f.to_string()).collect(),
            }))
            .await
            .map_err(from_graph)?;
        Ok(resp.into_inner().feeds.into_iter().map(|f| f.following).collect())
    }

    async fn edge_changes(&self, after_seq: u64, limit: u32) -> Result<Vec<EdgeChange>, ApiError> {
        let resp = self
            .client
            .clone()
            .list_edge_changes(self.req(fg::ListEdgeChangesRequest { after_seq, limit }))
            .await
            .map_err(from_graph)?;
        Ok(resp.into_inner().changes)
    }

    async fn edge_states(&self, edges: &[(UserId, FeedRef)]) -> Result<Vec<(u64, bool)>, ApiError> {
        let resp = self
            .client
            .clone()
            .get_edge_versions(
                self.req(fg::GetEdgeVersionsRequest {
                    edges: edges
                        .iter()
                        .map(|(u, f)| fg::EdgeKey {
                            follower_id: *u,
                            feed: f.to_string(),
                        })
                        .collect(),
                }),
            )
            .await
            .map_err(from_graph)?;
        Ok(resp
            .into_inner()
            .edges
            .into_iter()
            .map(|e| (e.edge_version, e.following))
            .collect())
    }

    async fn following(&self, user: UserId) -> Result<Vec<FeedRef>, ApiError> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .client
                .clone()
                .list_following(self.req(fg::ListFollowingRequest {
                    user_id: user,
                    page_size: 1000,
                    page_token: token,
                }))
                .await
                .map_err(from_graph)?
                .into_inner();
            for f in page.feeds {
                out.push(FeedRef::parse(&f).map_err(|e| ApiError::Internal(format!("follow-graph feed {f:?}: {e}")))?);
            }
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    async fn shards(&self, feed: &FeedRef) -> Result<Vec<u64>, ApiError> {
        let resp = self
            .client
            .clone()
            .list_follower_shards(self.req(fg::ListFollowerShardsRequest { feed: feed.to_string() }))
            .await
            .map_err(from_graph)?;
        Ok(resp.into_inner().shards.into_iter().map(|s| s.shard).collect())
    }

    async fn page(
        &self,
        feed: &FeedRef,
        shard: u64,
        after: UserId,
        limit: u32,
    ) -> Result<(Vec<Follower>, bool), ApiError> {
        let resp = self
            .client
            .clone()
            .page_followers(self.req(fg::PageFollowersRequest {
                feed: feed.to_string(),
                shard,
                after_user_id: after,
                limit,
            }))
            .await
            .map_err(from_graph)?
            .into_inner();
        Ok((
            resp.followers
                .into_iter()
                .map(|f| Follower {
                    user: f.user_id,
                    muted: f.muted,
                })
                .collect(),
            resp.done,
        ))
    }
}
