//! The fanout worker binary: consumes the job stream, reads job records from
//! publish and followers from follow-graph over gRPC, writes Redis inboxes.
//! Scale it on stream lag, independently of the servers.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use feed_server::{FeedConfig, Shutdown, shutdown, telemetry};
use publish::fanout::GrpcLedger;
use publish::{FanoutWorker, GrpcGraph, RedisQueue};
use tonic::transport::Channel;

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
    let publish_channel = Channel::from_shared(cfg.clients.publish_url.clone())?.connect_lazy();
    let graph_channel = Channel::from_shared(cfg.clients.follow_graph_url.clone())?.connect_lazy();
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
    println!("fanout-worker running {} workers", tasks.len());
    shutdown::terminate_signal().await;
    stop.trigger();
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
