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

/// Stores k = v through `redis`.
async fn set_k(redis: &Redis) {
    let mut c = redis.clone();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .expect("set");
}

/// `times` calls, each failing within 2 s.
async fn each_fails_fast(redis: &Redis, times: usize, fault: &str) {
    for _ in 0..times {
        let start = Instant::now();
        let err = get(redis, "k").await.expect_err(fault);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{fault}: a call failed after {:?}, not within its timeouts: {err}",
            start.elapsed()
        );
    }
}

#[tokio::test]
async fn a_silent_connection_fails_calls_fast_and_is_replaced_once_redis_answers_again() {
    let server = RedisServer::start().expect("redis-server");
    let proxy = TcpProxy::start(server.addr()).await.expect("proxy");
    let redis = Redis::connect_with(&proxy.redis_url(), SHORT).await.expect("connect");
    set_k(&redis).await;
    proxy.silence();
    each_fails_fast(&redis, 3, "no answer through a silent connection").await;
    assert!(redis.replacements() >= 1, "the timed-out connection was replaced");
    // The connection that went silent stays dead; a fresh one works.
    proxy.forward();
    assert_eq!(answered_within_5s(&redis, "k").await.as_deref(), Some("v"));
}

#[tokio::test]
async fn after_one_timeout_calls_fail_at_once_until_a_ping_answers() {
    let server = RedisServer::start().expect("redis-server");
    let proxy = TcpProxy::start(server.addr()).await.expect("proxy");
    let redis = Redis::connect_with(&proxy.redis_url(), SHORT).await.expect("connect");
    set_k(&redis).await;
    proxy.silence();
    get(&redis, "k")
        .await
        .expect_err("the first call waits out its timeout");
    assert!(redis.is_failing_fast());
    for _ in 0..20 {
        let start = Instant::now();
        get(&redis, "k").await.expect_err("Redis is still silent");
        assert!(
            start.elapsed() < Duration::from_millis(50),
            "a call waited {:?} after a timeout was seen",
            start.elapsed()
        );
    }
    proxy.forward();
    assert_eq!(answered_within_5s(&redis, "k").await.as_deref(), Some("v"));
    assert!(!redis.is_failing_fast(), "a PING answered: calls go through again");
}

#[tokio::test]
async fn calls_while_redis_is_frozen_fail_fast_and_work_again_after() {
    let server = RedisServer::start().expect("redis-server");
    let redis = Redis::connect_with(&server.url(), SHORT).await.expect("connect");
    set_k(&redis).await;
    server.pause();
    each_fails_fast(&redis, 3, "a frozen Redis answers nothing").await;
    server.resume();
    assert_eq!(answered_within_5s(&redis, "k").await.as_deref(), Some("v"));
}

#[tokio::test]
async fn calls_while_redis_refuses_connections_fail_fast_and_work_again_after() {
    let server = RedisServer::start().expect("redis-server");
    let proxy = TcpProxy::start(server.addr()).await.expect("proxy");
    let redis = Redis::connect_with(&proxy.redis_url(), SHORT).await.expect("connect");
    set_k(&redis).await;
    // As when Redis is killed: a reconnect that waited out a backoff held
    // every call for seconds.
    proxy.refuse();
    each_fails_fast(&redis, 5, "nothing answers").await;
    proxy.forward();
    assert_eq!(answered_within_5s(&redis, "k").await.as_deref(), Some("v"));
}
