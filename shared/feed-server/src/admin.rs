//! The admin port: Prometheus `/metrics`, a plain `/healthz` (the process
//! runs) and `/readyz` (its gRPC health is SERVING; 503 otherwise), for
//! probes that cannot speak TLS to the gRPC port.
//!
//! A tiny HTTP/1.1 responder instead of the exporter's own listener, so the
//! port can be `127.0.0.1:0` in tests and read back.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::Shutdown;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Another recorder may already be global (tests); then ours only renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Serves `/metrics` on `listener` until shutdown. Returns the bound address.
pub fn spawn_admin(listener: TcpListener, shutdown: Shutdown) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let handle = metrics_handle();
    tokio::spawn(async move {
        // A recorder built, not installed by the exporter, has no upkeep
        // task: histogram samples would pile up between scrapes (for ever
        // when nothing scrapes), one per request.
        let mut upkeep = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            let (mut sock, _) = tokio::select! {
                r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                _ = upkeep.tick() => {
                    handle.run_upkeep();
                    continue;
                }
                _ = shutdown.wait() => return,
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                // Read the whole request head: a client may send it in pieces.
                let mut buf = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                let read_head = async {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return false,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    true
                };
                match tokio::time::timeout(std::time::Duration::from_secs(5), read_head).await {
                    Ok(true) => {}
                    _ => return,
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = match path {
                    "/metrics" => ("200 OK", handle.render()),
                    "/healthz" => ("200 OK", "ok\n".to_owned()),
                    "/readyz" if crate::serve::serving() => ("200 OK", "ready\n".to_owned()),
                    "/readyz" => ("503 Service Unavailable", "not ready\n".to_owned()),
                    _ => ("404 Not Found", "not found\n".to_owned()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}
