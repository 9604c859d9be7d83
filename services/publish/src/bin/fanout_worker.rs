//! The fanout worker binary: consumes the job stream, reads job records from
//! publish and followers from follow-graph over gRPC, writes Redis inboxes.
//! Scale it on stream lag, independently of the servers.

#[global_allocator]
static ALLOC: feed_server::Allocator = feed_server::Allocator;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use feed_server::{FeedConfig, ServiceSet, Shutdown, run_until_signal, telemetry};
use publish::fanout::GrpcLedger;
use publish::{FanoutWorker, GrpcGraph, RedisQueue};

/// Runs fanout workers against Redis and the publish and follow-graph services.
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
    anyhow::ensure!(!cfg.redis.url.is_empty(), "redis.url is required");
    anyhow::ensure!(!cfg.clients.publish_url.is_empty(), "clients.publish_url is required");
    anyhow::ensure!(
        !cfg.clients.follow_graph_url.is_empty(),
        "clients.follow_graph_url is required"
    );
    anyhow::ensure!(!cfg.clients.token.is_empty(), "clients.token is required");
    let publish_channel = feed_server::client::balanced(&cfg.clients.publish_url)?;
    let graph_channel = feed_server::client::balanced(&cfg.clients.follow_graph_url)?;
    let ledger = Arc::new(GrpcLedger::new(publish_channel, &cfg.clients.token)?);
    let graph = Arc::new(GrpcGraph::new(graph_channel, &cfg.clients.token)?);
    let queue = Arc::new(RedisQueue::connect(&cfg.redis.url, &cfg.fanout.stream, &cfg.fanout.group).await?);
    let inbox = publish::open_inbox(&cfg, publish::system_clock()).await?;
    let events = publish::open_event_queue(&cfg).await?;
    let stop = Shutdown::new();
    let mut tasks = Vec::new();
    for _ in 0..cfg.fanout.workers.max(1) {
        let worker = FanoutWorker::new(
            ledger.clone(),
            queue.clone(),
            events.clone(),
            graph.clone(),
            inbox.clone(),
            publish::worker_config(&cfg),
        );
        tasks.push(tokio::spawn(worker.run(stop.clone())));
    }
    tracing::info!(workers = tasks.len(), "fanout-worker running");
    tokio::spawn(report_lag(queue.clone(), stop.clone()));
    // A health server for the kubelet's gRPC probes and the metrics port; it
    // drains on SIGTERM, then the workers finish their jobs in hand.
    let mut set = ServiceSet::default();
    set.names.push(publish::FANOUT_WORKER_HEALTH);
    set.readiness.push(Arc::new(move || {
        let inbox = inbox.clone();
        Box::pin(async move { inbox.is_live(0).await.is_ok() })
    }));
    let served = run_until_signal(set, &cfg.server, stop.clone()).await;
    stop.trigger();
    for t in tasks {
        let _ = t.await;
    }
    served
}

/// Publishes the job stream's lag (entries not yet delivered to the group)
/// and pending count: the metric the worker autoscaler follows.
async fn report_lag(queue: Arc<RedisQueue>, stop: Shutdown) {
    loop {
        match queue.lag().await {
            Ok((lag, pending)) => {
                metrics::gauge!("feed_fanout_stream_lag").set(lag as f64);
                metrics::gauge!("feed_fanout_stream_pending").set(pending as f64);
            }
            Err(e) => tracing::warn!(error = %e, "reading stream lag failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
            _ = stop.wait() => return,
        }
    }
}
