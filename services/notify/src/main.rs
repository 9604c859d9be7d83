//! The notify server binary.

#[global_allocator]
static ALLOC: feed_server::Allocator = feed_server::Allocator;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use feed_server::{Authenticator, FeedConfig, ServiceSet, Shutdown, StartUp, run_after_signal, telemetry};

/// Serves feed.notify.v1.NotifyService.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (FEED__SECTION__KEY variables override it).
    #[arg(long, env = "FEED_CONFIG")]
    config: Option<PathBuf>,
    /// Apply the ScyllaDB schema and exit.
    #[arg(long)]
    migrate: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = FeedConfig::load(args.config.as_deref())?;
    telemetry::init(&cfg.telemetry);
    if args.migrate {
        return notify::migrate(&cfg).await;
    }
    let auth = Authenticator::from_config(&cfg.auth)?;
    anyhow::ensure!(
        !auth.is_empty(),
        "no service tokens: set auth.internal_tokens or auth.tokens_file"
    );
    anyhow::ensure!(!cfg.redis.url.is_empty(), "redis.url is required (live log, events)");
    anyhow::ensure!(
        !cfg.clients.follow_graph_url.is_empty(),
        "clients.follow_graph_url is required"
    );
    anyhow::ensure!(!cfg.clients.publish_url.is_empty(), "clients.publish_url is required");
    anyhow::ensure!(!cfg.clients.token.is_empty(), "clients.token is required");
    let shutdown = Shutdown::new();
    // Health answers NOT_SERVING while the store is unreachable (a CQL node down at start).
    let start = StartUp::default();
    let build = async {
        let Some(store) = start
            .retry_until("notify storage", &shutdown, || notify::open_store(&cfg))
            .await
        else {
            return Ok(None);
        };
        let graph = Arc::new(notify::GrpcGraph::new(
            feed_server::client::balanced(&cfg.clients.follow_graph_url)?,
            &cfg.clients.token,
        )?);
        let jobs = notify::open_jobs(&cfg).await?;
        let notifier = notify::notifier(
            &cfg,
            store,
            notify::open_live(&cfg).await?,
            graph,
            jobs.clone(),
            shutdown.clone(),
        )?;
        let ledger = Arc::new(notify::GrpcEventLedger::new(
            feed_server::client::balanced(&cfg.clients.publish_url)?,
            &cfg.clients.token,
        )?);
        notify::start_background(&notifier, notify::open_events(&cfg).await?, ledger, jobs, &shutdown);
        let mut set = ServiceSet::default();
        notify::register(&mut set, notifier, &auth);
        Ok(Some(set))
    };
    run_after_signal(&[notify::SERVICE_NAME], &start, build, &cfg.server, shutdown.clone()).await
}
