//! The follow-graph server binary.

#[global_allocator]
static ALLOC: feed_server::Allocator = feed_server::Allocator;

use std::path::PathBuf;

use clap::Parser;
use feed_server::{Authenticator, FeedConfig, ServiceSet, Shutdown, StartUp, run_after_signal, telemetry};
use follow_graph::FollowGraph;

/// Serves feed.followgraph.v1.FollowGraphService.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (then FEED__SECTION__KEY variables override it).
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
        return follow_graph::migrate(&cfg).await;
    }
    let auth = Authenticator::from_config(&cfg.auth)?;
    anyhow::ensure!(
        !auth.is_empty(),
        "no service tokens: set auth.internal_tokens, auth.bff_tokens or auth.tokens_file"
    );
    let shutdown = Shutdown::new();
    // Health answers NOT_SERVING while the store is unreachable (a CQL node down at start).
    let start = StartUp::default();
    let build = async {
        let Some(store) = start
            .retry_until("follow-graph storage", &shutdown, || follow_graph::open_store(&cfg))
            .await
        else {
            return Ok(None);
        };
        let mut set = ServiceSet::default();
        follow_graph::register(&mut set, FollowGraph::new(store), &auth);
        Ok(Some(set))
    };
    run_after_signal(
        &[follow_graph::SERVICE_NAME],
        &start,
        build,
        &cfg.server,
        shutdown.clone(),
    )
    .await
}
