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
use std::time::Duration;

use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

/// How often names are resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(15);

/// A channel to `url` (`http://host:port`) that balances over the addresses
/// `host` resolves to, refreshed every 15 s. Must be called inside a Tokio runtime.
pub fn balanced(url: &str) -> anyhow::Result<Channel> {
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
    }
}
