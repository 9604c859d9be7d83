//! Channels to other services, balanced over every address their name
//! resolves to, with dead replicas taken out of the rotation.
//!
//! A tonic channel to one URL opens one HTTP/2 connection and sends every
//! call down it: behind a Kubernetes ClusterIP Service that pins a client to
//! one pod. Pointed at a headless Service, whose DNS name resolves to every
//! ready pod, [`balanced`] keeps one endpoint per address and re-resolves
//! periodically, so calls spread over the replicas and follow scaling.
//!
//! tonic's balancer keeps picking an endpoint whose process died (its
//! reconnect reports ready and fails the call), and DNS keeps a dead pod's
//! address for seconds: half the calls would fail until the next
//! resolution. So every address's health is asked every 250 ms, and one
//! that does not answer SERVING (dead, still starting, draining after
//! SIGTERM) is left out until it does; when none does, all stay (calls
//! then fail fast rather than wait for nothing, and a peer that is not
//! ready because of its own dependency still gets the calls it can serve).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::Sender;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::Readiness;

use tonic::transport::channel::Change;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::ClientsConfig;

/// How often names are resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(15);
/// How often every address is probed.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// A probe not answered SERVING in this long counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest any internal call may take unless it asks for less: a hung
/// peer fails the call (CANCELLED, "Timeout expired") instead of holding a
/// fanout worker, the edge tail or a consumer for good. Long enough for
/// the longest healthy call, a shard's StreamFollowers.
pub const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// Dialing a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings on every connection, idle or not: a peer gone silent
/// behind an open socket is found within interval + timeout, and the
/// connection redialed, instead of when the kernel gives up minutes later.
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// A PEM file a setting names, or an error naming the setting and the file.
pub(crate) fn read_pem(setting: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{setting} {path:?}: {e}"))
}

/// The PEM certificate and key two settings (name, path) point at; None
/// when both are empty, and one without the other refused naming both.
pub(crate) fn pem_pair(cert: (&str, &str), key: (&str, &str)) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
    match (cert.1.is_empty(), key.1.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Ok(Some((read_pem(cert.0, cert.1)?, read_pem(key.0, key.1)?))),
        _ => anyhow::bail!("{} and {} go together: set both or neither", cert.0, key.0),
    }
}

/// How the platform's clients reach their peers: an `http://` URL in
/// plaintext; an `https://` URL over TLS, the peer's certificate checked
/// against `clients.tls_ca` for the URL's host (or `clients.tls_domain`),
/// presenting `clients.tls_cert` to a peer that asks for one (mutual TLS).
#[derive(Clone, Default)]
pub struct Dial {
    tls: Option<ClientTlsConfig>,
    domain: Option<String>,
}

impl Dial {
    /// From the `clients.tls_*` settings (plaintext only when `tls_ca` is unset).
    pub fn from_config(c: &ClientsConfig) -> anyhow::Result<Self> {
        if c.tls_ca.is_empty() {
            anyhow::ensure!(
                c.tls_cert.is_empty() && c.tls_key.is_empty() && c.tls_domain.is_empty(),
                "clients.tls_cert, clients.tls_key and clients.tls_domain need clients.tls_ca"
            );
            return Ok(Self::default());
        }
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("clients.tls_ca", &c.tls_ca)?));
        if let Some((cert, key)) = pem_pair(("clients.tls_cert", &c.tls_cert), ("clients.tls_key", &c.tls_key))? {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Ok(Self {
            tls: Some(tls),
            domain: (!c.tls_domain.is_empty()).then(|| c.tls_domain.clone()),
        })
    }

    /// [`balanced`] with this TLS.
    pub fn channel(&self, url: &str) -> anyhow::Result<Channel> {
        self.channel_with(url, CALL_DEADLINE)
    }

    /// [`balanced_with`] with this TLS.
    pub fn channel_with(&self, url: &str, deadline: Duration) -> anyhow::Result<Channel> {
        let targets = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(target)
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!targets.is_empty(), "{url:?}: no endpoint");
        for t in &targets {
            match t.scheme.as_str() {
                "http" => {}
                "https" => anyhow::ensure!(self.tls.is_some(), "{url}: an https:// peer needs clients.tls_ca"),
                other => anyhow::bail!("{url}: scheme {other:?}, expected http or https"),
            }
        }
        // One literal address: nothing to discover, nothing to fail over to.
        if let [t] = targets.as_slice()
            && (t.host.parse::<std::net::IpAddr>().is_ok() || t.host.starts_with('['))
        {
            return Ok(tuned(self.endpoint(url.trim(), t)?, deadline).connect_lazy());
        }
        let (channel, tx) = Channel::balance_channel::<SocketAddr>(64);
        tokio::spawn(keep_endpoints(targets, tx, deadline, self.clone()));
        Ok(channel)
    }

    /// An endpoint for `uri` (an address of `t`), with TLS when `t` is https.
    fn endpoint(&self, uri: &str, t: &Target) -> anyhow::Result<Endpoint> {
        let endpoint = Endpoint::from_shared(uri.to_owned())?;
        match (&self.tls, t.scheme.as_str()) {
            (Some(tls), "https") => {
                let domain = self
                    .domain
                    .clone()
                    .unwrap_or_else(|| t.host.trim_matches(['[', ']']).to_owned());
                Ok(endpoint.tls_config(tls.clone().domain_name(domain))?)
            }
            _ => Ok(endpoint),
        }
    }
}

/// A channel to the peer at `url` (one of `clients`' URLs), dialed as
/// `clients` says ([`Dial::from_config`]), balanced as [`balanced`] is.
pub fn peer(clients: &ClientsConfig, url: &str) -> anyhow::Result<Channel> {
    Dial::from_config(clients)?.channel(url)
}

/// `endpoint` as every internal client uses it: deadline, dial timeout,
/// HTTP/2 and TCP keepalive, no Nagle.
fn tuned(endpoint: Endpoint, deadline: Duration) -> Endpoint {
    endpoint
        .timeout(deadline)
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(PING_EVERY)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .tcp_nodelay(true)
}

/// One `scheme://host:port` of the configured list.
#[derive(Debug, Clone)]
struct Target {
    scheme: String,
    host: String,
    port: u16,
}

fn target(url: &str) -> anyhow::Result<Target> {
    let uri: http::Uri = url.parse().map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let scheme = uri.scheme_str().unwrap_or("http").to_owned();
    let host = uri.host().ok_or_else(|| anyhow::anyhow!("{url}: no host"))?.to_owned();
    let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
    Ok(Target { scheme, host, port })
}

/// A channel to `url` (`http://host:port`) that balances over the addresses
/// `host` resolves to, refreshed every 15 s; or over a list of endpoints,
/// comma-separated (`http://10.0.0.1:50051,http://10.0.0.2:50051`: replicas
/// without DNS, as `deploy/local` runs them). Addresses whose health does
/// not answer SERVING are left out until it does. Plaintext only (the
/// services dial with [`Dial::from_config`]). Must be called inside a
/// Tokio runtime.
pub fn balanced(url: &str) -> anyhow::Result<Channel> {
    Dial::default().channel(url)
}

/// [`balanced`], with calls cut after `deadline` instead of [`CALL_DEADLINE`].
pub fn balanced_with(url: &str, deadline: Duration) -> anyhow::Result<Channel> {
    Dial::default().channel_with(url, deadline)
}

/// Resolves the targets every [`RESOLVE_EVERY`], probes every address every
/// [`PROBE_EVERY`], and keeps the balancer's endpoints to those that accept.
async fn keep_endpoints(
    targets: Vec<Target>,
    tx: Sender<Change<SocketAddr, Endpoint>>,
    deadline: Duration,
    dial: Dial,
) {
    // Address → the target it was resolved from (its scheme and name).
    let mut known: HashMap<SocketAddr, Target> = HashMap::new();
    let mut inserted: HashSet<SocketAddr> = HashSet::new();
    let mut resolved_at: Option<tokio::time::Instant> = None;
    let mut probe_channels: HashMap<SocketAddr, Channel> = HashMap::new();
    loop {
        if resolved_at.is_none_or(|t| t.elapsed() >= RESOLVE_EVERY) {
            let now = resolve(&targets).await;
            if now.is_empty() {
                tracing::warn!(?targets, "endpoints resolve to no address; keeping the last known");
            } else {
                known = now;
            }
            resolved_at = Some(tokio::time::Instant::now());
        }
        // One probe channel per address, kept across rounds (it reconnects
        // by itself once a restarted replica listens again).
        probe_channels.retain(|a, _| known.contains_key(a));
        for (addr, t) in &known {
            if !probe_channels.contains_key(addr)
                && let Ok(e) = dial.endpoint(&format!("{}://{addr}", t.scheme), t)
            {
                probe_channels.insert(*addr, e.connect_timeout(PROBE_TIMEOUT).connect_lazy());
            }
        }
        let probes = probe_channels.iter().map(|(addr, channel)| {
            let mut health = HealthClient::new(channel.clone());
            async move {
                let ask = health.check(HealthCheckRequest { service: String::new() });
                let up = matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, ask).await,
                    Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
                );
                (*addr, up)
            }
        });
        let up: HashSet<SocketAddr> = futures::future::join_all(probes)
            .await
            .into_iter()
            .filter_map(|(a, up)| up.then_some(a))
            .collect();
        let want: HashSet<SocketAddr> = if up.is_empty() {
            known.keys().copied().collect()
        } else {
            up
        };
        for gone in inserted.difference(&want) {
            tracing::info!(addr = %gone, "endpoint left the rotation");
            if tx.send(Change::Remove(*gone)).await.is_err() {
                return;
            }
        }
        for new in want.difference(&inserted) {
            let Some(t) = known.get(new) else { continue };
            let endpoint = match dial.endpoint(&format!("{}://{new}", t.scheme), t) {
                Ok(e) => tuned(e, deadline),
                Err(e) => {
                    tracing::warn!(error = %e, %new, "bad endpoint");
                    continue;
                }
            };
            if tx.send(Change::Insert(*new, endpoint)).await.is_err() {
                return;
            }
        }
        inserted = want;
        tokio::time::sleep(PROBE_EVERY).await;
        if tx.is_closed() {
            return;
        }
    }
}

/// Every address the targets resolve to now (a name that fails to resolve
/// contributes nothing this round).
async fn resolve(targets: &[Target]) -> HashMap<SocketAddr, Target> {
    let mut out = HashMap::new();
    for t in targets {
        match tokio::net::lookup_host((t.host.trim_matches(['[', ']']), t.port)).await {
            Ok(addrs) => out.extend(addrs.map(|a| (a, t.clone()))),
            Err(e) => tracing::warn!(host = %t.host, error = %e, "resolving a service failed"),
        }
    }
    out
}

/// Readiness on a service this one calls: `peer`'s health must report
/// `service` SERVING. A split process that cannot reach what its calls
/// need stays NOT_SERVING and says which peer is missing.
pub fn peer_ready(peer: &'static str, channel: Channel, service: &'static str) -> Readiness {
    Arc::new(move || {
        let mut client = HealthClient::new(channel.clone());
        Box::pin(async move {
            let ask = client.check(HealthCheckRequest {
                service: service.to_owned(),
            });
            match tokio::time::timeout(Duration::from_secs(2), ask).await {
                Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
                Ok(Ok(r)) => Err(format!("{peer} reports {service} as {:?}", r.get_ref().status())),
                Ok(Err(e)) => Err(format!("{peer} unreachable: {}", e.message())),
                Err(_) => Err(format!("{peer} did not answer its health check within 2 s")),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_is_balanced_over_what_it_resolves_to_and_a_literal_is_used_as_is() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // "localhost" resolves here; the balanced channel must reach the listener through it.
        let channel = balanced(&format!("http://localhost:{port}")).expect("channel");
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let call = tokio::spawn(async move {
            client
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await
        });
        tokio::time::timeout(Duration::from_secs(10), accept)
            .await
            .expect("a connection arrives")
            .expect("join")
            .expect("accept");
        call.abort();
        assert!(balanced("http://127.0.0.1:1").is_ok());
        assert!(balanced("not a url").is_err());
        assert!(balanced("http://127.0.0.1:1,not a url").is_err());
    }

    #[tokio::test]
    async fn a_call_to_a_peer_that_never_answers_ends_at_the_deadline() {
        // Accepts, reads and discards: a hung process behind an open socket.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut conn, &mut sink).await;
                });
            }
        });
        let channel = balanced_with(&format!("http://{addr}"), Duration::from_millis(300)).expect("channel");
        let mut client = HealthClient::new(channel);
        let started = tokio::time::Instant::now();
        let ask = client.check(HealthCheckRequest { service: String::new() });
        let status = tokio::time::timeout(Duration::from_secs(5), ask)
            .await
            .expect("the call ends at its deadline, not never")
            .expect_err("nothing answers");
        assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "ended after {:?}",
            started.elapsed()
        );
    }

    /// A health server on a free port, stopped when the sender fires.
    async fn health_server() -> (u16, tokio::sync::oneshot::Sender<()>) {
        let (port, stop, _) = health_server_with_reporter().await;
        (port, stop)
    }

    async fn health_server_with_reporter() -> (
        u16,
        tokio::sync::oneshot::Sender<()>,
        tonic_health::server::HealthReporter,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (reporter, service) = tonic_health::server::health_reporter();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                }),
        );
        (port, stop, reporter)
    }

    /// A replica that answers but is not ready (starting, draining) gets
    /// no calls while another is ready.
    #[tokio::test]
    async fn a_replica_that_is_not_serving_gets_no_calls_while_another_is() {
        let (a, _keep_a, reporter) = health_server_with_reporter().await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let (b, _keep_b) = health_server().await;
        let channel = balanced(&format!("http://127.0.0.1:{a},http://127.0.0.1:{b}")).expect("channel");
        tokio::time::sleep(PROBE_EVERY * 4).await;
        for i in 0..40 {
            let status = HealthClient::new(channel.clone())
                .check(HealthCheckRequest { service: String::new() })
                .await
                .expect("answered")
                .into_inner()
                .status;
            assert_eq!(
                status,
                ServingStatus::Serving as i32,
                "call {i} reached the replica that is not ready"
            );
        }
    }

    /// Two replicas listed by address; one dies: after the probe period
    /// every call goes to the survivor.
    #[tokio::test]
    async fn a_replica_that_dies_leaves_the_rotation_and_calls_reach_the_survivor() {
        let (a, stop_a) = health_server().await;
        let (b, _keep_b) = health_server().await;
        let channel = balanced(&format!("http://127.0.0.1:{a}, http://127.0.0.1:{b}")).expect("channel");
        let call = || {
            let mut client = HealthClient::new(channel.clone());
            async move {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    client.check(HealthCheckRequest { service: String::new() }),
                )
                .await
                .expect("answered in time")
            }
        };
        for _ in 0..10 {
            call().await.expect("both replicas up");
        }
        let _ = stop_a.send(());
        tokio::time::sleep(PROBE_EVERY * 4).await;
        for i in 0..40 {
            call()
                .await
                .unwrap_or_else(|e| panic!("call {i} after a replica died: {e}"));
        }
    }

    #[tokio::test]
    async fn a_peer_that_is_not_listening_is_not_ready_and_named() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let ready = peer_ready(
            "follow-graph",
            balanced(&format!("http://127.0.0.1:{port}")).expect("channel"),
            "x",
        );
        let why = ready().await.expect_err("nothing listens");
        assert!(why.contains("follow-graph"), "{why}");
    }
}
