//! publish: activities (durable), feed outboxes, fanout jobs and the
//! fanout workers (hybrid push/pull delivery).

pub mod app;
pub mod fanout;
pub mod graph;
pub mod grpc;
pub mod publisher;
pub mod queue;
pub mod store;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use feed_core::{Clock, IdGenerator, NodeLease, SystemClock};
use feed_inbox::{InboxStore, MemoryInbox, RedisInbox};
use feed_proto::events::v1::ActivityEvent;
use feed_proto::wire::publish::v1::publish_service_server::PublishServiceServer;
use feed_server::{Authenticator, FeedConfig, ServiceSet, Shutdown, Tasks};

pub use app::{App, Deps, FANOUT_WORKER_HEALTH, WorkerApp};
pub use fanout::{FanoutWorker, JobLedger, WorkerConfig};
pub use graph::Graph;
pub use publisher::{PublishRules, Publisher};
pub use queue::{EventQueue, FanoutQueue, MemoryFanoutQueue, RedisFanoutQueue};
use store::ActivityStore;

/// The gRPC name of this service.
pub const SERVICE_NAME: &str = "feed.publish.v1.PublishService";

/// Inbox sizing from configuration.
pub fn inbox_limits(cfg: &FeedConfig) -> feed_inbox::InboxLimits {
    feed_inbox::InboxLimits::from_settings(cfg.inbox.cap, cfg.inbox.ttl_secs, cfg.redis.cluster)
}

/// Publish settings from configuration.
pub fn publish_rules(cfg: &FeedConfig) -> PublishRules {
    let mut p = PublishRules {
        max_attempts: cfg.publish.max_attempts.max(1),
        inbox_cap: cfg.inbox.cap.max(1),
        max_scheduled: cfg.publish.max_scheduled_per_actor.max(1),
        actor_fanout_per_minute: cfg.fanout.actor_budget_per_minute,
        ..PublishRules::default()
    };
    p.limits.max_extra_bytes = cfg.publish.max_extra_bytes;
    p
}

/// Worker settings from configuration.
pub fn worker_config(cfg: &FeedConfig) -> WorkerConfig {
    WorkerConfig {
        page_size: cfg.fanout.page_size.clamp(1, 10_000),
        concurrency: cfg.fanout.concurrency.max(1),
        reclaim_idle: Duration::from_millis(cfg.fanout.reclaim_idle_ms.max(100)),
        inbox_cap: cfg.inbox.cap.max(1),
        ..WorkerConfig::default()
    }
}

/// The configured activity store: ScyllaDB when `scylla.nodes` is set (its
/// schema applied by `publish --migrate`), else the embedded store under
/// `storage.data_dir/publish`.
pub async fn open_store(cfg: &FeedConfig) -> anyhow::Result<Arc<dyn ActivityStore>> {
    if !cfg.scylla.node_list().is_empty() {
        let scylla = store::scylla::ScyllaActivityStore::connect(&cfg.scylla).await?;
        if cfg.redis.url.is_empty() {
            return Ok(Arc::new(scylla));
        }
        // Replicas share the store: celebrity heads live in Redis for all of them.
        return Ok(Arc::new(
            store::shared_heads::SharedHeads::connect(scylla, &cfg.redis.url, cfg.redis.cluster).await?,
        ));
    }
    let dir = cfg.storage.data_dir.join("publish");
    std::fs::create_dir_all(&dir)?;
    Ok(Arc::new(
        store::embedded::EmbeddedActivityStore::open(&dir)?.with_sync(cfg.storage.sync_writes),
    ))
}

/// The `--migrate` step: applies the ScyllaDB schema when configured.
pub async fn migrate(cfg: &FeedConfig) -> anyhow::Result<()> {
    if cfg.scylla.node_list().is_empty() {
        tracing::info!("publish: embedded store, nothing to migrate");
        return Ok(());
    }
    store::scylla::migrate(&cfg.scylla).await?;
    tracing::info!(keyspace = %cfg.scylla.keyspace, "publish schema applied");
    Ok(())
}

/// Inboxes on Redis when `redis.url` is set, else in memory.
pub async fn open_inbox(cfg: &FeedConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<dyn InboxStore>> {
    Ok(if cfg.redis.url.is_empty() {
        Arc::new(MemoryInbox::new(inbox_limits(cfg), clock))
    } else {
        Arc::new(RedisInbox::connect(&cfg.redis.url, inbox_limits(cfg)).await?)
    })
}

/// The job queue, in two lanes (`feed_queue::Lanes`: jobs of actors past
/// their fanout budget travel in the bulk lane): Redis Streams
/// `fanout.stream` and `<fanout.stream>:bulk` when `redis.url` is set, else
/// in process.
pub async fn open_queue(cfg: &FeedConfig) -> anyhow::Result<Arc<dyn FanoutQueue>> {
    let (fast, bulk): (Arc<dyn FanoutQueue>, Arc<dyn FanoutQueue>) = if cfg.redis.url.is_empty() {
        (
            Arc::new(MemoryFanoutQueue::default()),
            Arc::new(MemoryFanoutQueue::default()),
        )
    } else {
        let (fast, bulk) = open_streams(cfg).await?;
        (fast, bulk)
    };
    Ok(Arc::new(feed_queue::Lanes::new(fast, bulk, cfg.fanout.bulk_share)))
}

/// The two job streams (fast lane, bulk lane).
pub async fn open_streams(cfg: &FeedConfig) -> anyhow::Result<(Arc<RedisFanoutQueue>, Arc<RedisFanoutQueue>)> {
    let f = &cfg.fanout;
    Ok((
        Arc::new(RedisFanoutQueue::connect(&cfg.redis.url, &f.stream, &f.group).await?),
        Arc::new(RedisFanoutQueue::connect(&cfg.redis.url, &bulk_stream(cfg), &f.group).await?),
    ))
}

/// The bulk lane's stream.
pub fn bulk_stream(cfg: &FeedConfig) -> String {
    format!("{}:bulk", cfg.fanout.stream)
}

/// The queue activity events travel on to notify: a Redis Stream when
/// `redis.url` is set (notify's consumer group reads it), else in process
/// (feedd hands the same queue to notify).
pub async fn open_event_queue(cfg: &FeedConfig) -> anyhow::Result<Arc<EventQueue>> {
    Ok(if cfg.redis.url.is_empty() {
        memory_event_queue()
    } else {
        Arc::new(
            feed_queue::RedisQueue::<ActivityEvent>::connect(
                &cfg.redis.url,
                &cfg.notify.events_stream,
                &cfg.notify.events_group,
            )
            .await?,
        )
    })
}

/// An in-process event queue.
pub fn memory_event_queue() -> Arc<EventQueue> {
    Arc::new(feed_queue::MemoryQueue::<ActivityEvent>::default())
}

/// The node-id lease's term. It is renewed every third of it and minting
/// stops a third of it before its end, so a publish process keeps minting
/// through at least 20 s (at most 40 s) of Redis not answering; a dead
/// process's node id is free again a minute after its last renewal.
const LEASE_TERM: Duration = Duration::from_secs(60);

/// An id generator: on a leased node id with Redis, on node 0 for a
/// process that owns its embedded storage alone.
pub async fn id_generator(
    cfg: &FeedConfig,
    clock: Arc<dyn Clock>,
    shutdown: &Shutdown,
    tasks: &mut Tasks,
) -> anyhow::Result<IdGenerator> {
    if cfg.redis.url.is_empty() {
        return Ok(IdGenerator::new(NodeLease::exclusive(0), clock));
    }
    let conn = feed_redis::Redis::connect(&cfg.redis.url).await?;
    let lease = feed_lease::RedisNodeLease::acquire(conn, "feed", LEASE_TERM, clock).await?;
    let generator = lease.generator();
    let stop = shutdown.clone();
    tasks.adopt("node id lease", lease.spawn_keeper(async move { stop.wait().await }));
    Ok(generator)
}

/// The system clock, shared.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// Adds PublishService, its health name and readiness check to `set`.
pub fn register(set: &mut ServiceSet, publisher: Publisher, inbox: Arc<dyn InboxStore>, auth: &Authenticator) {
    let store = publisher.store().clone();
    set.routes.add_service(
        auth.guard(
            PublishServiceServer::new(grpc::PublishGrpc::new(publisher, inbox))
                .max_decoding_message_size(feed_server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(feed_server::MAX_MESSAGE_BYTES),
        ),
    );
    set.names.push(SERVICE_NAME);
    set.readiness.push(Arc::new(move || {
        let store = store.clone();
        Box::pin(async move { store.ping().await.map_err(|e| format!("publish storage: {e}")) })
    }));
}

/// Runs the sweeper and the scheduled-item releaser until shutdown.
pub fn spawn_sweeper(publisher: Publisher, cfg: &FeedConfig, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
    let interval = Duration::from_millis(cfg.publish.sweep_interval_ms.max(10));
    let stale_after = cfg.publish.stale_after_ms as i64;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait() => return,
            }
            match publisher.sweep(stale_after).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "sweeper re-drove stale jobs"),
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            }
            if let Err(e) = publisher.release_due().await {
                tracing::warn!(error = %e, "scheduled release failed");
            }
        }
    })
}

/// Tails follow-graph's edge change log into edge jobs until shutdown:
/// new changes every 200 ms, the trailing window for late ones every 5 s.
pub fn spawn_edge_tail(publisher: Publisher, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for tick in 0u64.. {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.wait() => return,
            }
            if let Err(e) = publisher.ingest_edges().await {
                tracing::debug!(error = %e, "edge log not read");
            }
            if tick % 25 == 24
                && let Err(e) = publisher.ingest_late_edges().await
            {
                tracing::debug!(error = %e, "edge log window not read");
            }
        }
    })
}
