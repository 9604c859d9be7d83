//! What notify needs from follow-graph (who follows and who blocks whom),
//! and its gRPC client.

use async_trait::async_trait;
use feed_core::{ApiError, UserId};
use feed_proto::followgraph::v1 as fg;
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use tonic::transport::Channel;

/// How one recipient relates to the actor or sender of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Relation {
    /// The recipient follows `user:<actor>`.
    pub recipient_follows: bool,
    /// A block stands either way.
    pub blocked: bool,
    /// The recipient mutes the actor.
    pub recipient_mutes: bool,
}

/// The follow graph, as notify uses it.
#[async_trait]
pub trait Graph: Send + Sync + 'static {
    /// Relations of each recipient to `actor`, in order.
    async fn relations(&self, actor: UserId, recipients: &[UserId]) -> Result<Vec<Relation>, ApiError>;
}

/// follow-graph over gRPC, with an internal token.
#[derive(Clone)]
pub struct GrpcGraph {
    client: FollowGraphServiceClient<Channel>,
    auth: feed_server::auth::ServiceToken,
}

/// follow-graph answers at most this many targets per call.
const BATCH: usize = 100;

impl GrpcGraph {
    /// A client on `channel` sending `token`.
    pub fn new(channel: Channel, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: FollowGraphServiceClient::new(channel),
            auth: feed_server::auth::ServiceToken::new(token)?,
        })
    }
}

#[async_trait]
impl Graph for GrpcGraph {
    async fn relations(&self, actor: UserId, recipients: &[UserId]) -> Result<Vec<Relation>, ApiError> {
        let mut out = Vec::with_capacity(recipients.len());
        for chunk in recipients.chunks(BATCH) {
            let resp = self
                .client
                .clone()
                .get_relationships(self.auth.request(fg::GetRelationshipsRequest {
                    user_id: actor,
                    target_user_ids: chunk.to_vec(),
                    feeds: vec![],
                }))
                .await
                .map_err(|s| ApiError::from_peer("follow-graph", &s))?
                .into_inner();
            // Answered in request order; looked up by id to be safe.
            for r in chunk {
                let rel = resp.relationships.iter().find(|x| x.target_user_id == *r);
                out.push(rel.map_or(Relation::default(), |x| Relation {
                    recipient_follows: x.followed_by,
                    blocked: x.blocking || x.blocked_by,
                    recipient_mutes: x.muted_by,
                }));
            }
        }
        Ok(out)
    }
}
