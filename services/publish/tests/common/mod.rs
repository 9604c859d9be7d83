//! What the publish tests share: a follow graph the test scripts.

use std::sync::Mutex;

use async_trait::async_trait;
use feed_core::{ApiError, FeedRef, UserId};
use feed_proto::events::v1::EdgeChange;
use publish::graph::{Follower, Graph};

/// A graph with no follows and no celebrities, and an edge log the test writes.
#[derive(Default)]
pub struct ScriptedGraph {
    /// The edge log, as the test wrote it.
    pub log: Mutex<Vec<EdgeChange>>,
}

#[async_trait]
impl Graph for ScriptedGraph {
    async fn reach(&self, feeds: &[FeedRef]) -> Result<Vec<publish::graph::Reach>, ApiError> {
        Ok(vec![publish::graph::Reach::default(); feeds.len()])
    }
    async fn follows(&self, _: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError> {
        Ok(vec![false; feeds.len()])
    }
    async fn members(&self, _: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError> {
        Ok(vec![false; feeds.len()])
    }
    async fn blocked(&self, _: UserId, others: &[UserId]) -> Result<Vec<bool>, ApiError> {
        Ok(vec![false; others.len()])
    }
    async fn edge_changes(&self, after_seq: u64, limit: u32) -> Result<Vec<EdgeChange>, ApiError> {
        let mut log: Vec<EdgeChange> = self
            .log
            .lock()
            .expect("log")
            .iter()
            .filter(|c| c.seq > after_seq)
            .cloned()
            .collect();
        log.sort_by_key(|c| c.seq);
        log.truncate(limit as usize);
        Ok(log)
    }
    async fn edge_states(&self, edges: &[(UserId, FeedRef)]) -> Result<Vec<(u64, bool)>, ApiError> {
        Ok(vec![(0, false); edges.len()])
    }
    async fn following(&self, _: UserId) -> Result<Vec<FeedRef>, ApiError> {
        Ok(vec![])
    }
    async fn shards(&self, _: &FeedRef) -> Result<Vec<u64>, ApiError> {
        Ok(vec![])
    }
    async fn page(&self, _: &FeedRef, _: u64, _: UserId, _: u32) -> Result<(Vec<Follower>, bool), ApiError> {
        Ok((vec![], true))
    }
}
