//! The fanout budget shared by publish replicas on one Redis (a real
//! redis-server): an actor's burst spread over replicas gets one budget;
//! without Redis each replica charges its own.

use std::time::Instant;

use feed_testkit::RedisServer;
use publish::publisher::FanoutBudget;

async fn replica(redis: &RedisServer, per_minute: u32) -> FanoutBudget {
    let conn = feed_redis::Redis::connect(&redis.url()).await.expect("redis");
    FanoutBudget::shared(per_minute, conn)
}

#[tokio::test]
async fn replicas_on_one_redis_charge_one_budget_per_actor() {
    let redis = RedisServer::start().expect("redis-server");
    let (a, b) = (replica(&redis, 60).await, replica(&redis, 60).await);
    let now = Instant::now();
    assert!(a.charge(1, 40, now).await);
    assert!(
        b.charge(1, 20, now).await,
        "the rest of the minute's worth, through the other replica"
    );
    assert!(!a.charge(1, 1, now).await, "past the budget, whichever replica asks");
    assert!(!b.charge(1, 1, now).await);
    assert!(b.charge(2, 60, now).await, "another actor has their own budget");
    // One unit a second comes back, on Redis's clock.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(a.charge(1, 2, now).await, "refilled at the budget's rate");
    assert!(!b.charge(1, 2, now).await);
}

#[tokio::test]
async fn without_redis_each_replica_charges_its_own_budget() {
    let mut redis = RedisServer::start().expect("redis-server");
    let (a, b) = (replica(&redis, 60).await, replica(&redis, 60).await);
    redis.kill();
    let now = Instant::now();
    assert!(a.charge(1, 60, now).await, "charged to this replica's bucket");
    assert!(!a.charge(1, 1, now).await);
    assert!(b.charge(1, 60, now).await, "the other replica's bucket is its own");
}
