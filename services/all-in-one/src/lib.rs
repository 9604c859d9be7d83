//! feedd: every feed service in one process, on one port, on embedded
//! storage. Tests call [`run`] on `127.0.0.1:0`; `main` adds flags and signals.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use feed_server::{Authenticator, FeedConfig, ServeOptions, ServiceSet, Shutdown, StartUp, serve_after};
use follow_graph::FollowGraph;

pub mod sources;
pub use sources::InProcessSources;
use tokio::net::TcpListener;

/// Name of the file in the data directory that holds the dev token.
pub const DEV_TOKEN_FILE: &str = "dev-token";

/// Service tokens from configuration; with none configured, an `internal`
/// dev token kept in `data_dir/dev-token` (created once, then reused, so a
/// restart does not invalidate the developer's shell). Returns the
/// authenticator and the dev token when one was made.
pub fn auth_or_dev_token(cfg: &FeedConfig) -> anyhow::Result<(Authenticator, Option<String>)> {
    let auth = Authenticator::from_config(&cfg.auth)?;
    if !auth.is_empty() {
        return Ok((auth, None));
    }
    let token = dev_token(&cfg.storage.data_dir)?;
    let auth = Authenticator::new([(token.clone(), feed_server::Role::Internal)]);
    Ok((auth, Some(token)))
}

fn dev_token(data_dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(data_dir)?;
    let path: PathBuf = data_dir.join(DEV_TOKEN_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path)
        && !existing.trim().is_empty()
    {
        return Ok(existing.trim().to_owned());
    }
    let token = format!("dev-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(&path, format!("{token}\n"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(token)
}

/// The token feedd's services use to call each other: `clients.token`,
/// else the first configured internal token, else the dev token.
pub fn internal_token(cfg: &FeedConfig, dev_token: Option<&str>) -> anyhow::Result<String> {
    if !cfg.clients.token.is_empty() {
        return Ok(cfg.clients.token.clone());
    }
    if let Some(t) = cfg
        .auth
        .internal_tokens
        .split(',')
        .map(str::trim)
        .find(|t| !t.is_empty())
    {
        return Ok(t.to_owned());
    }
    dev_token
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no internal token for service-to-service calls: set clients.token"))
}

/// The durable stores of every service.
pub struct Stores {
    /// follow-graph's.
    pub graph: Arc<dyn follow_graph::store::GraphStore>,
    /// publish's.
    pub activities: Arc<dyn publish::store::ActivityStore>,
    /// notify's.
    pub notes: Arc<dyn notify::store::NotifyStore>,
}

impl Stores {
    /// Opens the configured (embedded by default) stores.
    pub async fn open(cfg: &FeedConfig) -> anyhow::Result<Self> {
        Ok(Self {
            graph: follow_graph::open_store(cfg).await?,
            activities: publish::open_store(cfg).await?,
            notes: notify::open_store(cfg).await?,
        })
    }
}

/// Every service feedd hosts, by gRPC name.
pub const SERVICE_NAMES: [&str; 4] = [
    follow_graph::SERVICE_NAME,
    publish::SERVICE_NAME,
    timeline::SERVICE_NAME,
    notify::SERVICE_NAME,
];

/// Builds every service on `stores`,
/// starting the fanout workers and the sweeper. Services call each other
/// over gRPC on `self_addr` (this process's own listener).
pub async fn services(
    cfg: &FeedConfig,
    stores: Stores,
    auth: &Authenticator,
    token: &str,
    self_addr: std::net::SocketAddr,
    shutdown: &Shutdown,
) -> anyhow::Result<ServiceSet> {
    let mut set = ServiceSet::default();
    let follow_graph = FollowGraph::new(stores.graph);
    follow_graph::register(&mut set, follow_graph.clone(), auth);

    let url = |configured: &str| {
        if configured.is_empty() {
            format!("http://{self_addr}")
        } else {
            configured.to_owned()
        }
    };
    let channel = feed_server::client::balanced(&url(&cfg.clients.follow_graph_url))?;
    let graph: Arc<dyn publish::Graph> = Arc::new(publish::GrpcGraph::new(channel, token)?);
    let clock = publish::system_clock();
    let queue = publish::open_queue(cfg).await?;
    let events = publish::open_event_queue(cfg).await?;
    let inbox = publish::open_inbox(cfg, clock.clone()).await?;
    let publisher = publish::Publisher::new(
        stores.activities,
        graph.clone(),
        queue.clone(),
        publish::id_generator(cfg, clock.clone(), shutdown).await?,
        clock,
        publish::publish_config(cfg),
    );
    for _ in 0..cfg.fanout.workers {
        let worker = publish::FanoutWorker::new(
            Arc::new(publisher.clone()),
            queue.clone(),
            events.clone(),
            graph.clone(),
            inbox.clone(),
            publish::worker_config(cfg),
        );
        tokio::spawn(worker.run(shutdown.clone()));
    }
    publish::spawn_sweeper(publisher.clone(), cfg, shutdown.clone());
    publish::spawn_edge_tail(publisher.clone(), shutdown.clone());
    publish::register(&mut set, publisher.clone(), inbox.clone(), auth);

    // In one process the timeline calls the services directly, not over loopback gRPC.
    let sources = InProcessSources::new(follow_graph, publisher, inbox.clone());
    let tl = timeline::Timeline::new(Arc::new(sources), inbox.clone(), timeline::TimelineConfig::default());
    timeline::register(&mut set, tl, inbox, auth);

    let notify_graph = Arc::new(notify::GrpcGraph::new(
        feed_server::client::balanced(&url(&cfg.clients.follow_graph_url))?,
        token,
    )?);
    let remind_jobs = notify::open_jobs(cfg).await?;
    let notifier = notify::notifier(
        cfg,
        stores.notes,
        notify::open_live(cfg).await?,
        notify_graph,
        remind_jobs.clone(),
        shutdown.clone(),
    )?;
    // The events publish emits reach notify on the same queue (in process, or the Redis Stream).
    let ledger = Arc::new(notify::GrpcEventLedger::new(
        feed_server::client::balanced(&url(&cfg.clients.publish_url))?,
        token,
    )?);
    notify::start_background(&notifier, events, ledger, remind_jobs, shutdown);
    notify::register(&mut set, notifier, auth);
    Ok(set)
}

/// Serves every service on `listener` until `shutdown`, then drains.
/// `token` is the internal token the services use to call each other.
pub async fn run(
    cfg: FeedConfig,
    auth: Authenticator,
    token: String,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let self_addr = listener.local_addr()?;
    let server = cfg.server.clone();
    let stop = shutdown.clone();
    let start = StartUp::default();
    // Health answers NOT_SERVING while the stores are unreachable (a CQL
    // node down at start); the log says why.
    let opening = start.clone();
    let build = async move {
        let Some(stores) = opening.retry_until("storage", &stop, || Stores::open(&cfg)).await else {
            return Ok(None);
        };
        services(&cfg, stores, &auth, &token, self_addr, &stop).await.map(Some)
    };
    serve_after(
        &SERVICE_NAMES,
        &start,
        build,
        ServeOptions {
            config: server,
            listener,
            shutdown,
        },
    )
    .await
}
