//! One start for every service binary (zero-to-production's
//! `Application::build`): the command line, configuration, telemetry, the
//! `--migrate` step, tokens, then the service built from configuration and
//! served until SIGTERM. feedd builds the same services through the same
//! crate functions, so the deployed wiring is the tested wiring.

use std::future::Future;
use std::path::PathBuf;

use clap::Parser;

use crate::{Authenticator, FeedConfig, ServiceSet, Shutdown, StartUp, run_after_signal, telemetry};

/// The command line of every service binary.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    /// TOML configuration file (then FEED__SECTION__KEY variables override it).
    #[arg(long, env = "FEED_CONFIG")]
    pub config: Option<PathBuf>,
    /// Apply the storage schema and exit (a Kubernetes Job runs this first).
    #[arg(long)]
    pub migrate: bool,
}

/// What a service's build is handed besides configuration.
pub struct BuildContext {
    /// The tokens callers present.
    pub auth: Authenticator,
    /// Reports a dependency that is down at start (health says NOT_SERVING meanwhile).
    pub start: StartUp,
    /// Fires on SIGTERM: background tasks and streams end on it.
    pub shutdown: Shutdown,
}

impl BuildContext {
    /// Opens a dependency the service cannot serve without, retrying while
    /// it is unreachable (see [`StartUp::retry_until`]); None on shutdown.
    pub async fn open<T, F, Fut>(&self, what: &str, attempt: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        self.start.retry_until(what, &self.shutdown, attempt).await
    }
}

/// A service as its binary runs it.
pub trait Application {
    /// The binary's name in logs.
    const NAME: &'static str;
    /// The gRPC names health reports (NOT_SERVING while the build waits).
    const HEALTH_NAMES: &'static [&'static str];
    /// False for a process that serves health and metrics only (fanout-worker).
    const TAKES_CALLS: bool = true;
    /// Default gRPC and admin (metrics) ports on 127.0.0.1, distinct per
    /// binary so a split deployment on one host needs no port settings.
    const DEFAULT_PORTS: (u16, u16);

    /// Applies the storage schema (`--migrate`).
    fn migrate(cfg: &FeedConfig) -> impl Future<Output = anyhow::Result<()>> {
        let _ = cfg;
        async move {
            tracing::info!(service = Self::NAME, "no storage schema to apply");
            Ok(())
        }
    }

    /// Checks the configuration the service needs, before anything starts.
    fn check(cfg: &FeedConfig) -> anyhow::Result<()>;

    /// Builds the services from configuration; None when shutdown came first.
    fn build(cfg: &FeedConfig, ctx: &BuildContext) -> impl Future<Output = anyhow::Result<Option<ServiceSet>>>;
}

/// `main` of a service binary: parses [`Args`], loads configuration, then
/// migrates, or builds and serves until SIGTERM and drains.
pub async fn main<A: Application>() -> anyhow::Result<()> {
    let args = Args::parse();
    let (listen, admin) = A::DEFAULT_PORTS;
    let cfg = FeedConfig::load_with_ports(args.config.as_deref(), listen, admin)?;
    telemetry::init(&cfg.telemetry);
    cfg.redis.use_tls()?;
    if args.migrate {
        return A::migrate(&cfg).await;
    }
    A::check(&cfg)?;
    let auth = Authenticator::from_config(&cfg.auth)?.with_server_limits(&cfg);
    anyhow::ensure!(
        !A::TAKES_CALLS || !auth.is_empty(),
        "no service tokens: set auth.internal_tokens, auth.bff_tokens or auth.tokens_file"
    );
    let ctx = BuildContext {
        auth,
        start: StartUp::default(),
        shutdown: Shutdown::new(),
    };
    let result = run_after_signal(
        A::HEALTH_NAMES,
        &ctx.start,
        A::build(&cfg, &ctx),
        &cfg.server,
        ctx.shutdown.clone(),
    )
    .await;
    ctx.shutdown.trigger();
    result
}

/// Fails naming the configuration key when a required setting is empty.
pub fn require(key: &str, value: &str) -> anyhow::Result<()> {
    anyhow::ensure!(!value.trim().is_empty(), "{key} is required");
    Ok(())
}
