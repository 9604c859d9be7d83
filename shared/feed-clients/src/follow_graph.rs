//! follow-graph over gRPC, with an internal token.

use feed_core::{ApiError, FeedRef, UserId};
use feed_proto::events::v1::EdgeChange;
use feed_proto::followgraph::v1 as fg;
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use std::sync::Arc;

use feed_server::RetryBudget;
use tonic::transport::Channel;

use crate::Coalesced;

/// Feeds or users follow-graph answers per GetRelationships / GetCounts call.
pub const FOLLOW_GRAPH_BATCH: usize = 100;
/// Edges per GetEdgeVersions call.
const VERSION_BATCH: usize = 1000;
/// Feeds per ListFollowing page.
const FOLLOWING_PAGE: u32 = 1000;

/// A follower as fanout sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Follower {
    /// The follower.
    pub user: UserId,
    /// The follower mutes the feed's owner (hidden on read, still pushed).
    pub muted: bool,
}

/// The follow-graph client every service uses.
/// A user's graph version and graph token (0: none issued; see
/// `feed_inbox::graph_token`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphVersion {
    /// Raised by every change to the user's follows, mutes and blocks.
    pub version: u64,
    /// Names the graph until a change withdraws it.
    pub token: u64,
}

#[derive(Clone)]
pub struct FollowGraphClient {
    client: FollowGraphServiceClient<Channel>,
    channel: Channel,
    auth: feed_server::auth::ServiceToken,
    /// Graph versions asked concurrently go in one call (a home read asks one).
    versions: Coalesced<UserId, GraphVersion>,
    /// Every call here is a read: a refused or reset one is asked again.
    retry: Arc<RetryBudget>,
}

fn peer(s: tonic::Status) -> ApiError {
    ApiError::from_peer("follow-graph", &s)
}

/// follow-graph only stores validated feed names: one it returns that does
/// not parse is its fault, reported rather than dropped.
fn feed_of(raw: &str) -> Result<FeedRef, ApiError> {
    FeedRef::parse(raw).map_err(|e| ApiError::Internal(format!("follow-graph returned feed {raw:?}: {e}")))
}

impl FollowGraphClient {
    /// A client on `channel` sending `token`.
    pub fn new(channel: Channel, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: FollowGraphServiceClient::new(channel.clone())
                .max_decoding_message_size(feed_server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(feed_server::MAX_MESSAGE_BYTES),
            channel,
            auth: feed_server::auth::ServiceToken::new(token)?,
            versions: Coalesced::new(VERSION_BATCH),
            retry: Arc::new(RetryBudget::new("follow-graph")),
        })
    }

    /// A client balanced over `clients.follow_graph_url`, sending `clients.token`.
    pub fn from_config(cfg: &feed_server::FeedConfig) -> anyhow::Result<Self> {
        Self::new(
            feed_server::client::peer(&cfg.clients, &cfg.clients.follow_graph_url)?,
            &cfg.clients.token,
        )
    }

    /// Readiness of a split process on follow-graph answering.
    pub fn readiness(&self) -> feed_server::Readiness {
        feed_server::client::peer_ready("follow-graph", self.channel.clone(), crate::FOLLOW_GRAPH_SERVICE)
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        self.auth.request(msg)
    }

    /// Counts and celebrity flags of `feeds`, in order.
    pub async fn feed_counts(&self, feeds: &[FeedRef]) -> Result<Vec<fg::FeedCounts>, ApiError> {
        let mut out = Vec::with_capacity(feeds.len());
        for chunk in feeds.chunks(FOLLOW_GRAPH_BATCH) {
            let resp = self
                .retry
                .idempotent(|| {
                    let mut c = self.client.clone();
                    let r = self.req(fg::GetCountsRequest {
                        feeds: chunk.iter().map(|f| f.to_string()).collect(),
                        user_ids: vec![],
                    });
                    async move { c.get_counts(r).await }
                })
                .await
                .map_err(peer)?;
            out.extend(resp.into_inner().feeds);
        }
        Ok(out)
    }

    /// `user`'s relationship to each of `targets`, in order (a target
    /// follow-graph leaves out reads as no relationship).
    pub async fn relationships(&self, user: UserId, targets: &[UserId]) -> Result<Vec<fg::Relationship>, ApiError> {
        let mut out = Vec::with_capacity(targets.len());
        for chunk in targets.chunks(FOLLOW_GRAPH_BATCH) {
            let resp = self
                .retry
                .idempotent(|| {
                    let mut c = self.client.clone();
                    let r = self.req(fg::GetRelationshipsRequest {
                        user_id: user,
                        target_user_ids: chunk.to_vec(),
                        feeds: vec![],
                    });
                    async move { c.get_relationships(r).await }
                })
                .await
                .map_err(peer)?
                .into_inner();
            for target in chunk {
                let found = resp.relationships.iter().find(|r| r.target_user_id == *target);
                out.push(found.cloned().unwrap_or(fg::Relationship {
                    target_user_id: *target,
                    ..Default::default()
                }));
            }
        }
        Ok(out)
    }

    /// Whether `user` follows each of `feeds`, in order.
    pub async fn follows(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError> {
        Ok(self
            .feed_relations(user, feeds)
            .await?
            .into_iter()
            .map(|f| f.following)
            .collect())
    }

    /// Whether `user` is a member of each of `feeds`, in order.
    pub async fn members(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError> {
        Ok(self
            .feed_relations(user, feeds)
            .await?
            .into_iter()
            .map(|f| f.member)
            .collect())
    }

    async fn feed_relations(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<fg::FeedRelationship>, ApiError> {
        let mut out = Vec::with_capacity(feeds.len());
        for chunk in feeds.chunks(FOLLOW_GRAPH_BATCH) {
            let resp = self
                .retry
                .idempotent(|| {
                    let mut c = self.client.clone();
                    let r = self.req(fg::GetRelationshipsRequest {
                        user_id: user,
                        target_user_ids: vec![],
                        feeds: chunk.iter().map(|f| f.to_string()).collect(),
                    });
                    async move { c.get_relationships(r).await }
                })
                .await
                .map_err(peer)?;
            out.extend(resp.into_inner().feeds);
        }
        Ok(out)
    }

    /// `user`'s graph version (any change to their follows, their mutes or
    /// a block either way raises it) and graph token.
    /// Lookups made while another is in flight share the next call (see
    /// [`Coalesced`]: still read after this call began).
    pub async fn graph_version(&self, user: UserId) -> Result<GraphVersion, ApiError> {
        let this = self.clone();
        self.versions
            .get(user, move |users| {
                let this = this.clone();
                async move { this.graph_versions(users).await }
            })
            .await
    }

    /// The graph versions of `users` (at most [`VERSION_BATCH`]), in order.
    async fn graph_versions(&self, users: Vec<UserId>) -> Result<Vec<GraphVersion>, ApiError> {
        let versions = self
            .retry
            .idempotent(|| {
                let mut c = self.client.clone();
                let r = self.req(fg::GetGraphVersionsRequest {
                    user_ids: users.clone(),
                });
                async move { c.get_graph_versions(r).await }
            })
            .await
            .map_err(peer)?
            .into_inner()
            .versions;
        let by_user: std::collections::HashMap<UserId, GraphVersion> = versions
            .iter()
            .map(|v| {
                (
                    v.user_id,
                    GraphVersion {
                        version: v.version,
                        token: v.token,
                    },
                )
            })
            .collect();
        Ok(users
            .iter()
            .map(|u| by_user.get(u).copied().unwrap_or_default())
            .collect())
    }

    /// Every feed `user` follows (bounded by follow-graph's max_following).
    pub async fn following(&self, user: UserId) -> Result<Vec<FeedRef>, ApiError> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .retry
                .idempotent(|| {
                    let mut c = self.client.clone();
                    let r = self.req(fg::ListFollowingRequest {
                        user_id: user,
                        page_size: FOLLOWING_PAGE,
                        page_token: token.clone(),
                    });
                    async move { c.list_following(r).await }
                })
                .await
                .map_err(peer)?
                .into_inner();
            for f in &page.feeds {
                out.push(feed_of(f)?);
            }
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    /// follow-graph's edge change log after `after_seq`, read as `reader`
    /// (follow-graph trims what every named reader has passed).
    pub async fn edge_changes(&self, reader: &str, after_seq: u64, limit: u32) -> Result<Vec<EdgeChange>, ApiError> {
        let resp = self
            .retry
            .idempotent(|| {
                let mut c = self.client.clone();
                let r = self.req(fg::ListEdgeChangesRequest {
                    after_seq,
                    limit,
                    reader: reader.to_owned(),
                });
                async move { c.list_edge_changes(r).await }
            })
            .await
            .map_err(peer)?;
        Ok(resp.into_inner().changes)
    }

    /// Current (version, following) of edges, in order.
    pub async fn edge_states(&self, edges: &[(UserId, FeedRef)]) -> Result<Vec<(u64, bool)>, ApiError> {
        let mut out = Vec::with_capacity(edges.len());
        for chunk in edges.chunks(VERSION_BATCH) {
            let keys: Vec<fg::EdgeKey> = chunk
                .iter()
                .map(|(u, f)| fg::EdgeKey {
                    follower_id: *u,
                    feed: f.to_string(),
                })
                .collect();
            let resp = self
                .retry
                .idempotent(|| {
                    let mut c = self.client.clone();
                    let r = self.req(fg::GetEdgeVersionsRequest { edges: keys.clone() });
                    async move { c.get_edge_versions(r).await }
                })
                .await
                .map_err(peer)?;
            out.extend(
                resp.into_inner()
                    .edges
                    .into_iter()
                    .map(|e| (e.edge_version, e.following)),
            );
        }
        Ok(out)
    }

    /// The follower shards of a feed.
    pub async fn shards(&self, feed: &FeedRef) -> Result<Vec<u64>, ApiError> {
        let resp = self
            .retry
            .idempotent(|| {
                let mut c = self.client.clone();
                let r = self.req(fg::ListFollowerShardsRequest { feed: feed.to_string() });
                async move { c.list_follower_shards(r).await }
            })
            .await
            .map_err(peer)?;
        Ok(resp.into_inner().shards.into_iter().map(|s| s.shard).collect())
    }

    /// One page of a shard's followers after `after`; true when the shard is exhausted.
    pub async fn page(
        &self,
        feed: &FeedRef,
        shard: u64,
        after: UserId,
        limit: u32,
    ) -> Result<(Vec<Follower>, bool), ApiError> {
        let resp = self
            .retry
            .idempotent(|| {
                let mut c = self.client.clone();
                let r = self.req(fg::PageFollowersRequest {
                    feed: feed.to_string(),
                    shard,
                    after_user_id: after,
                    limit,
                });
                async move { c.page_followers(r).await }
            })
            .await
            .map_err(peer)?
            .into_inner();
        let followers = resp
            .followers
            .into_iter()
            .map(|f| Follower {
                user: f.user_id,
                muted: f.muted,
            })
            .collect();
        Ok((followers, resp.done))
    }
}
