//! Settling publish's event jobs: an activity event stays a pending job in
//! publish's durable store until notify has processed it, so losing the
//! event stream (a Redis flush) loses no event — publish's sweeper hands it
//! over again.

use async_trait::async_trait;
use feed_core::ApiError;
use feed_proto::publish::v1 as pb;
use feed_proto::publish::v1::publish_service_client::PublishServiceClient;
use tonic::transport::Channel;

/// Where notify reports an activity event as processed.
#[async_trait]
pub trait EventLedger: Send + Sync + 'static {
    /// Marks the event's job done (its event id is the job id).
    async fn done(&self, event_id: &str) -> Result<(), ApiError>;
    /// Records a failed attempt at the event's job; true when publish has
    /// now dead-lettered it (listed and replayed with fanout's dead jobs):
    /// after its attempts, or at once when the failure is `permanent`.
    async fn fail(&self, event_id: &str, error: &str, permanent: bool) -> Result<bool, ApiError>;
}

/// publish over gRPC, as notify uses it: CompleteJob and FailJob for
/// events, GetActivities for who may see an activity.
#[derive(Clone)]
pub struct GrpcPublish {
    pub(crate) client: PublishServiceClient<Channel>,
    pub(crate) auth: feed_server::auth::ServiceToken,
}

impl GrpcPublish {
    /// A client on `channel` sending `token`.
    pub fn new(channel: Channel, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: PublishServiceClient::new(channel)
                .max_decoding_message_size(feed_server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(feed_server::MAX_MESSAGE_BYTES),
            auth: feed_server::auth::ServiceToken::new(token)?,
        })
    }
}

#[async_trait]
impl EventLedger for GrpcPublish {
    async fn done(&self, event_id: &str) -> Result<(), ApiError> {
        self.client
            .clone()
            .complete_job(self.auth.request(pb::CompleteJobRequest {
                job_id: event_id.to_owned(),
                spawned: vec![],
            }))
            .await
            .map_err(|s| ApiError::from_peer("publish", &s))?;
        Ok(())
    }

    async fn fail(&self, event_id: &str, error: &str, permanent: bool) -> Result<bool, ApiError> {
        let r = self
            .client
            .clone()
            .fail_job(self.auth.request(pb::FailJobRequest {
                job_id: event_id.to_owned(),
                error: error.to_owned(),
                permanent,
            }))
            .await
            .map_err(|s| ApiError::from_peer("publish", &s))?;
        Ok(r.into_inner().dead_lettered)
    }
}
