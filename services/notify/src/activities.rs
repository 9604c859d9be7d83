//! What notify asks publish about activities: whether a user may see one
//! (its visibility, a block either way), before letting them subscribe to
//! it and so hear about its likes and comments.

use async_trait::async_trait;
use feed_core::{ApiError, UserId};
use feed_proto::publish::v1 as pb;

use crate::ledger::GrpcPublish;

/// Activities as notify uses them.
#[async_trait]
pub trait Activities: Send + Sync + 'static {
    /// Whether `viewer` may see activity `id`; false when it does not exist
    /// or is deleted.
    async fn visible_to(&self, viewer: UserId, id: u64) -> Result<bool, ApiError>;
}

/// publish's GetActivities, asked on the viewer's behalf.
#[async_trait]
impl Activities for GrpcPublish {
    async fn visible_to(&self, viewer: UserId, id: u64) -> Result<bool, ApiError> {
        let found = self
            .client
            .clone()
            .get_activities(self.auth.request(pb::GetActivitiesRequest {
                ids: vec![id],
                include_deleted: false,
                viewer_id: viewer,
            }))
            .await
            .map_err(|s| ApiError::from_peer("publish", &s))?
            .into_inner();
        Ok(found.activities.iter().any(|a| a.id == id))
    }
}
