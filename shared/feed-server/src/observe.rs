//! Per-request observability: a request id (kept from `x-request-id` or
//! minted), a tracing span carrying it, and RPC metrics
//! (`feed_rpc_requests_total`, `feed_rpc_duration_seconds`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

/// Header carrying the request id, in and out.
pub const REQUEST_ID: &str = "x-request-id";

/// Adds [`Observe`] around a service.
#[derive(Debug, Clone, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let request_id = req
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let header = HeaderValue::from_str(&request_id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        req.headers_mut().insert(REQUEST_ID, header.clone());
        let method = req.uri().path().to_owned();
        let span = tracing::info_span!("rpc", method = %method, request_id = %request_id);
        // The ready service is the one to call; keep a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let start = Instant::now();
        Box::pin(
            async move {
                let result = inner.call(req).await;
                let elapsed = start.elapsed().as_secs_f64();
                // Unary errors travel "trailers-only", so the status is in the headers;
                // a streaming or OK response reports 0 here.
                let code = match &result {
                    Ok(resp) => resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("0")
                        .to_owned(),
                    Err(_) => "transport".to_owned(),
                };
                if code != "0" {
                    tracing::debug!(code = %code, elapsed_ms = elapsed * 1000.0, "rpc failed");
                }
                metrics::counter!("feed_rpc_requests_total", "method" => method.clone(), "code" => code).increment(1);
                metrics::histogram!("feed_rpc_duration_seconds", "method" => method).record(elapsed);
                result.map(|mut resp| {
                    resp.headers_mut().insert(REQUEST_ID, header);
                    resp
                })
            }
            .instrument(span),
        )
    }
}
