//! Node-id leases against a real redis-server.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use feed_core::{IdError, SystemClock};
use feed_lease::{RedisNodeLease, Renewal};
use feed_testkit::RedisServer;

async fn conn(server: &RedisServer) -> feed_redis::Redis {
    feed_redis::Redis::connect(&server.url()).await.expect("connect")
}

async fn lease(server: &RedisServer) -> RedisNodeLease {
    RedisNodeLease::acquire(
        conn(server).await,
        "feedtest",
        Duration::from_secs(30),
        Arc::new(SystemClock),
    )
    .await
    .expect("acquire")
}

#[tokio::test]
async fn replicas_lease_distinct_node_ids_and_mint_distinct_ids() {
    let redis = RedisServer::start().expect("redis");
    let mut nodes = HashSet::new();
    let mut ids = HashSet::new();
    for _ in 0..8 {
        let l = lease(&redis).await;
        assert!(nodes.insert(l.generator().lease().node), "node id leased twice");
        for _ in 0..100 {
            assert!(ids.insert(l.generator().next_id().expect("mint")));
        }
    }
}

#[tokio::test]
async fn a_lost_lease_stops_minting_until_a_new_node_is_claimed() {
    let redis = RedisServer::start().expect("redis");
    let l = lease(&redis).await;
    let old = l.generator().lease().node;
    assert_eq!(l.renew().await.expect("renew"), Renewal::Renewed);
    // Another owner takes the key (as after an expiry during a long pause).
    let mut c = conn(&redis).await;
    let _: () = redis::cmd("SET")
        .arg(format!("feedtest:node-lease:{old}"))
        .arg("someone-else")
        .query_async(&mut c)
        .await
        .expect("steal");
    assert_eq!(l.renew().await.expect("renew"), Renewal::Lost);
    assert_eq!(l.generator().next_id(), Err(IdError::LeaseLapsed));
    let new = l.reacquire().await.expect("reacquire");
    assert_ne!(new, old);
    assert!(l.generator().next_id().is_ok());
}

#[tokio::test]
async fn released_node_id_is_free_again() {
    let redis = RedisServer::start().expect("redis");
    let l = lease(&redis).await;
    let node = l.generator().lease().node;
    l.release().await.expect("release");
    assert_eq!(l.generator().next_id(), Err(IdError::LeaseLapsed));
    let mut c = conn(&redis).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("feedtest:node-lease:{node}"))
        .query_async(&mut c)
        .await
        .expect("exists");
    assert_eq!(exists, 0);
}

async fn redis_now_ms(c: &mut feed_redis::Redis) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(c).await.expect("time");
    secs * 1000 + micros / 1000
}

#[tokio::test]
async fn leases_carry_no_redis_ttl_so_eviction_cannot_take_them() {
    // Redis evicts keys with a TTL (volatile-lru); an evicted lease would
    // let another process mint on the same node id.
    let redis = RedisServer::start().expect("redis");
    let l = lease(&redis).await;
    let key = format!("feedtest:node-lease:{}", l.generator().lease().node);
    let mut c = conn(&redis).await;
    for when in ["claimed", "renewed"] {
        let pttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut c).await.expect("pttl");
        assert_eq!(pttl, -1, "{when}: the lease key has no TTL");
        assert_eq!(l.renew().await.expect("renew"), Renewal::Renewed);
    }
}

#[tokio::test]
async fn a_claim_takes_only_a_node_id_whose_lease_expired() {
    let redis = RedisServer::start().expect("redis");
    let mut c = conn(&redis).await;
    let now = redis_now_ms(&mut c).await;
    // Every node id held by processes that are still within their lease...
    let mut pipe = redis::pipe();
    for node in 0..feed_core::id::MAX_NODES {
        pipe.cmd("SET")
            .arg(format!("feedtest:node-lease:{node}"))
            .arg(format!("other-{node}:{}", now + 60_000))
            .ignore();
    }
    let _: () = pipe.query_async(&mut c).await.expect("fill");
    let full = RedisNodeLease::acquire(c.clone(), "feedtest", Duration::from_secs(30), Arc::new(SystemClock)).await;
    assert!(full.is_err(), "no node id is free");
    // ...but one, whose holder died and whose lease ran out.
    let _: () = redis::cmd("SET")
        .arg("feedtest:node-lease:777")
        .arg(format!("dead:{}", now - 1))
        .query_async(&mut c)
        .await
        .expect("expire one");
    let l = lease(&redis).await;
    assert_eq!(l.generator().lease().node, 777);
    assert!(l.generator().next_id().is_ok());
}
