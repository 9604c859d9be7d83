//! The sweeper against a real Redis: it re-drives what the queues lost,
//! and nothing that is merely waiting in a backlog.

mod common;

use std::sync::Arc;

use common::ScriptedGraph;
use feed_core::{IdGenerator, ManualClock, NodeLease};
use feed_inbox::{InboxLimits, MemoryInbox};
use feed_proto::events::v1::ActivityEvent;
use feed_proto::publish::v1::NewActivity;
use feed_queue::{JobQueue, RedisQueue};
use feed_testkit::RedisServer;
use publish::store::embedded::EmbeddedActivityStore;
use publish::{FanoutWorker, PublishRules, Publisher, RedisFanoutQueue, WorkerConfig};

const STALE_MS: i64 = 60_000;
const POSTS: u64 = 20;

async fn xlen(c: &mut redis::aio::MultiplexedConnection, stream: &str) -> u64 {
    redis::AsyncCommands::xlen(c, stream).await.expect("xlen")
}

#[tokio::test]
async fn a_backlog_past_the_stale_period_adds_no_stream_entries_and_a_flush_re_drives_each_job_once() {
    let redis = RedisServer::start().expect("redis");
    let mut c = redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let queue = Arc::new(
        RedisFanoutQueue::connect(&redis.url(), "t:fanout", "workers")
            .await
            .expect("fanout queue"),
    );
    let events: Arc<dyn JobQueue<ActivityEvent>> = Arc::new(
        RedisQueue::<ActivityEvent>::connect(&redis.url(), "t:events", "notify")
            .await
            .expect("event queue"),
    );
    let dir = tempfile::tempdir().expect("dir");
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let graph = Arc::new(ScriptedGraph::default());
    let publisher = Publisher::new(
        Arc::new(EmbeddedActivityStore::open(dir.path()).expect("store")),
        graph.clone(),
        queue.clone(),
        events.clone(),
        IdGenerator::new(NodeLease::exclusive(0), clock.clone()),
        clock.clone(),
        PublishRules::default(),
    );
    for i in 0..POSTS {
        let post = NewActivity {
            actor: 1,
            verb: "post".into(),
            object: format!("o{i}"),
            foreign_id: format!("f{i}"),
            ..NewActivity::default()
        };
        publisher.publish(post, 0).await.expect("publish");
    }
    let jobs = publisher.store().job_stats().await.expect("stats").pending;
    assert_eq!(jobs, 2 * POSTS, "a fanout job and an event job per post");
    assert_eq!(xlen(&mut c, "t:fanout").await, jobs);

    // No worker runs for five stale periods: every job is still waiting.
    for _ in 0..5 {
        clock.advance(STALE_MS as u64 + 1);
        assert_eq!(publisher.sweep(STALE_MS).await.expect("sweep"), 0, "nothing was lost");
    }
    let entries = xlen(&mut c, "t:fanout").await;
    println!(
        "backlog of 5 stale periods: {entries} stream entries for {jobs} jobs ({:.2} per job)",
        entries as f64 / jobs as f64
    );
    assert_eq!(entries, jobs, "one stream entry per job");

    // A worker runs them: fanout jobs finish, event jobs now wait in notify's queue.
    let worker = FanoutWorker::new(
        Arc::new(publisher.clone()),
        queue.clone(),
        events.clone(),
        graph,
        Arc::new(MemoryInbox::new(InboxLimits::default(), clock.clone())),
        WorkerConfig::default(),
    );
    for d in queue
        .receive("w", jobs as usize, std::time::Duration::ZERO)
        .await
        .expect("receive")
    {
        worker.handle(&d).await;
    }
    assert_eq!(publisher.store().job_stats().await.expect("stats").pending, POSTS);
    clock.advance(STALE_MS as u64 + 1);
    assert_eq!(
        publisher.sweep(STALE_MS).await.expect("sweep"),
        0,
        "events waiting for notify are held by its queue"
    );
    assert_eq!(xlen(&mut c, "t:events").await, POSTS);

    // A flush loses both streams: each pending job is re-driven once.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.expect("flush");
    clock.advance(STALE_MS as u64 + 1);
    assert_eq!(publisher.sweep(STALE_MS).await.expect("sweep"), POSTS as usize);
    clock.advance(STALE_MS as u64 + 1);
    assert_eq!(publisher.sweep(STALE_MS).await.expect("sweep"), 0, "re-driven once");
    assert_eq!(xlen(&mut c, "t:fanout").await, POSTS);
}
