//! The publish server binary: PublishService, the sweeper and the
//! scheduled-item releaser. Fanout runs in `fanout-worker` processes.

#[global_allocator]
static ALLOC: feed_server::Allocator = feed_server::Allocator;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use feed_server::{Authenticator, FeedConfig, ServiceSet, Shutdown, StartUp, run_after_signal, telemetry};
use publish::{GrpcGraph, Publisher};

/// Serves feed.publish.v1.PublishService.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (FEED__SECTION__KEY variables override it).
    #[arg(long, env = "FEED_CONFIG")]
    config: Option<PathBuf>,
    /// Apply the storage schema and exit (a Kubernetes Job runs this first).
    #[arg(long)]
    migrate: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = FeedConfig::load(args.config.as_deref())?;
    telemetry::init(&cfg.telemetry);
    if args.migrate {
        return publish::migrate(&cfg).await;
    }
    let auth = Authenticator::from_config(&cfg.auth)?;
    anyhow::ensure!(
        !auth.is_empty(),
        "no service tokens: set auth.internal_tokens or auth.tokens_file"
    );
    anyhow::ensure!(
        !cfg.clients.follow_graph_url.is_empty(),
        "clients.follow_graph_url is required"
    );
    anyhow::ensure!(!cfg.clients.token.is_empty(), "clients.token is required");
    let clock = publish::system_clock();
    let shutdown = Shutdown::new();
    // Health answers NOT_SERVING while the store is unreachable (a CQL node down at start).
    let start = StartUp::default();
    let build = async {
        let Some(store) = start
            .retry_until("publish storage", &shutdown, || publish::open_store(&cfg))
            .await
        else {
            return Ok(None);
        };
        let channel = feed_server::client::balanced(&cfg.clients.follow_graph_url)?;
        let graph: Arc<dyn publish::Graph> = Arc::new(GrpcGraph::new(channel, &cfg.clients.token)?);
        let publisher = Publisher::new(
            store,
            graph.clone(),
            publish::open_queue(&cfg).await?,
            publish::id_generator(&cfg, clock.clone(), &shutdown).await?,
            clock.clone(),
            publish::publish_config(&cfg),
        );
        let inbox = publish::open_inbox(&cfg, clock.clone()).await?;
        publish::spawn_sweeper(publisher.clone(), &cfg, shutdown.clone());
        publish::spawn_edge_tail(publisher.clone(), shutdown.clone());
        let mut set = ServiceSet::default();
        publish::register(&mut set, publisher, inbox, &auth);
        Ok(Some(set))
    };
    let result = run_after_signal(&[publish::SERVICE_NAME], &start, build, &cfg.server, shutdown.clone()).await;
    shutdown.trigger();
    result
}
