//! In-process stand-ins for tests that must control what the network hides:
//! follow-graph's domain service behind publish's `Graph` trait, and a job
//! queue the test drains in the order it chooses.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use feed_core::{ApiError, FeedRef, UserId};
use feed_proto::events::v1::{EdgeChange, Job};
use follow_graph::FollowGraph;
use publish::Graph;
use publish::graph::Follower;
use publish::queue::{Delivery, QueueError};

/// follow-graph in process: the same domain service the gRPC adapter calls.
pub struct LocalGraph(pub FollowGraph);

#[async_trait]
impl Graph for LocalGraph {
    async fn reach(&self, feeds: &[FeedRef]) -> Result<Vec<publish::graph::Reach>, ApiError> {
        Ok(self
            .0
            .counts(feeds, &[])
            .await?
            .0
            .into_iter()
            .map(|c| publish::graph::Reach {
                celebrity: c.celebrity,
                followers: c.followers,
            })
            .collect())
    }
    async fn follows(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError> {
        Ok(self.0.relationships(user, &[], feeds).await?.1)
    }
    async fn members(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError> {
        self.0.members(user, feeds).await
    }
    async fn blocked(&self, user: UserId, others: &[UserId]) -> Result<Vec<bool>, ApiError> {
        Ok(self
            .0
            .relationships(user, others, &[])
            .await?
            .0
            .into_iter()
            .map(|r| r.blocking || r.blocked_by)
            .collect())
    }
    async fn edge_changes(&self, after_seq: u64, limit: u32) -> Result<Vec<EdgeChange>, ApiError> {
        self.0.edge_changes(after_seq, limit as usize, "publish").await
    }
    async fn edge_states(&self, edges: &[(UserId, FeedRef)]) -> Result<Vec<(u64, bool)>, ApiError> {
        Ok(self
            .0
            .edge_states(edges)
            .await?
            .into_iter()
            .map(|e| (e.version, e.following))
            .collect())
    }
    async fn following(&self, user: UserId) -> Result<Vec<FeedRef>, ApiError> {
        Ok(self.0.list_following(user, None, 1000).await?.0)
    }
    async fn shards(&self, feed: &FeedRef) -> Result<Vec<u64>, ApiError> {
        Ok(self.0.follower_shards(feed).await?.0)
    }
    async fn page(
        &self,
        feed: &FeedRef,
        shard: u64,
        after: UserId,
        limit: u32,
    ) -> Result<(Vec<Follower>, bool), ApiError> {
        let (page, done) = self.0.page_shard(feed, shard, after, limit as usize).await?;
        Ok((
            page.into_iter()
                .map(|f| Follower {
                    user: f.user,
                    muted: f.muted,
                })
                .collect(),
            done,
        ))
    }
}

/// A queue the test drains in the order it chooses.
#[derive(Default)]
pub struct TestQueue(Mutex<VecDeque<Job>>);

impl TestQueue {
    /// Removes the job at `pick` (modulo the length), if any.
    pub fn take(&self, pick: usize) -> Option<Job> {
        let mut q = self.0.lock().expect("lock");
        if q.is_empty() {
            return None;
        }
        let i = pick % q.len();
        q.remove(i)
    }
    /// Whether no job waits.
    pub fn is_empty(&self) -> bool {
        self.0.lock().expect("lock").is_empty()
    }
}

#[async_trait]
impl feed_queue::JobQueue<Job> for TestQueue {
    async fn enqueue(&self, jobs: &[Job]) -> Result<(), QueueError> {
        self.0.lock().expect("lock").extend(jobs.iter().cloned());
        Ok(())
    }
    async fn receive(&self, _: &str, _: usize, _: Duration) -> Result<Vec<Delivery>, QueueError> {
        Ok(vec![])
    }
    async fn ack(&self, _: &Delivery) -> Result<(), QueueError> {
        Ok(())
    }
    async fn reclaim(&self, _: &str, _: Duration, _: usize) -> Result<Vec<Delivery>, QueueError> {
        Ok(vec![])
    }
    async fn trim(&self) -> Result<(), QueueError> {
        Ok(())
    }
    /// Held while waiting: a job the test took is in its hands, settled
    /// by the time the test sweeps.
    async fn held(&self, ids: &[&str]) -> Result<Vec<bool>, QueueError> {
        let q = self.0.lock().expect("lock");
        Ok(ids.iter().map(|id| q.iter().any(|j| j.job_id == *id)).collect())
    }
    async fn dead_letter(&self, _: &Job, _: &str) -> Result<(), QueueError> {
        Ok(())
    }
}

/// Plays notify's part for harnesses without it: takes every activity
/// event off `events` and settles its job in publish, as notify does once
/// it has processed an event.
pub async fn settle_events(events: &publish::EventQueue, publisher: &publish::Publisher) {
    loop {
        let got = events
            .receive("harness", 1000, std::time::Duration::ZERO)
            .await
            .expect("in-process queue");
        if got.is_empty() {
            return;
        }
        for d in got {
            publisher.complete_job(&d.job.event_id, &[]).await.expect("complete");
            events.ack(&d).await.expect("ack");
        }
    }
}
