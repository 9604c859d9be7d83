//! follow-graph: who follows which feed, blocks, mutes, counts and the
//! celebrity flag, served over gRPC.

pub mod error;
pub mod grpc;
pub mod service;
pub mod store;

use std::sync::Arc;

use feed_proto::followgraph::v1::follow_graph_service_server::FollowGraphServiceServer;
use feed_server::{Authenticator, FeedConfig, ServiceSet};

pub use service::FollowGraph;
use store::{GraphPolicy, GraphStore};

/// The gRPC name of this service.
pub const SERVICE_NAME: &str = "feed.followgraph.v1.FollowGraphService";

/// The store policy from configuration.
pub fn policy(cfg: &FeedConfig) -> GraphPolicy {
    let c = &cfg.follow_graph;
    GraphPolicy::new(c.celebrity_threshold, c.celebrity_hysteresis, c.max_following)
        .with_pair_limits(c.max_blocks, c.max_mutes)
}

/// Opens the configured backend: ScyllaDB when `scylla.nodes` is set (its
/// schema must have been applied with `--migrate`), else the embedded store
/// under `storage.data_dir/follow-graph`.
pub async fn open_store(cfg: &FeedConfig) -> anyhow::Result<Arc<dyn GraphStore>> {
    if !cfg.scylla.node_list().is_empty() {
        let store = store::scylla::ScyllaGraphStore::connect(&cfg.scylla, policy(cfg)).await?;
        return Ok(Arc::new(store));
    }
    let dir = cfg.storage.data_dir.join("follow-graph");
    std::fs::create_dir_all(&dir)?;
    Ok(Arc::new(
        store::embedded::EmbeddedGraphStore::open(&dir, policy(cfg))?.with_sync(cfg.storage.sync_writes),
    ))
}

/// Adds the service, its health name and its readiness check to `set`.
pub fn register(set: &mut ServiceSet, graph: FollowGraph, auth: &Authenticator) {
    let store = graph.store().clone();
    set.routes.add_service(
        auth.guard(
            FollowGraphServiceServer::new(grpc::FollowGraphGrpc::new(graph))
                .max_decoding_message_size(feed_server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(feed_server::MAX_MESSAGE_BYTES),
        ),
    );
    set.names.push(SERVICE_NAME);
    set.readiness.push(Arc::new(move || {
        let store = store.clone();
        Box::pin(async move { store.ping().await.map_err(|e| format!("follow-graph storage: {e}")) })
    }));
}

/// Trims the edge log once a minute (every replica: trims are idempotent)
/// until shutdown.
pub fn trim_edge_log(
    graph: FollowGraph,
    cfg: &FeedConfig,
    shutdown: feed_server::Shutdown,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let retention = service::LogRetention {
        keep_ms: cfg.follow_graph.edge_log_keep_secs.saturating_mul(1000).max(1),
        ..service::LogRetention::default()
    };
    async move { trim_every_minute(graph, retention, shutdown).await }
}

async fn trim_every_minute(graph: FollowGraph, retention: service::LogRetention, shutdown: feed_server::Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            _ = shutdown.wait() => return,
        }
        if let Err(e) = graph.trim_edge_log(retention).await {
            tracing::warn!(error = %e, "edge log trim failed");
        }
    }
}

/// Retries failed graph token withdrawals every 100 ms until shutdown: the
/// window in which a timeline may serve a follow list older than a change
/// answered while Redis was unreachable from here (and reachable again).
async fn sweep_tokens(graph: FollowGraph, shutdown: feed_server::Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            _ = shutdown.wait() => return,
        }
        graph.sweep_tokens().await;
    }
}

/// The `--migrate` step: applies the ScyllaDB schema when ScyllaDB is
/// configured. The embedded store creates its keyspaces on open.
pub async fn migrate(cfg: &FeedConfig) -> anyhow::Result<()> {
    if cfg.scylla.node_list().is_empty() {
        tracing::info!("embedded store: nothing to migrate");
        return Ok(());
    }
    store::scylla::migrate(&cfg.scylla).await?;
    tracing::info!(keyspace = %cfg.scylla.keyspace, "follow-graph schema applied");
    Ok(())
}

/// The follow-graph binary: the service on its configured store.
pub struct App;

impl feed_server::Application for App {
    const NAME: &'static str = "follow-graph";
    const DEFAULT_PORTS: (u16, u16) = (50061, 9091);
    const HEALTH_NAMES: &'static [&'static str] = &[SERVICE_NAME];

    async fn migrate(cfg: &FeedConfig) -> anyhow::Result<()> {
        migrate(cfg).await
    }

    fn check(_: &FeedConfig) -> anyhow::Result<()> {
        Ok(())
    }

    async fn build(cfg: &FeedConfig, ctx: &feed_server::BuildContext) -> anyhow::Result<Option<ServiceSet>> {
        let Some(store) = ctx.open("follow-graph storage", || open_store(cfg)).await else {
            return Ok(None);
        };
        let mut set = ServiceSet::default();
        let mut graph = FollowGraph::new(store);
        if !cfg.redis.url.is_empty() {
            // Timelines hold follow lists under graph tokens kept beside
            // the inboxes; without Redis they ask for the version each read.
            let tokens = feed_inbox::GraphTokens::connect(&cfg.redis.url)
                .await
                .map_err(|e| anyhow::anyhow!("graph tokens on redis.url: {e}"))?;
            graph = graph.with_tokens(Arc::new(tokens));
            set.tasks
                .spawn("graph token sweep", sweep_tokens(graph.clone(), ctx.shutdown.clone()));
        }
        set.tasks
            .spawn("edge log trim", trim_edge_log(graph.clone(), cfg, ctx.shutdown.clone()));
        register(&mut set, graph, &ctx.auth);
        Ok(Some(set))
    }
}
