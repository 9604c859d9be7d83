//! timeline's sources in process: feedd hands the timeline the domain
//! services themselves, so a home read makes no loopback gRPC calls (the
//! split deployment reaches the same services through `timeline::GrpcSources`).

use std::sync::Arc;

use feed_core::{ApiError, FeedRef, UserId};
use feed_inbox::InboxStore;
use feed_proto::SharedActivity;
use follow_graph::FollowGraph;
use publish::Publisher;
use timeline::sources::{Entry, ReaderRelation, Round, RoundRequest};

/// follow-graph and publish called directly.
#[derive(Clone)]
pub struct InProcessSources {
    graph: FollowGraph,
    publisher: Publisher,
    inbox: Arc<dyn InboxStore>,
}

/// Follows listed per call; follow-graph caps a user's follows anyway.
const PAGE: usize = 1000;

impl InProcessSources {
    /// Sources over the services of this process; `inbox` is where rebuilds write.
    pub fn new(graph: FollowGraph, publisher: Publisher, inbox: Arc<dyn InboxStore>) -> Self {
        Self {
            graph,
            publisher,
            inbox,
        }
    }
}

#[async_trait::async_trait]
impl timeline::Sources for InProcessSources {
    async fn following(&self, user: UserId) -> Result<Vec<FeedRef>, ApiError> {
        let mut out: Vec<FeedRef> = Vec::new();
        loop {
            let (page, more) = self.graph.list_following(user, out.last(), PAGE).await?;
            out.extend(page);
            if !more {
                return Ok(out);
            }
        }
    }

    async fn relations(&self, user: UserId, actors: &[UserId]) -> Result<Vec<ReaderRelation>, ApiError> {
        Ok(self
            .graph
            .blocks_and_mutes(user, actors)
            .await?
            .into_iter()
            .map(|(blocked, muted)| ReaderRelation { blocked, muted })
            .collect())
    }

    async fn read_outboxes(
        &self,
        feeds: &[FeedRef],
        before: Option<u64>,
        limit: usize,
        pull_only: bool,
    ) -> Result<(Vec<Entry>, bool), ApiError> {
        feed_inbox::home::Outboxes::read_outboxes(&self.publisher, feeds, before, limit, pull_only).await
    }

    async fn hydrate(&self, ids: &[u64]) -> Result<Vec<SharedActivity>, ApiError> {
        feed_inbox::home::Outboxes::hydrate(&self.publisher, ids).await
    }

    async fn gather(&self, req: RoundRequest<'_>) -> Result<Round, ApiError> {
        feed_inbox::home::gather(&self.publisher, self.inbox.as_ref(), req).await
    }

    async fn rebuild(&self, user: UserId) -> Result<(), ApiError> {
        self.publisher.rebuild(self.inbox.as_ref(), user).await?;
        Ok(())
    }
}

/// notify's view of activities, asked of publish directly.
#[derive(Clone)]
pub struct InProcessActivities(pub Publisher);

#[async_trait::async_trait]
impl notify::Activities for InProcessActivities {
    async fn visible_to(&self, viewer: UserId, id: u64) -> Result<bool, ApiError> {
        let (found, _) = self
            .0
            .get_for(publish::publisher::Reader::User(Some(viewer)), &[id], false)
            .await?;
        Ok(!found.is_empty())
    }
}
