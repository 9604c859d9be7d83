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
