//! feedd: every feed service in one process, on one port, on embedded
//! storage. Tests call [`run`] on `127.0.0.1:0`; `main` adds flags and signals.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use feed_server::{Authenticator, BuildContext, FeedConfig, ServeOptions, ServiceSet, Shutdown, StartUp, serve_after};
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
    let auth = Authenticator::from_config(&cfg.auth)?.with_server_limits(cfg);
    if !auth.is_empty() {
        return Ok((auth, None));
    }
    let token = dev_token(&cfg.storage.data_dir)?;
    let auth = Authenticator::new([(token.clone(), feed_server::Role::Internal)]).with_server_limits(cfg);
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

/// Builds every service on `stores` through the same crate functions the
/// separate binaries use, with the fanout workers, sweepers and tails as
/// owned background tasks. Services call each other over gRPC on
/// `self_addr` (this process's own listener), except the timeline, which
/// reads follow-graph and publish in process.
pub async fn services(
    cfg: &FeedConfig,
    stores: Stores,
    ctx: &BuildContext,
    self_addr: std::net::SocketAddr,
) -> anyhow::Result<ServiceSet> {
    let mut cfg = cfg.clone();
    for url in [&mut cfg.clients.follow_graph_url, &mut cfg.clients.publish_url] {
        if url.is_empty() {
            *url = format!("http://{self_addr}");
        }
    }
    let cfg = &cfg;
    let token = &cfg.clients.token;
    let mut set = ServiceSet::default();
    let follow_graph = FollowGraph::new(stores.graph);
    set.tasks.spawn(
        "edge log trim",
        follow_graph::trim_edge_log(follow_graph.clone(), cfg, ctx.shutdown.clone()),
    );
    follow_graph::register(&mut set, follow_graph.clone(), &ctx.auth);

    // One follow-graph client (one balanced channel) serves publish, the workers and notify.
    let follow_graph_client = Arc::new(feed_clients::FollowGraphClient::from_config(cfg)?);
    let graph: Arc<dyn publish::Graph> = follow_graph_client.clone();
    let queue = publish::open_queue(cfg).await?;
    // The events publish emits reach notify on the same queue (in process, or the Redis Stream).
    let events = publish::open_event_queue(cfg).await?;
    let inbox = publish::open_inbox(cfg, publish::system_clock()).await?;
    let deps = publish::Deps {
        store: stores.activities,
        graph: graph.clone(),
        queue: queue.clone(),
        events: events.clone(),
        inbox: inbox.clone(),
    };
    let publisher = publish::app::build(cfg, deps, ctx, &mut set).await?;
    let ledger = Arc::new(publisher.clone());
    let workers = publish::app::WorkerDeps {
        ledger,
        queue,
        events: events.clone(),
        graph,
        inbox: inbox.clone(),
    };
    publish::app::spawn_workers(cfg, workers, &ctx.shutdown, &mut set.tasks);

    // In one process the timeline calls the services directly, not over loopback gRPC.
    let sources = InProcessSources::new(follow_graph, publisher.clone(), inbox.clone());
    timeline::build(cfg, Arc::new(sources), inbox, &ctx.auth, &mut set);

    let deps = notify::Deps {
        store: stores.notes,
        graph: follow_graph_client,
        activities: Arc::new(sources::InProcessActivities(publisher)),
        live: notify::open_live(cfg).await?,
        jobs: notify::open_jobs(cfg).await?,
        events,
        ledger: Arc::new(notify::GrpcPublish::new(
            feed_server::client::peer(&cfg.clients, &cfg.clients.publish_url)?,
            token,
        )?),
    };
    notify::build(cfg, deps, ctx, &mut set)?;
    Ok(set)
}

/// Serves every service on `listener` until `shutdown`, then drains.
/// `token` is the internal token the services use to call each other.
pub async fn run(
    mut cfg: FeedConfig,
    auth: Authenticator,
    token: String,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let self_addr = listener.local_addr()?;
    cfg.clients.token = token;
    let server = cfg.server.clone();
    let ctx = BuildContext {
        auth,
        start: StartUp::default(),
        shutdown: shutdown.clone(),
    };
    // Health answers NOT_SERVING while the stores are unreachable (a CQL
    // node down at start); the log says why.
    let build = async {
        let Some(stores) = ctx.open("storage", || Stores::open(&cfg)).await else {
            return Ok(None);
        };
        services(&cfg, stores, &ctx, self_addr).await.map(Some)
    };
    serve_after(
        &SERVICE_NAMES,
        &ctx.start,
        build,
        ServeOptions {
            config: server,
            listener,
            shutdown,
        },
    )
    .await
}
