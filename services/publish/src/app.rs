//! How publish and fanout-worker processes are put together: the binaries
//! build from configuration through [`App`] and [`WorkerApp`]; feedd calls
//! [`build`] and [`spawn_workers`] with the pieces it shares in process.

use std::sync::Arc;
use std::time::Duration;

use feed_inbox::InboxStore;
use feed_server::app::require;
use feed_server::{Application, BuildContext, FeedConfig, ServiceSet, Shutdown, Tasks};

use crate::fanout::{GrpcLedger, JobLedger};
use crate::queue::{EventQueue, FanoutQueue, RedisFanoutQueue};
use crate::store::ActivityStore;
use crate::{FanoutWorker, Graph, Publisher};

/// What PublishService is built on.
pub struct Deps {
    /// Activities, outboxes and job records.
    pub store: Arc<dyn ActivityStore>,
    /// follow-graph (authorization, visibility, rebuilds).
    pub graph: Arc<dyn Graph>,
    /// Where fanout jobs are enqueued.
    pub queue: Arc<dyn FanoutQueue>,
    /// Where workers hand activity events to notify (the sweeper asks it
    /// whether an event job is still waiting there).
    pub events: Arc<EventQueue>,
    /// Where RebuildInbox writes.
    pub inbox: Arc<dyn InboxStore>,
}

/// Builds PublishService on `deps` into `set`: the publisher on a leased
/// node id, with the sweeper (stale jobs, due scheduled items) and the
/// edge-log tail as the set's background tasks.
pub async fn build(
    cfg: &FeedConfig,
    deps: Deps,
    ctx: &BuildContext,
    set: &mut ServiceSet,
) -> anyhow::Result<Publisher> {
    let clock = crate::system_clock();
    let ids = crate::id_generator(cfg, clock.clone(), &ctx.shutdown, &mut set.tasks).await?;
    let mut publisher = Publisher::new(
        deps.store,
        deps.graph,
        deps.queue,
        deps.events,
        ids,
        clock,
        crate::publish_rules(cfg),
    );
    // Replicas on one Redis share each actor's fanout budget.
    if !cfg.redis.url.is_empty() {
        publisher = publisher.with_shared_budget(feed_redis::Redis::connect(&cfg.redis.url).await?);
    }
    set.tasks.adopt(
        "publish sweeper",
        crate::spawn_sweeper(publisher.clone(), cfg, ctx.shutdown.clone()),
    );
    set.tasks.adopt(
        "edge log tail",
        crate::spawn_edge_tail(publisher.clone(), ctx.shutdown.clone()),
    );
    crate::register(set, publisher.clone(), deps.inbox, &ctx.auth);
    Ok(publisher)
}

/// What fanout workers run on.
pub struct WorkerDeps {
    /// Job records: publish in process, or over gRPC.
    pub ledger: Arc<dyn JobLedger>,
    /// The job stream.
    pub queue: Arc<dyn FanoutQueue>,
    /// Where activity events for notify go.
    pub events: Arc<EventQueue>,
    /// Followers of a feed, relations for purges.
    pub graph: Arc<dyn Graph>,
    /// The inboxes written.
    pub inbox: Arc<dyn InboxStore>,
}

/// Starts `fanout.workers` fanout workers into `tasks`; each finishes the
/// jobs in hand after `shutdown`.
pub fn spawn_workers(cfg: &FeedConfig, deps: WorkerDeps, shutdown: &Shutdown, tasks: &mut Tasks) {
    for _ in 0..cfg.fanout.workers {
        let worker = FanoutWorker::new(
            deps.ledger.clone(),
            deps.queue.clone(),
            deps.events.clone(),
            deps.graph.clone(),
            deps.inbox.clone(),
            crate::worker_config(cfg),
        );
        tasks.spawn("fanout worker", worker.run(shutdown.clone()));
    }
}

/// The publish binary: PublishService, the sweeper, the scheduled-item
/// releaser and the edge-log tail. Fanout runs in fanout-worker processes.
pub struct App;

impl Application for App {
    const NAME: &'static str = "publish";
    const DEFAULT_PORTS: (u16, u16) = (50062, 9092);
    const HEALTH_NAMES: &'static [&'static str] = &[crate::SERVICE_NAME];

    async fn migrate(cfg: &FeedConfig) -> anyhow::Result<()> {
        crate::migrate(cfg).await
    }

    fn check(cfg: &FeedConfig) -> anyhow::Result<()> {
        // Without Redis the jobs would go to an in-process queue that only
        // feedd's own workers consume: fanout, edge and event jobs would
        // silently never run.
        require("redis.url", &cfg.redis.url)?;
        require("clients.follow_graph_url", &cfg.clients.follow_graph_url)?;
        require("clients.token", &cfg.clients.token)
    }

    async fn build(cfg: &FeedConfig, ctx: &BuildContext) -> anyhow::Result<Option<ServiceSet>> {
        let Some(store) = ctx.open("publish storage", || crate::open_store(cfg)).await else {
            return Ok(None);
        };
        let graph = feed_clients::FollowGraphClient::from_config(cfg)?;
        let mut set = ServiceSet::default();
        set.readiness.push(graph.readiness());
        let deps = Deps {
            store,
            graph: Arc::new(graph),
            queue: crate::open_queue(cfg).await?,
            events: crate::open_event_queue(cfg).await?,
            inbox: crate::open_inbox(cfg, crate::system_clock()).await?,
        };
        build(cfg, deps, ctx, &mut set).await?;
        Ok(Some(set))
    }
}

/// The health service name the fanout-worker binary reports (its probes ask for it).
pub const FANOUT_WORKER_HEALTH: &str = "feed.publish.v1.FanoutWorker";

/// The fanout-worker binary: consumes the job stream, reads job records
/// from publish and followers from follow-graph over gRPC, writes Redis
/// inboxes. Scaled on stream lag, independently of the servers.
pub struct WorkerApp;

impl Application for WorkerApp {
    const NAME: &'static str = "fanout-worker";
    const DEFAULT_PORTS: (u16, u16) = (50065, 9095);
    const HEALTH_NAMES: &'static [&'static str] = &[FANOUT_WORKER_HEALTH];
    const TAKES_CALLS: bool = false;

    fn check(cfg: &FeedConfig) -> anyhow::Result<()> {
        require("redis.url", &cfg.redis.url)?;
        require("clients.publish_url", &cfg.clients.publish_url)?;
        require("clients.follow_graph_url", &cfg.clients.follow_graph_url)?;
        require("clients.token", &cfg.clients.token)
    }

    async fn build(cfg: &FeedConfig, ctx: &BuildContext) -> anyhow::Result<Option<ServiceSet>> {
        let publish = feed_server::client::peer(&cfg.clients, &cfg.clients.publish_url)?;
        let ledger = Arc::new(GrpcLedger::new(publish.clone(), &cfg.clients.token)?);
        let graph = feed_clients::FollowGraphClient::from_config(cfg)?;
        let (fast, bulk) = crate::open_streams(cfg).await?;
        let queue = Arc::new(feed_queue::Lanes::new(
            fast.clone(),
            bulk.clone(),
            cfg.fanout.bulk_share,
        ));
        let inbox = crate::open_inbox(cfg, crate::system_clock()).await?;
        let mut set = ServiceSet::default();
        let deps = WorkerDeps {
            ledger,
            queue,
            events: crate::open_event_queue(cfg).await?,
            graph: Arc::new(graph.clone()),
            inbox: inbox.clone(),
        };
        spawn_workers(cfg, deps, &ctx.shutdown, &mut set.tasks);
        tracing::info!(workers = set.tasks.len(), "fanout-worker running");
        set.tasks
            .spawn("stream lag report", report_lag(fast, bulk, ctx.shutdown.clone()));
        // Health for the kubelet's gRPC probes; on SIGTERM it drains, then
        // the workers finish their jobs in hand.
        set.names.push(FANOUT_WORKER_HEALTH);
        set.readiness.push(Arc::new(move || {
            let inbox = inbox.clone();
            Box::pin(async move {
                inbox
                    .is_live(0)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("inbox Redis: {e}"))
            })
        }));
        set.readiness.push(graph.readiness());
        set.readiness.push(feed_server::client::peer_ready(
            "publish",
            publish,
            feed_clients::PUBLISH_SERVICE,
        ));
        Ok(Some(set))
    }
}

/// Publishes the job streams' lag (entries not yet delivered to the
/// group) and pending counts, both lanes together: the metric the worker
/// autoscaler follows. The bulk lane's own lag says how far a burst is
/// behind.
async fn report_lag(fast: Arc<RedisFanoutQueue>, bulk: Arc<RedisFanoutQueue>, stop: Shutdown) {
    loop {
        match futures::try_join!(fast.lag(), bulk.lag()) {
            Ok(((lag, pending), (bulk_lag, bulk_pending))) => {
                metrics::gauge!("feed_fanout_stream_lag").set((lag + bulk_lag) as f64);
                metrics::gauge!("feed_fanout_stream_pending").set((pending + bulk_pending) as f64);
                metrics::gauge!("feed_fanout_bulk_stream_lag").set(bulk_lag as f64);
            }
            Err(e) => tracing::warn!(error = %e, "reading stream lag failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.wait() => return,
        }
    }
}
