//! The job queue contract on both backends; Redis is a real redis-server.

use feed_queue::contract::TestJob;
use feed_queue::{JobQueue, MemoryQueue, RedisQueue};
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

feed_queue::job_queue_contract!(memory_queue, memory);
feed_queue::job_queue_contract!(redis_queue, redis);

/// A message removed from the stream by hand (XDEL, a MAXLEN trim) no
/// longer holds its record: the sweeper re-drives it instead of trusting
/// the hash forever.
#[tokio::test]
async fn an_entry_deleted_from_the_stream_no_longer_holds_its_record() {
    let redis = RedisServer::start().expect("redis");
    let q = RedisQueue::<TestJob>::connect(&redis.url(), "t:jobs", "workers")
        .await
        .expect("connect");
    q.enqueue(&[TestJob { id: "gone".into() }, TestJob { id: "kept".into() }])
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
    q.enqueue(&[TestJob { id: "a".into() }]).await.expect("enqueue");
    assert_eq!(q.held(&["a"]).await.expect("held"), [true]);
    let client = redis::Client::open(redis.url()).expect("client");
    let mut c = client.get_multiplexed_async_connection().await.expect("connect");
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.expect("flush");
    assert_eq!(q.held(&["a"]).await.expect("held"), [false]);
}
