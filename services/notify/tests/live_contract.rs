//! The live log contract on both backends; Redis is a real redis-server.

use feed_testkit::{Backend, RedisServer};
use notify::live::contract::CONTRACT_CAP;
use notify::{LiveLog, MemoryLive, RedisLive};

async fn memory(_: &str) -> Backend<dyn LiveLog> {
    Some((Box::new(MemoryLive::new(CONTRACT_CAP)), Box::new(())))
}

async fn redis(_: &str) -> Backend<dyn LiveLog> {
    let redis = RedisServer::start().expect("redis");
    let live = RedisLive::connect(&redis.url(), CONTRACT_CAP, 3600)
        .await
        .expect("connect");
    Some((Box::new(live), Box::new(redis)))
}

notify::live_log_contract!(memory_log, memory);
notify::live_log_contract!(redis_log, redis);
