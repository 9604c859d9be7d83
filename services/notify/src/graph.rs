//! What notify needs from follow-graph (who follows and who blocks whom);
//! the shared follow-graph client provides it over gRPC.

use async_trait::async_trait;
use feed_clients::FollowGraphClient;
use feed_core::{ApiError, UserId};

/// How one recipient relates to the actor or sender of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecipientRelation {
    /// The recipient follows `user:<actor>`.
    pub recipient_follows: bool,
    /// A block stands either way.
    pub blocked: bool,
    /// The recipient mutes the actor.
    pub recipient_mutes: bool,
}

/// The follow graph, as notify uses it.
#[async_trait]
pub trait Relations: Send + Sync + 'static {
    /// Relations of each recipient to `actor`, in order.
    async fn relations(&self, actor: UserId, recipients: &[UserId]) -> Result<Vec<RecipientRelation>, ApiError>;
}

#[async_trait]
impl Relations for FollowGraphClient {
    async fn relations(&self, actor: UserId, recipients: &[UserId]) -> Result<Vec<RecipientRelation>, ApiError> {
        Ok(self
            .relationships(actor, recipients)
            .await?
            .into_iter()
            .map(|x| RecipientRelation {
                recipient_follows: x.followed_by,
                blocked: x.blocking || x.blocked_by,
                recipient_mutes: x.muted_by,
            })
            .collect())
    }
}
