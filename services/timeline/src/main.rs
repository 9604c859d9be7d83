//! The timeline server binary.

#[global_allocator]
static ALLOC: feed_server::Allocator = feed_server::Allocator;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use feed_server::{Authenticator, FeedConfig, ServiceSet, run_with_signal, telemetry};
use timeline::{GrpcSources, Timeline, TimelineConfig};

/// Serves feed.timeline.v1.TimelineService.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (FEED__SECTION__KEY variables override it).
    #[arg(long, env = "FEED_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = FeedConfig::load(args.config.as_deref())?;
    telemetry::init(&cfg.telemetry);
    let auth = Authenticator::from_config(&cfg.auth)?;
    anyhow::ensure!(
        !auth.is_empty(),
        "no service tokens: set auth.internal_tokens or auth.tokens_file"
    );
    anyhow::ensure!(!cfg.redis.url.is_empty(), "redis.url is required (inboxes)");
    anyhow::ensure!(
        !cfg.clients.follow_graph_url.is_empty(),
        "clients.follow_graph_url is required"
    );
    anyhow::ensure!(!cfg.clients.publish_url.is_empty(), "clients.publish_url is required");
    anyhow::ensure!(!cfg.clients.token.is_empty(), "clients.token is required");
    let sources = GrpcSources::new(
        feed_server::client::balanced(&cfg.clients.follow_graph_url)?,
        feed_server::client::balanced(&cfg.clients.publish_url)?,
        &cfg.clients.token,
    )?;
    let inbox: Arc<dyn feed_inbox::InboxStore> = Arc::new(
        feed_inbox::RedisInbox::connect(
            &cfg.redis.url,
            feed_inbox::InboxConfig {
                cap: cfg.inbox.cap.max(1),
                ttl_ms: cfg.inbox.ttl_secs.max(1) * 1000,
                cluster: cfg.redis.cluster,
            },
        )
        .await?,
    );
    let timeline = Timeline::new(Arc::new(sources), inbox.clone(), TimelineConfig::default());
    let mut set = ServiceSet::default();
    timeline::register(&mut set, timeline, inbox, &auth);
    run_with_signal(set, &cfg.server).await
}
