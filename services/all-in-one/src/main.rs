//! `feedd`: the whole platform in one process, no server to install.

#[global_allocator]
static ALLOC: feed_server::Allocator = feed_server::Allocator;

use std::path::PathBuf;

use clap::Parser;
use feed_server::{FeedConfig, Shutdown, admin, shutdown, telemetry};
use tokio::net::TcpListener;

/// Runs every feed service on one port with embedded storage.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// gRPC listen address (overrides server.listen).
    #[arg(long)]
    listen: Option<String>,
    /// Embedded storage directory (overrides storage.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Prometheus /metrics address (overrides server.admin_listen); empty disables.
    #[arg(long)]
    admin_listen: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "FEED_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cfg = FeedConfig::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        cfg.server.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        cfg.storage.data_dir = dir;
    }
    if let Some(admin) = args.admin_listen {
        cfg.server.admin_listen = admin;
    }
    telemetry::init(&cfg.telemetry);
    cfg.redis.use_tls()?;
    let (auth, dev_token) = feed_all_in_one::auth_or_dev_token(&cfg)?;
    let token = feed_all_in_one::internal_token(&cfg, dev_token.as_deref())?;
    let listener = TcpListener::bind(&cfg.server.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", cfg.server.listen))?;
    let shutdown = Shutdown::new();
    if !cfg.server.admin_listen.is_empty() {
        // The admin port is a convenience here: a busy port must not stop feedd.
        match TcpListener::bind(&cfg.server.admin_listen).await {
            Ok(l) => {
                let addr = admin::spawn_admin(l, shutdown.clone())?;
                println!("feedd metrics on http://{addr}/metrics");
            }
            Err(e) => {
                tracing::warn!(error = %e, addr = %cfg.server.admin_listen, "metrics port unavailable")
            }
        }
    }
    println!("feedd listening on {}", listener.local_addr()?);
    if let Some(token) = dev_token {
        println!(
            "dev token (internal role, saved in {}): {token}",
            cfg.storage.data_dir.join(feed_all_in_one::DEV_TOKEN_FILE).display()
        );
    }
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown::terminate_signal().await;
        trigger.trigger();
    });
    feed_all_in_one::run(cfg, auth, token, listener, shutdown).await
}
