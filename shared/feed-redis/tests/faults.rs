//! Calls through [`feed_redis::Redis`] when Redis hangs or its connections
//! go silent: they fail within the timeouts instead of hanging, and calls
//! work again once Redis does.

use std::time::{Duration, Instant};

use feed_redis::{Redis, Timeouts};
use feed_testkit::{RedisServer, TcpProxy};

const SHORT: Timeouts = Timeouts {
    connect: Duration::from_millis(300),
    response: Duration::from_millis(300),
};

async fn get(redis: &Redis, key: &str) -> redis::RedisResult<Option<String>> {
    let mut c = redis.clone();
    redis::cmd("GET").arg(key).query_async(&mut c).await
}

/// Retries `get` for up to 5 s; the value once it answers.
async fn answered_within_5s(redis: &Redis, key: &str) -> Option<String> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match get(redis, key).await {
            Ok(v) => return v,
            Err(_) if Instant::now() < end => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("no answer 5 s after Redis came back: {e}"),
        }
    }
}

#[tokio::test]
async fn a_silent_connection_fails_calls_fast_and_is_replaced_once_redis_answers_again() {
    let server = RedisServer::start().expect("redis-server");
    let proxy = TcpProxy::start(server.addr()).await.expect("proxy");
    let redis = Redis::connect_with(&proxy.redis_url(), SHORT).await.expect("connect");
    let mut c = redis.clone();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .expect("set");

    proxy.silence();
    for _ in 0..3 {
        let start = Instant::now();
        let err = get(&redis, "k")
            .await
            .expect_err("no answer through a silent connection");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "a call failed after {:?}, not within its timeouts: {err}",
            start.elapsed()
        );
    }
    assert!(redis.replacements() >= 1, "the timed-out connection was replaced");

    // The connection that went silent stays dead; a fresh one works.
    proxy.forward();
    assert_eq!(answered_within_5s(&redis, "k").await.as_deref(), Some("v"));
}

#[tokio::test]
async fn calls_while_redis_is_frozen_fail_fast_and_work_again_after() {
    let server = RedisServer::start().expect("redis-server");
    let redis = Redis::connect_with(&server.url(), SHORT).await.expect("connect");
    let mut c = redis.clone();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .expect("set");

    server.pause();
    for _ in 0..3 {
        let start = Instant::now();
        get(&redis, "k").await.expect_err("a frozen Redis answers nothing");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "failed after {:?}",
            start.elapsed()
        );
    }
    server.resume();
    assert_eq!(answered_within_5s(&redis, "k").await.as_deref(), Some("v"));
}

#[tokio::test]
async fn calls_while_redis_refuses_connections_fail_fast_and_work_again_after() {
    let server = RedisServer::start().expect("redis-server");
    let proxy = TcpProxy::start(server.addr()).await.expect("proxy");
    let redis = Redis::connect_with(&proxy.redis_url(), SHORT).await.expect("connect");
    let mut c = redis.clone();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .expect("set");

    // As when Redis is killed: a reconnect that waited out a backoff held
    // every call for seconds.
    proxy.refuse();
    for _ in 0..5 {
        let start = Instant::now();
        get(&redis, "k").await.expect_err("nothing answers");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "failed after {:?}",
            start.elapsed()
        );
    }
    proxy.forward();
    assert_eq!(answered_within_5s(&redis, "k").await.as_deref(), Some("v"));
}
