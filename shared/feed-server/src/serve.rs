//! Runs a gRPC server: health, reflection, auth-wrapped services, limits,
//! request ids and metrics, then drains on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tower::ServiceBuilder;

use crate::Shutdown;
use crate::client::{pem_pair, read_pem};
use crate::config::ServerConfig;
use crate::limits::LimitsLayer;
use crate::observe::ObserveLayer;
use crate::tasks::Tasks;

/// Answers whether the server's dependencies respond (storage, Redis, the
/// services it calls), or why not: the reason is logged while NOT_SERVING.
pub type Readiness = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The gRPC services one server hosts, already wrapped with auth. Each
/// service crate adds itself; feedd lets every service add itself to one set.
#[derive(Default)]
pub struct ServiceSet {
    /// The routes to serve.
    pub routes: RoutesBuilder,
    /// Full gRPC names (`feed.followgraph.v1.FollowGraphService`): each gets
    /// a health status and is listed by reflection.
    pub names: Vec<&'static str>,
    /// Checks run before health turns SERVING (and then periodically).
    pub readiness: Vec<Readiness>,
    /// Background work of these services, awaited once the server has drained.
    pub tasks: Tasks,
}

/// Everything [`serve`] needs besides the services.
pub struct ServeOptions {
    /// Limits, timeouts, TLS and drain settings.
    pub config: ServerConfig,
    /// Bound gRPC listener (`127.0.0.1:0` in tests).
    pub listener: TcpListener,
    /// Resolves when the server should drain and stop.
    pub shutdown: Shutdown,
}

/// The health service name a liveness probe asks for: SERVING as long as
/// the server runs (readiness probes ask for the service's own name).
pub const LIVENESS: &str = "liveness";

/// Whether this process's gRPC server answers SERVING (a process runs one
/// server): the admin port's `/readyz` tells it to probes that cannot
/// speak TLS to the gRPC port.
static SERVING: AtomicBool = AtomicBool::new(false);

/// Whether this process's server is ready (health SERVING).
pub fn serving() -> bool {
    SERVING.load(Ordering::Relaxed)
}

/// How often readiness is re-checked once serving.
const READINESS_PERIOD: Duration = Duration::from_secs(5);
/// How often a serving server re-checks after a failed check.
const RECHECK_PERIOD: Duration = Duration::from_secs(1);
/// Failed checks in a row before a serving server turns NOT_SERVING.
const UNREADY_AFTER: u32 = 3;

/// The server's TLS from `server.tls_cert`, `server.tls_key` and
/// `server.tls_client_ca`; None for plaintext. Half a setting is refused
/// rather than served in plaintext.
fn tls_config(config: &ServerConfig) -> anyhow::Result<Option<ServerTlsConfig>> {
    let Some((cert, key)) = pem_pair(
        ("server.tls_cert", &config.tls_cert),
        ("server.tls_key", &config.tls_key),
    )?
    else {
        anyhow::ensure!(
            config.tls_client_ca.is_empty(),
            "server.tls_client_ca needs server.tls_cert and server.tls_key"
        );
        return Ok(None);
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if !config.tls_client_ca.is_empty() {
        tls = tls.client_ca_root(Certificate::from_pem(read_pem(
            "server.tls_client_ca",
            &config.tls_client_ca,
        )?));
    }
    Ok(Some(tls))
}

/// Serves until `opts.shutdown` triggers, then drains. Health is NOT_SERVING
/// until every readiness check passes, and again from the moment shutdown starts.
pub async fn serve(set: ServiceSet, opts: ServeOptions) -> anyhow::Result<()> {
    let ServeOptions {
        config,
        listener,
        shutdown,
    } = opts;
    let addr: SocketAddr = listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    let mut all_names: Vec<&'static str> = set.names.clone();
    all_names.push("");
    for name in &all_names {
        health.set_service_status(*name, ServingStatus::NotServing).await;
    }
    // Liveness answers SERVING while the process serves, whatever its
    // dependencies do: a Redis outage must not restart every pod.
    health.set_service_status(LIVENESS, ServingStatus::Serving).await;

    // Reflection lists only what this server hosts, not every service in the contract.
    let reflection = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(feed_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        for name in &set.names {
            b = b.with_service_name(*name);
        }
        b
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let mut routes = set.routes;
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let mut builder = Server::builder()
        .max_connection_age(Duration::from_secs(config.max_connection_age_secs.max(1)))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // Unset, tonic lifts hyper's limit: one connection could hold
        // unboundedly many streams.
        .max_concurrent_streams(config.max_concurrent_streams.max(1));
    if let Some(tls) = tls_config(&config)? {
        builder = builder.tls_config(tls)?;
    }
    // Shed instead of queueing: a saturated replica answers RESOURCE_EXHAUSTED
    // at once and the client retries elsewhere. The deadline and the
    // shedding answer inside the metrics layer, so both are counted.
    let layers = ServiceBuilder::new()
        .layer(ObserveLayer)
        .layer(LimitsLayer::new(Duration::from_millis(
            config.request_timeout_ms.max(1),
        )))
        .load_shed()
        .concurrency_limit(config.concurrency_limit.max(1))
        .into_inner();
    let router = builder.layer(layers).add_routes(routes.routes());

    let readiness = set.readiness;
    let ready_health = health.clone();
    let ready_shutdown = shutdown.clone();
    let ready_names = all_names.clone();
    let ready_task = tokio::spawn(async move {
        let mut last = None;
        let mut failures = 0u32;
        loop {
            let mut reasons = Vec::new();
            for check in &readiness {
                if let Err(why) = check().await {
                    reasons.push(why);
                }
            }
            let ok = reasons.is_empty();
            if ready_shutdown.is_triggered() {
                return;
            }
            failures = if ok { 0 } else { failures + 1 };
            // A serving replica leaves rotation only once its checks have
            // failed UNREADY_AFTER times in a row, a second apart: on one
            // failed check (a Redis blip) every replica would leave at once.
            let ready = ok || (last == Some(true) && failures < UNREADY_AFTER);
            if !ok && ready {
                tracing::warn!(reasons = %reasons.join("; "), failures, "readiness check failed; still SERVING");
            }
            if last != Some(ready) {
                let status = if ready {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for name in &ready_names {
                    ready_health.set_service_status(*name, status).await;
                }
                SERVING.store(ready, Ordering::Relaxed);
                if ready {
                    tracing::info!("ready: SERVING");
                } else {
                    tracing::warn!(reasons = %reasons.join("; "), "not ready: NOT_SERVING");
                }
                last = Some(ready);
            }
            let period = match (ok, ready) {
                (true, _) => READINESS_PERIOD,
                (false, true) => RECHECK_PERIOD,
                (false, false) => Duration::from_millis(200),
            };
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = ready_shutdown.wait() => return,
            }
        }
    });

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Set TCP_NODELAY on accepted sockets: a listener handed in bypasses the
    // builder's setting, and Nagle's algorithm would hold small responses ~40 ms.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(|conn| conn.map(crate::batched::Batched::new));
    let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = stop_rx.await;
    }));
    tracing::info!(%addr, services = ?set.names, "serving");

    let tasks = set.tasks;
    tokio::select! {
        result = &mut server => {
            ready_task.abort();
            shutdown.trigger();
            tasks.join(Duration::from_millis(config.drain_timeout_ms)).await;
            return Ok(result??);
        }
        _ = shutdown.wait() => {}
    }
    tracing::info!("draining");
    ready_task.abort();
    SERVING.store(false, Ordering::Relaxed);
    for name in &all_names {
        health.set_service_status(*name, ServingStatus::NotServing).await;
    }
    tokio::time::sleep(Duration::from_millis(config.drain_delay_ms)).await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_millis(config.drain_timeout_ms), &mut server).await {
        Ok(result) => result??,
        Err(_) => {
            tracing::warn!("drain timed out; closing remaining connections");
            server.abort();
        }
    }
    // Workers finish the jobs in hand; they stopped taking new ones at the signal.
    tasks.join(Duration::from_millis(config.drain_timeout_ms)).await;
    tracing::info!("stopped");
    Ok(())
}

/// A server's start: its build reports here when a dependency it must open
/// (a store) fails, and [`serve_after`] then answers health meanwhile.
#[derive(Clone)]
pub struct StartUp {
    unready: tokio::sync::watch::Sender<bool>,
}

impl Default for StartUp {
    fn default() -> Self {
        Self {
            unready: tokio::sync::watch::channel(false).0,
        }
    }
}

impl StartUp {
    /// Runs `attempt` until it succeeds, logging why each failure leaves the
    /// server unready and retrying with a growing pause (0.5 s up to 5 s);
    /// None when `shutdown` fires first.
    pub async fn retry_until<T, F, Fut>(&self, what: &str, shutdown: &Shutdown, mut attempt: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let mut pause = Duration::from_millis(500);
        loop {
            match attempt().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "{what} not reachable; not ready, retrying");
                    self.unready.send_replace(true);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.wait() => return None,
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    async fn failed(&self) {
        let mut rx = self.unready.subscribe();
        // The sender lives in self: this ends only once a failure is reported.
        let _ = rx.wait_for(|unready| *unready).await;
    }
}

/// Serves what `build` makes (see [`serve`]). While a dependency the build
/// must open is down (a CQL node at start: `start` says so), the server is
/// up meanwhile, answering health — NOT_SERVING for `names` and "",
/// SERVING for liveness — and UNAVAILABLE to every other call, while the
/// build retries and logs why ([`StartUp::retry_until`]). A build that is
/// only slow never shows that: connections wait in the listen backlog.
/// Shutdown during the build ends it.
pub async fn serve_after<F>(names: &[&'static str], start: &StartUp, build: F, opts: ServeOptions) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<Option<ServiceSet>>>,
{
    tokio::pin!(build);
    let built = tokio::select! {
        built = &mut build => built,
        _ = start.failed() => serve_health_until(names, build, &opts).await,
    };
    match built? {
        Some(set) => serve(set, opts).await,
        None => Ok(()),
    }
}

/// Health alone on `opts.listener` until `build` finishes (or shutdown).
async fn serve_health_until<F>(
    names: &[&'static str],
    build: std::pin::Pin<&mut F>,
    opts: &ServeOptions,
) -> anyhow::Result<Option<ServiceSet>>
where
    F: Future<Output = anyhow::Result<Option<ServiceSet>>>,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in names.iter().chain(std::iter::once(&"")) {
        health.set_service_status(*name, ServingStatus::NotServing).await;
    }
    health.set_service_status(LIVENESS, ServingStatus::Serving).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let incoming = futures::stream::unfold(&opts.listener, |l| async move {
        Some((l.accept().await.map(|(stream, _)| stream), l))
    });
    // Every call but health is UNAVAILABLE (retry), not UNIMPLEMENTED.
    let routes = tonic::service::Routes::new(health_service)
        .into_axum_router()
        .fallback(|| async {
            tonic::Status::unavailable("starting: storage not reachable yet").into_http::<tonic::body::Body>()
        });
    let mut early = Server::builder();
    if let Some(tls) = tls_config(&opts.config)? {
        early = early.tls_config(tls)?;
    }
    let early = early
        .add_routes(tonic::service::Routes::from(routes))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_rx.await;
        });
    tokio::pin!(early);
    let mut build = build;
    let built = tokio::select! {
        built = &mut build => built,
        served = &mut early => {
            served?;
            anyhow::bail!("the start-up health server stopped");
        }
        _ = opts.shutdown.wait() => Ok(None),
    };
    let _ = stop_tx.send(());
    // Its clients reconnect to the full server on the same port.
    if tokio::time::timeout(Duration::from_secs(2), &mut early).await.is_err() {
        tracing::debug!("start-up health connections closed by force");
    }
    built
}

/// Binds the configured gRPC and admin listeners, serves until SIGTERM or
/// Ctrl-C, then drains. What every service binary's `main` calls.
pub async fn run_with_signal(set: ServiceSet, config: &ServerConfig) -> anyhow::Result<()> {
    run_until_signal(set, config, Shutdown::new()).await
}

/// [`run_with_signal`] with the caller's shutdown signal, which SIGTERM
/// triggers: long-lived work the services hold (streams, workers) ends on it.
pub async fn run_until_signal(set: ServiceSet, config: &ServerConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    run_after_signal(&[], &StartUp::default(), async { Ok(Some(set)) }, config, shutdown).await
}

/// [`run_until_signal`] for services made by `build` while the server
/// already answers health (see [`serve_after`]).
pub async fn run_after_signal<F>(
    names: &[&'static str],
    start: &StartUp,
    build: F,
    config: &ServerConfig,
    shutdown: Shutdown,
) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<Option<ServiceSet>>>,
{
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("server.listen {}: {e}", config.listen))?;
    if !config.admin_listen.is_empty() {
        let admin = TcpListener::bind(&config.admin_listen)
            .await
            .map_err(|e| anyhow::anyhow!("server.admin_listen {}: {e}", config.admin_listen))?;
        let addr = crate::admin::spawn_admin(admin, shutdown.clone())?;
        tracing::info!(%addr, "metrics on /metrics");
    }
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        crate::shutdown::terminate_signal().await;
        trigger.trigger();
    });
    serve_after(
        names,
        start,
        build,
        ServeOptions {
            config: config.clone(),
            listener,
            shutdown,
        },
    )
    .await
}

/// Serves `set` with `config` on 127.0.0.1:0 (tests): a connected
/// channel, and the shutdown that stops it.
#[cfg(test)]
pub(crate) async fn serve_on_loopback(set: ServiceSet, config: ServerConfig) -> (tonic::transport::Channel, Shutdown) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = Shutdown::new();
    tokio::spawn(serve(
        set,
        ServeOptions {
            config,
            listener,
            shutdown: shutdown.clone(),
        },
    ));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    (channel, shutdown)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    /// Serves only health, with one readiness check failing while `failing`
    /// is above zero (each check takes one off).
    async fn server(failing: Arc<AtomicU32>) -> (HealthClient<tonic::transport::Channel>, Shutdown) {
        let mut set = ServiceSet::default();
        set.names.push("test.Service");
        set.readiness.push(Arc::new(move || {
            let failing = failing.clone();
            Box::pin(async move {
                match failing.load(Ordering::SeqCst) {
                    0 => Ok(()),
                    n => {
                        failing.store(n - 1, Ordering::SeqCst);
                        Err("redis: connection refused".to_owned())
                    }
                }
            })
        }));
        let (channel, shutdown) = serve_on_loopback(set, ServerConfig::default()).await;
        (HealthClient::new(channel), shutdown)
    }

    async fn status(client: &mut HealthClient<tonic::transport::Channel>) -> i32 {
        client
            .check(HealthCheckRequest {
                service: "test.Service".into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status
    }

    #[tokio::test]
    async fn a_serving_server_stays_in_rotation_through_a_blip_and_leaves_on_a_lasting_failure() {
        let failing = Arc::new(AtomicU32::new(0));
        let (mut client, shutdown) = server(failing.clone()).await;
        let serving = ServingStatus::Serving as i32;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while status(&mut client).await != serving {
            assert!(tokio::time::Instant::now() < deadline, "never SERVING");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A blip: the next two checks fail, then the dependency is back.
        failing.store(2, Ordering::SeqCst);
        let until =
            tokio::time::Instant::now() + READINESS_PERIOD + RECHECK_PERIOD * UNREADY_AFTER + Duration::from_secs(1);
        while tokio::time::Instant::now() < until {
            assert_eq!(
                status(&mut client).await,
                serving,
                "a blip takes the replica out of rotation"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(failing.load(Ordering::SeqCst), 0, "the blip's checks ran");
        // A lasting failure: NOT_SERVING once the checks failed enough times.
        failing.store(u32::MAX, Ordering::SeqCst);
        let deadline =
            tokio::time::Instant::now() + READINESS_PERIOD + RECHECK_PERIOD * UNREADY_AFTER + Duration::from_secs(2);
        while status(&mut client).await == serving {
            assert!(
                tokio::time::Instant::now() < deadline,
                "still SERVING on a lasting failure"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.trigger();
    }
}
