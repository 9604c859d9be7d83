//! The inbox contract on both backends; Redis is a real redis-server.

use std::sync::Arc;

use feed_core::SystemClock;
use feed_inbox::contract::{contract_config, run_all};
use feed_inbox::{InboxStore, MemoryInbox, RedisInbox};
use feed_testkit::RedisServer;

#[tokio::test]
async fn memory_inbox_passes_the_contract() {
    run_all(&MemoryInbox::new(contract_config(), Arc::new(SystemClock))).await;
}

#[tokio::test]
async fn redis_inbox_passes_the_contract() {
    let redis = RedisServer::start().expect("redis");
    run_all(
        &RedisInbox::connect(&redis.url(), contract_config())
            .await
            .expect("connect"),
    )
    .await;
}

#[tokio::test]
async fn redis_inbox_reloads_scripts_after_a_restart_forgets_them() {
    let redis = RedisServer::start().expect("redis");
    let inbox = RedisInbox::connect(&redis.url(), contract_config())
        .await
        .expect("connect");
    inbox.rebuild(1, &[], 0, None).await.expect("rebuild");
    let mut conn = redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("flush");
    assert_eq!(inbox.push(&[1], 7).await.expect("push after flush"), 1);
}

#[tokio::test]
async fn memory_inbox_expires_unused_inboxes() {
    let clock = feed_core::ManualClock::new(1_000);
    let inbox = MemoryInbox::new(contract_config(), Arc::new(clock.clone()));
    inbox.rebuild(1, &[5], 0, None).await.expect("rebuild");
    clock.advance(contract_config().ttl_ms - 1);
    assert!(
        inbox.page(1, None, 1).await.expect("page").is_some(),
        "a read refreshes"
    );
    inbox.page(1, None, 1).await.expect("page");
    clock.advance(contract_config().ttl_ms);
    assert!(
        !inbox.is_live(1).await.expect("live"),
        "a read alone does not keep it alive"
    );
}

#[tokio::test]
async fn redis_inbox_passes_the_contract_with_per_slot_calls() {
    // The cluster-safe path (one script call per user) on a single server.
    let redis = RedisServer::start().expect("redis");
    let cfg = feed_inbox::InboxConfig {
        cluster: true,
        ..contract_config()
    };
    run_all(&RedisInbox::connect(&redis.url(), cfg).await.expect("connect")).await;
}
