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
