//! A job that keeps failing is dead-lettered after the attempt limit, is
//! listed for operators, and runs to completion once replayed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use feed_core::{ApiError, FeedRef, IdGenerator, NodeLease, SystemClock, UserId};
use feed_e2e::inproc::{LocalGraph, TestQueue};
use feed_inbox::{InboxLimits, InboxStore, MemoryInbox};
use feed_proto::events::v1::EdgeChange;
use feed_proto::publish::v1::NewActivity;
use follow_graph::FollowGraph;
use follow_graph::store::GraphPolicy;
use follow_graph::store::embedded::EmbeddedGraphStore;
use publish::graph::Follower;
use publish::queue::Delivery;
use publish::store::embedded::EmbeddedActivityStore;
use publish::{FanoutWorker, Graph, PublishRules, Publisher, WorkerConfig};

/// follow-graph whose shard listing fails while `down` is set.
struct FlakyGraph {
    inner: LocalGraph,
    down: AtomicBool,
}

#[async_trait]
impl Graph for FlakyGraph {
    async fn reach(&self, feeds: &[FeedRef]) -> Result<Vec<publish::graph::Reach>, ApiError> {
        self.inner.reach(feeds).await
    }
    async fn follows(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError> {
        self.inner.follows(user, feeds).await
    }
    async fn members(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, ApiError> {
        self.inner.members(user, feeds).await
    }
    async fn blocked(&self, user: UserId, others: &[UserId]) -> Result<Vec<bool>, ApiError> {
        self.inner.blocked(user, others).await
    }
    async fn edge_changes(&self, after_seq: u64, limit: u32) -> Result<Vec<EdgeChange>, ApiError> {
        self.inner.edge_changes(after_seq, limit).await
    }
    async fn edge_states(&self, edges: &[(UserId, FeedRef)]) -> Result<Vec<(u64, bool)>, ApiError> {
        self.inner.edge_states(edges).await
    }
    async fn following(&self, user: UserId) -> Result<Vec<FeedRef>, ApiError> {
        self.inner.following(user).await
    }
    async fn shards(&self, feed: &FeedRef) -> Result<Vec<u64>, ApiError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(ApiError::Unavailable("follow-graph down".into()));
        }
        self.inner.shards(feed).await
    }
    async fn page(
        &self,
        feed: &FeedRef,
        shard: u64,
        after: UserId,
        limit: u32,
    ) -> Result<(Vec<Follower>, bool), ApiError> {
        self.inner.page(feed, shard, after, limit).await
    }
}

/// A publisher and a fanout worker on embedded stores, with follow-graph
/// down until the test says otherwise; user 2 follows user 1 and reads.
struct Fixture {
    publisher: Publisher,
    worker: FanoutWorker,
    queue: Arc<TestQueue>,
    flaky: Arc<FlakyGraph>,
    inbox: Arc<MemoryInbox>,
    events: Arc<publish::queue::EventQueue>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn fixture(max_attempts: u32, reclaim_idle: std::time::Duration) -> Fixture {
    let gdir = tempfile::tempdir().expect("dir");
    let pdir = tempfile::tempdir().expect("dir");
    let graph = FollowGraph::new(Arc::new(
        EmbeddedGraphStore::open(gdir.path(), GraphPolicy::new(100, 0.1, 100)).expect("graph store"),
    ));
    graph.follow(2, &FeedRef::user(1)).await.expect("follow");
    let flaky = Arc::new(FlakyGraph {
        inner: LocalGraph(graph),
        down: AtomicBool::new(true),
    });
    let queue = Arc::new(TestQueue::default());
    let clock = Arc::new(SystemClock);
    let inbox = Arc::new(MemoryInbox::new(InboxLimits::default(), clock.clone()));
    let events = publish::memory_event_queue();
    let publisher = Publisher::new(
        Arc::new(EmbeddedActivityStore::open(pdir.path()).expect("store")),
        flaky.clone(),
        queue.clone(),
        events.clone(),
        IdGenerator::new(NodeLease::exclusive(0), clock.clone()),
        clock,
        PublishRules {
            max_attempts,
            ..PublishRules::default()
        },
    );
    let worker = FanoutWorker::new(
        Arc::new(publisher.clone()),
        queue.clone(),
        events.clone(),
        flaky.clone(),
        inbox.clone(),
        WorkerConfig {
            reclaim_idle,
            ..WorkerConfig::default()
        },
    );
    publisher
        .rebuild_inbox(inbox.as_ref(), 2, &[FeedRef::user(1)])
        .await
        .expect("live");
    Fixture {
        publisher,
        worker,
        queue,
        flaky,
        inbox,
        events,
        _dirs: (gdir, pdir),
    }
}

async fn post(publisher: &Publisher) -> u64 {
    publisher
        .publish(
            NewActivity {
                actor: 1,
                verb: "post".into(),
                object: "o".into(),
                foreign_id: "f".into(),
                ..NewActivity::default()
            },
            0,
        )
        .await
        .expect("publish")
        .id
}

#[tokio::test]
async fn failing_jobs_are_dead_lettered_listed_and_replayed() {
    let f = fixture(2, WorkerConfig::default().reclaim_idle).await;
    let id = post(&f.publisher).await;
    let job = f.queue.take(0).expect("root job");
    let delivery = Delivery { job, tag: "1".into() };
    f.worker.handle(&delivery).await;
    assert!(
        f.publisher.dead_letters("", 10).await.expect("dead").is_empty(),
        "one failure is retried"
    );
    f.worker.handle(&delivery).await;
    let dead = f.publisher.dead_letters("", 10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert!(dead[0].error.contains("follow-graph down"), "{}", dead[0].error);
    assert_eq!(f.publisher.lag().await.expect("lag").dead_letters, 1);

    f.flaky.down.store(false, Ordering::SeqCst);
    assert_eq!(f.publisher.replay_dead(&[]).await.expect("replay"), 1);
    while let Some(job) = f.queue.take(0) {
        f.worker.process(&job.job_id).await.expect("job");
    }
    assert_eq!(
        f.inbox.page(2, None, 10).await.expect("page").expect("live").ids,
        vec![id]
    );
    feed_e2e::inproc::settle_events(f.events.as_ref(), &f.publisher).await;
    let lag = f.publisher.lag().await.expect("lag");
    assert_eq!((lag.pending_jobs, lag.dead_letters), (0, 0));
}

#[tokio::test]
async fn a_failing_job_is_retried_with_backoff_not_once_per_reclaim() {
    let period = std::time::Duration::from_millis(100);
    let f = fixture(5, period).await;
    post(&f.publisher).await;
    let job = f.queue.take(0).expect("root job");
    let attempts = || async {
        f.publisher
            .load_job(&job.job_id)
            .await
            .expect("job")
            .expect("pending")
            .attempts
    };
    let delivery = Delivery {
        job: job.clone(),
        tag: "1".into(),
    };
    // Redelivered as fast as reclaims could: the first two failures count,
    // then the job waits two periods since its last failure.
    for _ in 0..5 {
        f.worker.handle(&delivery).await;
    }
    assert_eq!(attempts().await, 2, "retried before its backoff ran out");
    assert!(f.publisher.dead_letters("", 10).await.expect("dead").is_empty());
    tokio::time::sleep(period * 3).await;
    f.worker.handle(&delivery).await;
    f.worker.handle(&delivery).await;
    assert_eq!(
        attempts().await,
        3,
        "one attempt once two periods passed, then four to wait"
    );
    // Back up: the next attempt after the backoff succeeds.
    f.flaky.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(period * 5).await;
    f.worker.handle(&delivery).await;
    assert!(
        f.publisher.load_job(&job.job_id).await.expect("job").is_none(),
        "done once follow-graph answered"
    );
}
