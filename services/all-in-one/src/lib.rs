//! feedd: every feed service in one process, on one port, on embedded
//! storage. Tests call [`run`] on `127.0.0.1:0`; `main` adds flags and signals.

use std::path::{Path, PathBuf};

use feed_server::{Authenticator, FeedConfig, ServeOptions, ServiceSet, Shutdown, serve};
use follow_graph::FollowGraph;
use tokio::net::TcpListener;

/// Name of the file in the data directory that holds the dev token.
pub const DEV_TOKEN_FILE: &str = "dev-token";

/// Service tokens from configuration; with none configured, an `internal`
/// dev token kept in `data_dir/dev-token` (created once, then reused, so a
/// restart does not invalidate the developer's shell).
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

/// Builds every service on the configured (embedded by default) storage.
pub async fn services(cfg: &FeedConfig, auth: &Authenticator) -> anyhow::Result<ServiceSet> {
    let mut set = ServiceSet::default();
    let graph_store = follow_graph::open_store(cfg).await?;
    follow_graph::register(&mut set, FollowGraph::new(graph_store), auth);
    Ok(set)
}

/// Serves every service on `listener` until `shutdown`, then drains.
pub async fn run(
    cfg: FeedConfig,
    auth: Authenticator,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let set = services(&cfg, &auth).await?;
    serve(
        set,
        ServeOptions {
            config: cfg.server.clone(),
            listener,
            shutdown,
        },
    )
    .await
}
