//! notify: announces, reminds and private messages, with subscriptions,
//! per-user configuration, aggregation, read state and a resumable live
//! stream (Watch).

pub mod activities;
pub mod graph;
pub mod grpc;
pub mod ledger;
pub mod live;
pub mod notifier;
pub mod store;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use feed_core::SystemClock;
use feed_proto::events::v1::ActivityEvent;
use feed_proto::notify::v1::RemindJob;
use feed_proto::notify::v1::notify_service_server::NotifyServiceServer;
use feed_queue::{JobQueue, MemoryQueue, RedisQueue};
use feed_server::app::require;
use feed_server::{Authenticator, BuildContext, FeedConfig, ServiceSet, Shutdown, Tasks};

pub use activities::Activities;
pub use graph::Relations;
pub use ledger::{EventLedger, GrpcPublish};
pub use live::{LiveLog, MemoryLive, RedisLive};
pub use notifier::{Notifier, NotifyRules, Peers};
pub use store::NotifyStore;

/// The gRPC name of this service.
pub const SERVICE_NAME: &str = "feed.notify.v1.NotifyService";

/// The store: ScyllaDB when `scylla.nodes` is set, else embedded under `data_dir/notify`.
pub async fn open_store(cfg: &FeedConfig) -> anyhow::Result<Arc<dyn NotifyStore>> {
    if !cfg.scylla.node_list().is_empty() {
        return Ok(Arc::new(store::scylla::ScyllaNotifyStore::connect(&cfg.scylla).await?));
    }
    let dir = cfg.storage.data_dir.join("notify");
    std::fs::create_dir_all(&dir)?;
    Ok(Arc::new(
        store::embedded::EmbeddedNotifyStore::open(&dir)?.with_sync(cfg.storage.sync_writes),
    ))
}

/// The `--migrate` step: applies the ScyllaDB schema when configured.
pub async fn migrate(cfg: &FeedConfig) -> anyhow::Result<()> {
    if cfg.scylla.node_list().is_empty() {
        tracing::info!("notify: embedded store, nothing to migrate");
        return Ok(());
    }
    store::scylla::migrate(&cfg.scylla).await?;
    tracing::info!(keyspace = %cfg.scylla.keyspace, "notify schema applied");
    Ok(())
}

/// The live log: Redis when `redis.url` is set (shared by replicas), else in process.
pub async fn open_live(cfg: &FeedConfig) -> anyhow::Result<Arc<dyn LiveLog>> {
    Ok(if cfg.redis.url.is_empty() {
        Arc::new(MemoryLive::new(cfg.notify.watch_backlog))
    } else {
        Arc::new(
            RedisLive::connect(
                &cfg.redis.url,
                cfg.notify.watch_backlog,
                cfg.notify.live_ttl_secs.max(1),
            )
            .await?,
        )
    })
}

/// The remind job queue: a Redis Stream shared by replicas, else in process.
pub async fn open_jobs(cfg: &FeedConfig) -> anyhow::Result<Arc<dyn JobQueue<RemindJob>>> {
    Ok(if cfg.redis.url.is_empty() {
        Arc::new(MemoryQueue::<RemindJob>::default())
    } else {
        Arc::new(
            RedisQueue::<RemindJob>::connect(&cfg.redis.url, &cfg.notify.jobs_stream, &cfg.notify.events_group).await?,
        )
    })
}

/// The activity events publish emits, read by notify's consumer group (Redis only;
/// feedd hands over its in-process queue instead).
pub async fn open_events(cfg: &FeedConfig) -> anyhow::Result<Arc<dyn JobQueue<ActivityEvent>>> {
    anyhow::ensure!(
        !cfg.redis.url.is_empty(),
        "redis.url is required for the activity event stream"
    );
    Ok(Arc::new(
        RedisQueue::<ActivityEvent>::connect(&cfg.redis.url, &cfg.notify.events_stream, &cfg.notify.events_group)
            .await?,
    ))
}

/// A notifier from configuration.
pub fn notifier(
    cfg: &FeedConfig,
    store: Arc<dyn NotifyStore>,
    live: Arc<dyn LiveLog>,
    peers: Peers,
    jobs: Arc<dyn JobQueue<RemindJob>>,
    shutdown: Shutdown,
) -> anyhow::Result<Notifier> {
    Ok(Notifier::new(
        store,
        live,
        peers,
        jobs,
        Arc::new(SystemClock),
        NotifyRules::from_config(&cfg.notify)?,
        shutdown,
    ))
}

/// A consumer name unique to this process (the pod name on Kubernetes).
pub fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "notify".into());
    format!("{host}-{}", std::process::id())
}

/// Starts the background work into `tasks`: the activity event consumer,
/// the remind job worker and the sweeper.
pub fn start_background(
    cfg: &FeedConfig,
    notifier: &Notifier,
    events: Arc<dyn JobQueue<ActivityEvent>>,
    ledger: Arc<dyn EventLedger>,
    jobs: Arc<dyn JobQueue<RemindJob>>,
    shutdown: &Shutdown,
    tasks: &mut Tasks,
) {
    let name = consumer_name();
    let reclaim_idle = Duration::from_millis(cfg.notify.reclaim_idle_ms.max(100));
    tasks.spawn(
        "activity event consumer",
        worker::event_consumer(
            notifier.clone(),
            events.clone(),
            ledger,
            format!("{name}-events"),
            reclaim_idle,
            shutdown.clone(),
        ),
    );
    tasks.spawn(
        "remind worker",
        worker::remind_worker(
            notifier.clone(),
            jobs.clone(),
            format!("{name}-reminds"),
            reclaim_idle,
            shutdown.clone(),
        ),
    );
    tasks.spawn(
        "remind sweeper",
        worker::sweeper(
            notifier.clone(),
            vec![
                Box::new(move || trim(events.clone())),
                Box::new(move || trim(jobs.clone())),
            ],
            Duration::from_millis(cfg.notify.sweep_interval_ms.max(10)),
            Duration::from_millis(cfg.notify.stale_after_ms.max(1)),
            shutdown.clone(),
        ),
    );
}

fn trim<M: feed_queue::QueueMessage>(q: Arc<dyn JobQueue<M>>) -> worker::Trim {
    Box::pin(async move { q.trim().await.map_err(|e| e.to_string()) })
}

/// Adds NotifyService, its health name and readiness check to `set`.
pub fn register(set: &mut ServiceSet, notifier: Notifier, auth: &Authenticator) {
    let store = notifier.store().clone();
    set.routes.add_service(
        auth.guard(
            NotifyServiceServer::new(grpc::NotifyGrpc::new(notifier))
                .max_decoding_message_size(feed_server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(feed_server::MAX_MESSAGE_BYTES),
        ),
    );
    set.names.push(SERVICE_NAME);
    set.readiness.push(Arc::new(move || {
        let store = store.clone();
        Box::pin(async move { store.ping().await.map_err(|e| format!("notify storage: {e}")) })
    }));
}

/// What NotifyService is built on besides its store.
pub struct Deps {
    /// Notifications, subscriptions, user state.
    pub store: Arc<dyn NotifyStore>,
    /// follow-graph (recipient policy, visibility of mentions).
    pub graph: Arc<dyn Relations>,
    /// publish's activities (who may subscribe to one).
    pub activities: Arc<dyn Activities>,
    /// The live log Watch reads.
    pub live: Arc<dyn LiveLog>,
    /// Remind jobs beyond the first page.
    pub jobs: Arc<dyn JobQueue<RemindJob>>,
    /// publish's activity events.
    pub events: Arc<dyn JobQueue<ActivityEvent>>,
    /// Where processed events are settled (publish).
    pub ledger: Arc<dyn EventLedger>,
}

/// Builds NotifyService on `deps` into `set`, its background work (event
/// consumer, remind worker, sweeper) owned by the set.
pub fn build(cfg: &FeedConfig, deps: Deps, ctx: &BuildContext, set: &mut ServiceSet) -> anyhow::Result<Notifier> {
    let notifier = notifier(
        cfg,
        deps.store,
        deps.live,
        Peers {
            graph: deps.graph,
            activities: deps.activities,
        },
        deps.jobs.clone(),
        ctx.shutdown.clone(),
    )?;
    start_background(
        cfg,
        &notifier,
        deps.events,
        deps.ledger,
        deps.jobs,
        &ctx.shutdown,
        &mut set.tasks,
    );
    register(set, notifier.clone(), &ctx.auth);
    Ok(notifier)
}

/// The notify binary: NotifyService on its store, with the live log, remind
/// jobs and activity events on Redis.
pub struct App;

impl feed_server::Application for App {
    const NAME: &'static str = "notify";
    const DEFAULT_PORTS: (u16, u16) = (50064, 9094);
    const HEALTH_NAMES: &'static [&'static str] = &[SERVICE_NAME];

    async fn migrate(cfg: &FeedConfig) -> anyhow::Result<()> {
        migrate(cfg).await
    }

    fn check(cfg: &FeedConfig) -> anyhow::Result<()> {
        require("redis.url", &cfg.redis.url)?;
        require("clients.follow_graph_url", &cfg.clients.follow_graph_url)?;
        require("clients.publish_url", &cfg.clients.publish_url)?;
        require("clients.token", &cfg.clients.token)
    }

    async fn build(cfg: &FeedConfig, ctx: &BuildContext) -> anyhow::Result<Option<ServiceSet>> {
        let Some(store) = ctx.open("notify storage", || open_store(cfg)).await else {
            return Ok(None);
        };
        let graph = feed_clients::FollowGraphClient::from_config(cfg)?;
        let publish = feed_server::client::peer(&cfg.clients, &cfg.clients.publish_url)?;
        let mut set = ServiceSet::default();
        set.readiness.push(graph.readiness());
        set.readiness.push(feed_server::client::peer_ready(
            "publish",
            publish.clone(),
            feed_clients::PUBLISH_SERVICE,
        ));
        let publish_client = Arc::new(GrpcPublish::new(publish, &cfg.clients.token)?);
        let deps = Deps {
            store,
            graph: Arc::new(graph),
            live: open_live(cfg).await?,
            jobs: open_jobs(cfg).await?,
            events: open_events(cfg).await?,
            activities: publish_client.clone(),
            ledger: publish_client,
        };
        build(cfg, deps, ctx, &mut set)?;
        Ok(Some(set))
    }
}
