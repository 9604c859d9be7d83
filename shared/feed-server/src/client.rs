//! Channels to other services, balanced over every address their name
//! resolves to.
//!
//! A tonic channel to one URL opens one HTTP/2 connection and sends every
//! call down it: behind a Kubernetes ClusterIP Service that pins a client to
//! one pod. Pointed at a headless Service, whose DNS name resolves to every
//! ready pod, [`balanced`] keeps one endpoint per address and re-resolves
//! periodically, so calls spread over the replicas and follow scaling.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::Readiness;

use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

/// How often names are resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(15);

/// A channel to `url` (`http://host:port`) that balances over the addresses
/// `host` resolves to, refreshed every 15 s; or over a fixed list of
/// endpoints, comma-separated (`http://10.0.0.1:50051,http://10.0.0.2:50051`:
/// replicas without DNS, as `deploy/local` runs them). Must be called
/// inside a Tokio runtime.
pub fn balanced(url: &str) -> anyhow::Result<Channel> {
    if url.contains(',') {
        let endpoints = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                Endpoint::from_shared(u.to_owned())
                    .map(|e| e.connect_timeout(Duration::from_secs(5)))
                    .map_err(|e| anyhow::anyhow!("{u}: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        return Ok(Channel::balance_list(endpoints.into_iter()));
    }
    let uri: http::Uri = url.parse().map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let scheme = uri.scheme_str().unwrap_or("http").to_owned();
    let host = uri.host().ok_or_else(|| anyhow::anyhow!("{url}: no host"))?.to_owned();
    let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
    // A literal address needs no discovery.
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return Ok(Endpoint::from_shared(url.to_owned())?.connect_lazy());
    }
    let (channel, tx) = Channel::balance_channel::<SocketAddr>(64);
    tokio::spawn(async move {
        let mut known: HashSet<SocketAddr> = HashSet::new();
        loop {
            match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addrs) => {
                    let now: HashSet<SocketAddr> = addrs.collect();
                    for gone in known.difference(&now) {
                        if tx.send(Change::Remove(*gone)).await.is_err() {
                            return;
                        }
                    }
                    for new in now.difference(&known) {
                        // The authority stays the service name (TLS, routing); the socket goes to the pod.
                        let endpoint = match Endpoint::from_shared(format!("{scheme}://{new}")) {
                            Ok(e) => e.connect_timeout(Duration::from_secs(5)),
                            Err(e) => {
                                tracing::warn!(error = %e, %new, "bad endpoint");
                                continue;
                            }
                        };
                        if tx.send(Change::Insert(*new, endpoint)).await.is_err() {
                            return;
                        }
                    }
                    if now.is_empty() {
                        tracing::warn!(%host, "name resolves to no address; keeping the last known");
                    } else {
                        known = now;
                    }
                }
                Err(e) => tracing::warn!(%host, error = %e, "resolving a service failed; keeping the last known"),
            }
            tokio::time::sleep(RESOLVE_EVERY).await;
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(channel)
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

    /// Two replicas listed by address: calls reach both.
    #[tokio::test]
    async fn a_comma_separated_list_balances_over_every_endpoint() {
        let mut ports = Vec::new();
        let mut accepts = Vec::new();
        for _ in 0..2 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            ports.push(listener.local_addr().expect("addr").port());
            accepts.push(tokio::spawn(async move { listener.accept().await.map(|_| ()) }));
        }
        let channel =
            balanced(&format!("http://127.0.0.1:{}, http://127.0.0.1:{}", ports[0], ports[1])).expect("channel");
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let mut client = HealthClient::new(channel.clone());
                tokio::spawn(async move { client.check(HealthCheckRequest { service: String::new() }).await })
            })
            .collect();
        for accept in accepts {
            tokio::time::timeout(Duration::from_secs(10), accept)
                .await
                .expect("every listed endpoint gets a connection")
                .expect("join")
                .expect("accept");
        }
        for c in calls {
            c.abort();
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
