//! The inbox contract on both backends; Redis is a real redis-server.

use std::sync::Arc;

use feed_core::SystemClock;
use feed_inbox::contract::contract_config;
use feed_inbox::{InboxStore, MemoryInbox, RedisInbox};
use feed_testkit::RedisServer;

async fn memory(_: &str) -> feed_testkit::Backend<dyn InboxStore> {
    Some((
        Box::new(MemoryInbox::new(contract_config(), Arc::new(SystemClock))),
        Box::new(()),
    ))
}

feed_inbox::inbox_store_contract!(memory_inbox, memory);

async fn redis(_: &str) -> feed_testkit::Backend<dyn InboxStore> {
    let redis = RedisServer::start().expect("redis");
    let inbox = RedisInbox::connect(&redis.url(), contract_config())
        .await
        .expect("connect");
    Some((Box::new(inbox), Box::new(redis)))
}

feed_inbox::inbox_store_contract!(redis_inbox, redis);

/// `maxmemory-policy volatile-lru` evicts keys one at a time: an inbox may
/// lose its set and keep its floor, or the other way round.
#[tokio::test]
async fn an_inbox_that_lost_either_key_to_eviction_reads_as_dead_and_rebuilds_exactly() {
    use feed_inbox::redis_store::{floor_key, inbox_key};
    let redis = RedisServer::start().expect("redis");
    let inbox = RedisInbox::connect(&redis.url(), contract_config())
        .await
        .expect("connect");
    let mut conn = redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let id = |n: u64| (1u64 << 40) + n;
    for (user, evicted) in [(1, inbox_key(1)), (2, floor_key(2))] {
        inbox
            .rebuild(user, &[id(10), id(20)], id(5), None)
            .await
            .expect("rebuild");
        assert!(inbox.is_live(user).await.expect("live"));
        let _: i64 = redis::cmd("DEL")
            .arg(&evicted)
            .query_async(&mut conn)
            .await
            .expect("evict");
        assert!(!inbox.is_live(user).await.expect("live"), "{evicted} evicted");
        assert!(
            inbox.page(user, None, 10).await.expect("page").is_none(),
            "{evicted} evicted: the page must not claim an inbox"
        );
        // A push meanwhile does not revive it.
        inbox.push(&[user], id(30)).await.expect("push");
        assert!(inbox.page(user, None, 10).await.expect("page").is_none());
        // The rebuild (which reads 30 from the outboxes) starts over: the
        // floor left behind guarantees nothing.
        assert!(inbox.mark_live(user, id(25)).await.expect("mark"), "{evicted} evicted");
        inbox
            .rebuild(user, &[id(12), id(20), id(30)], id(12), Some(id(25)))
            .await
            .expect("rebuild");
        let page = inbox.page(user, None, 10).await.expect("page").expect("live again");
        assert_eq!(
            page.floor,
            id(12),
            "{evicted} evicted: the rebuild's floor, not the stale one"
        );
        assert_eq!(page.ids, vec![id(30), id(20), id(12)], "{evicted} evicted");
    }
    // The mark is a member, not an id: pages and trims never show or count it.
    inbox.rebuild(3, &[], 0, None).await.expect("rebuild");
    for n in 1..=7 {
        inbox.push(&[3], id(n)).await.expect("push");
    }
    let page = inbox.page(3, None, 10).await.expect("page").expect("live");
    assert_eq!(page.ids, (3..=7).rev().map(id).collect::<Vec<_>>());
    let expiry: i64 = redis::cmd("PTTL")
        .arg(inbox_key(3))
        .query_async(&mut conn)
        .await
        .expect("pttl");
    assert!(expiry > 0, "the set expires with its floor");
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

/// The cluster-safe path (one script call per user) on a single server.
async fn redis_per_slot(_: &str) -> feed_testkit::Backend<dyn InboxStore> {
    let redis = RedisServer::start().expect("redis");
    let cfg = feed_inbox::InboxLimits {
        cluster: true,
        ..contract_config()
    };
    let inbox = RedisInbox::connect(&redis.url(), cfg).await.expect("connect");
    Some((Box::new(inbox), Box::new(redis)))
}

feed_inbox::inbox_store_contract!(redis_inbox_per_slot_calls, redis_per_slot);

/// A graph token is issued once, read back with the reader's page (live
/// inbox or not), and gone once withdrawn; the next issue is a new one.
#[tokio::test]
async fn graph_tokens_are_issued_once_read_with_the_page_and_gone_once_withdrawn() {
    use feed_inbox::GraphTokens;
    use feed_inbox::graph_token::{GRAPH_TOKEN_TTL, graph_token_key};
    let redis = RedisServer::start().expect("redis");
    let inbox = RedisInbox::connect(&redis.url(), contract_config())
        .await
        .expect("connect");
    let tokens = GraphTokens::connect(&redis.url()).await.expect("connect");

    let first = tokens.issue(&[1, 2]).await.expect("issue");
    assert!(first.iter().all(|t| *t != 0) && first[0] != first[1], "{first:?}");
    assert_eq!(
        tokens.issue(&[2, 1]).await.expect("issue"),
        vec![first[1], first[0]],
        "held tokens are handed out again"
    );
    assert_eq!(
        inbox.page_with_graph_token(1, None, 10).await.expect("read"),
        (None, Some(first[0])),
        "a token is read even without a live inbox"
    );
    inbox.rebuild(1, &[(1 << 40) + 1], 0, None).await.expect("rebuild");
    let (page, token) = inbox.page_with_graph_token(1, None, 10).await.expect("read");
    assert_eq!((page.map(|p| p.ids.len()), token), (Some(1), Some(first[0])));

    tokens.withdraw(&[1]).await.expect("withdraw");
    assert_eq!(inbox.page_with_graph_token(1, None, 10).await.expect("read").1, None);
    assert_eq!(
        inbox.page_with_graph_token(2, None, 10).await.expect("read").1,
        Some(first[1]),
        "only the named user's"
    );
    let again = tokens.issue(&[1]).await.expect("issue");
    assert!(
        again[0] != 0 && again[0] != first[0],
        "a withdrawn token is never issued again"
    );

    let mut conn = redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(graph_token_key(1))
        .query_async(&mut conn)
        .await
        .expect("pttl");
    assert!(
        ttl > 0 && ttl <= GRAPH_TOKEN_TTL.as_millis() as i64,
        "tokens expire unwithdrawn: {ttl}"
    );
    // Memory inboxes keep no tokens.
    let memory = MemoryInbox::new(contract_config(), Arc::new(SystemClock));
    assert_eq!(memory.page_with_graph_token(1, None, 10).await.expect("read").1, None);
}
