//! Where workers read and settle jobs: publish in process, or over gRPC.

use async_trait::async_trait;
use feed_core::{ApiError, FeedRef};

use feed_proto::events::v1::Job;
use feed_proto::publish::v1 as pb;
use feed_proto::publish::v1::OutboxItem;
use feed_proto::publish::v1::publish_service_client::PublishServiceClient;
use tonic::transport::Channel;

use crate::publisher::{LoadedJob, Publisher};

/// Where workers read and settle job records.
#[async_trait]
pub trait JobLedger: Send + Sync + 'static {
    /// The pending job; None once done.
    async fn load(&self, job_id: &str) -> Result<Option<LoadedJob>, ApiError>;
    /// Done, with the sub-jobs it spawned recorded in the same step.
    async fn complete(&self, job_id: &str, spawned: &[Job]) -> Result<(), ApiError>;
    /// A failed attempt; true when dead-lettered.
    async fn fail(&self, job_id: &str, error: &str) -> Result<bool, ApiError>;
    /// A feed's newest outbox entries, for backfill and purge.
    async fn outbox(&self, feed: &FeedRef, limit: usize) -> Result<Vec<OutboxItem>, ApiError>;
    /// Activities by id, as outbox items (sources and flags), for purges.
    async fn items(&self, ids: &[u64]) -> Result<Vec<OutboxItem>, ApiError>;
}

#[async_trait]
impl JobLedger for Publisher {
    async fn load(&self, job_id: &str) -> Result<Option<LoadedJob>, ApiError> {
        self.load_job(job_id).await
    }
    async fn complete(&self, job_id: &str, spawned: &[Job]) -> Result<(), ApiError> {
        self.complete_job(job_id, spawned).await
    }
    async fn fail(&self, job_id: &str, error: &str) -> Result<bool, ApiError> {
        self.fail_job(job_id, error, false).await
    }
    async fn outbox(&self, feed: &FeedRef, limit: usize) -> Result<Vec<OutboxItem>, ApiError> {
        self.outbox_items(feed, limit).await
    }
    async fn items(&self, ids: &[u64]) -> Result<Vec<OutboxItem>, ApiError> {
        Publisher::items(self, ids).await
    }
}

/// The ledger of a remote publish service (the `fanout-worker` binary).
#[derive(Clone)]
pub struct GrpcLedger {
    client: PublishServiceClient<Channel>,
    auth: feed_server::auth::ServiceToken,
    /// The reads (job, outbox) are asked again when refused or reset;
    /// CompleteJob and FailJob are not (a second FailJob counts twice).
    retry: std::sync::Arc<feed_server::RetryBudget>,
}

impl GrpcLedger {
    /// A client on `channel` sending `token`.
    pub fn new(channel: Channel, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: PublishServiceClient::new(channel)
                .max_decoding_message_size(feed_server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(feed_server::MAX_MESSAGE_BYTES),
            auth: feed_server::auth::ServiceToken::new(token)?,
            retry: std::sync::Arc::new(feed_server::RetryBudget::new("publish")),
        })
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        self.auth.request(msg)
    }
}

fn from_publish(s: tonic::Status) -> ApiError {
    ApiError::from_peer("publish", &s)
}

#[async_trait]
impl JobLedger for GrpcLedger {
    async fn load(&self, job_id: &str) -> Result<Option<LoadedJob>, ApiError> {
        match self
            .retry
            .idempotent(|| {
                let mut c = self.client.clone();
                let r = self.req(pb::GetJobRequest { job_id: job_id.into() });
                async move { c.get_job(r).await }
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                Ok(r.job.map(|job| LoadedJob {
                    job,
                    activity_deleted: r.activity_deleted,
                    attempts: r.attempts,
                }))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(from_publish(s)),
        }
    }

    async fn complete(&self, job_id: &str, spawned: &[Job]) -> Result<(), ApiError> {
        self.client
            .clone()
            .complete_job(self.req(pb::CompleteJobRequest {
                job_id: job_id.into(),
                spawned: spawned.to_vec(),
            }))
            .await
            .map_err(from_publish)?;
        Ok(())
    }

    async fn fail(&self, job_id: &str, error: &str) -> Result<bool, ApiError> {
        let r = self
            .client
            .clone()
            .fail_job(self.req(pb::FailJobRequest {
                job_id: job_id.into(),
                error: error.into(),
                permanent: false,
            }))
            .await
            .map_err(from_publish)?;
        Ok(r.into_inner().dead_lettered)
    }

    async fn outbox(&self, feed: &FeedRef, limit: usize) -> Result<Vec<OutboxItem>, ApiError> {
        let r = self
            .retry
            .idempotent(|| {
                let mut c = self.client.clone();
                let r = self.req(pb::ListOutboxRequest {
                    feed: feed.to_string(),
                    limit: limit.min(10_000) as u32,
                    ids: vec![],
                });
                async move { c.list_outbox(r).await }
            })
            .await
            .map_err(from_publish)?;
        Ok(r.into_inner().items)
    }

    async fn items(&self, ids: &[u64]) -> Result<Vec<OutboxItem>, ApiError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let r = self
            .retry
            .idempotent(|| {
                let mut c = self.client.clone();
                let r = self.req(pb::ListOutboxRequest {
                    feed: String::new(),
                    limit: 0,
                    ids: ids.to_vec(),
                });
                async move { c.list_outbox(r).await }
            })
            .await
            .map_err(from_publish)?;
        Ok(r.into_inner().items)
    }
}
