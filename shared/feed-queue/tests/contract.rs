//! The job queue contract on both backends; Redis is a real redis-server.

use feed_queue::contract::TestJob;
use std::sync::Arc;

use feed_queue::{JobQueue, Lanes, MemoryQueue, RedisQueue};
use feed_testkit::{Backend, RedisServer};

async fn memory(_: &str) -> Backend<dyn JobQueue<TestJob>> {
    Some((Box::new(MemoryQueue::<TestJob>::default()), Box::new(())))
}

async fn redis(_: &str) -> Backend<dyn JobQueue<TestJob>> {
    let redis = RedisServer::start().expect("redis");
    let q = RedisQueue::<TestJob>::connect(&redis.url(), "t:jobs", "workers")
        .await
        .expect("connect");
    Some((Box::new(q), Box::new(redis)))
}

/// Two lanes behind one queue (`feed_queue::Lanes`): what the fanout
/// workers read.
async fn memory_lanes(_: &str) -> Backend<dyn JobQueue<TestJob>> {
    let lanes = Lanes::new(
        Arc::new(MemoryQueue::<TestJob>::default()),
        Arc::new(MemoryQueue::<TestJob>::default()),
        4,
    );
    Some((Box::new(lanes), Box::new(())))
}

/// The lanes the fanout workers read on Redis: `t:jobs` and `t:jobs:bulk`.
async fn lanes_on(redis: &RedisServer) -> Lanes<TestJob> {
    let stream = |name: &'static str| async move {
        RedisQueue::<TestJob>::connect(&redis.url(), name, "workers")
            .await
            .expect("connect")
    };
    Lanes::new(
        Arc::new(stream("t:jobs").await),
        Arc::new(stream("t:jobs:bulk").await),
        4,
    )
}

async fn redis_lanes(_: &str) -> Backend<dyn JobQueue<TestJob>> {
    let redis = RedisServer::start().expect("redis");
    Some((Box::new(lanes_on(&redis).await), Box::new(redis)))
}

feed_queue::job_queue_contract!(memory_queue, memory);
feed_queue::job_queue_contract!(redis_queue, redis);
feed_queue::job_queue_contract!(memory_lanes_queue, memory_lanes);
feed_queue::job_queue_contract!(redis_lanes_queue, redis_lanes);

/// A bulk message goes to the bulk lane's stream, and a receive with no
/// wait returns at once on Redis (no `BLOCK 0`, which waits for ever).
#[tokio::test]
async fn a_bulk_job_travels_on_its_own_stream() {
    let redis = RedisServer::start().expect("redis");
    let lanes = lanes_on(&redis).await;
    lanes
        .enqueue(&[
            TestJob {
                id: "burst".into(),
                bulk: true,
            },
            TestJob {
                id: "ordinary".into(),
                bulk: false,
            },
        ])
        .await
        .expect("enqueue");
    let client = redis::Client::open(redis.url()).expect("client");
    let mut c = client.get_multiplexed_async_connection().await.expect("connect");
    let lens: (i64, i64) = redis::pipe()
        .xlen("t:jobs")
        .xlen("t:jobs:bulk")
        .query_async(&mut c)
        .await
        .expect("xlen");
    assert_eq!(lens, (1, 1));
    let quick = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let got = lanes
                .receive("w", 10, std::time::Duration::ZERO)
                .await
                .expect("receive");
            seen.extend(got.into_iter().map(|d| d.job.id));
        }
        seen
    })
    .await
    .expect("a receive with no wait returned at once");
    assert_eq!(
        quick,
        ["burst", "ordinary"],
        "the first receive is the bulk lane's turn"
    );
}

/// A message removed from the stream by hand (XDEL, a MAXLEN trim) no
/// longer holds its record: the sweeper re-drives it instead of trusting
/// the hash forever.
#[tokio::test]
async fn an_entry_deleted_from_the_stream_no_longer_holds_its_record() {
    let redis = RedisServer::start().expect("redis");
    let q = RedisQueue::<TestJob>::connect(&redis.url(), "t:jobs", "workers")
        .await
        .expect("connect");
    q.enqueue(&[
        TestJob {
            id: "gone".into(),
            bulk: false,
        },
        TestJob {
            id: "kept".into(),
            bulk: false,
        },
    ])
    .await
    .expect("enqueue");
    let client = redis::Client::open(redis.url()).expect("client");
    let mut c = client.get_multiplexed_async_connection().await.expect("connect");
    let first: redis::streams::StreamRangeReply = redis::AsyncCommands::xrange_count(&mut c, "t:jobs", "-", "+", 1)
        .await
        .expect("xrange");
    let _: i64 = redis::AsyncCommands::xdel(&mut c, "t:jobs", &[first.ids[0].id.as_str()])
        .await
        .expect("xdel");
    assert_eq!(q.held(&["gone", "kept"]).await.expect("held"), [false, true]);
    let fields: i64 = redis::AsyncCommands::hlen(&mut c, "t:jobs:held").await.expect("hlen");
    assert_eq!(fields, 1, "the stale field is gone");
}

/// A flush loses the stream and what it held together: every record reads
/// as not held, so the sweeper re-drives them all.
#[tokio::test]
async fn a_flush_releases_every_record() {
    let redis = RedisServer::start().expect("redis");
    let q = RedisQueue::<TestJob>::connect(&redis.url(), "t:jobs", "workers")
        .await
        .expect("connect");
    q.enqueue(&[TestJob {
        id: "a".into(),
        bulk: false,
    }])
    .await
    .expect("enqueue");
    assert_eq!(q.held(&["a"]).await.expect("held"), [true]);
    let client = redis::Client::open(redis.url()).expect("client");
    let mut c = client.get_multiplexed_async_connection().await.expect("connect");
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.expect("flush");
    assert_eq!(q.held(&["a"]).await.expect("held"), [false]);
}
