//! Per-request observability: a request id (kept from `x-request-id` or
//! minted), a tracing span carrying it, and RPC metrics
//! (`feed_rpc_requests_total`, `feed_rpc_duration_seconds`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

/// Header carrying the request id, in and out.
pub const REQUEST_ID: &str = "x-request-id";

/// [`REQUEST_ID`], parsed once instead of at each insert.
static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID);

/// A UUIDv7 for a request that came without an id. `Uuid::now_v7` asks
/// the OS for random bits each time; here they are a random per-process
/// seed mixed with a counter (splitmix64 is a bijection, so ids never repeat
/// within a process, and the seed keeps processes apart).
fn mint_request_id() -> uuid::Uuid {
    static SEED: std::sync::OnceLock<(u16, u64)> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (high, seed) = *SEED.get_or_init(|| {
        let r = uuid::Uuid::new_v4().as_u128();
        (r as u16, (r >> 64) as u64)
    });
    let mut z = seed.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let mut random = [0u8; 10];
    random[..2].copy_from_slice(&high.to_be_bytes());
    random[2..].copy_from_slice(&z.to_be_bytes());
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid()
}

/// Every method path this platform's servers answer: each feed service's
/// (from the contract's descriptors), health's and reflection's.
fn known_methods() -> &'static foldhash::HashSet<Arc<str>> {
    static KNOWN: std::sync::OnceLock<foldhash::HashSet<Arc<str>>> = std::sync::OnceLock::new();
    KNOWN.get_or_init(|| {
        use prost::Message as _;
        let sets = [
            feed_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut known = foldhash::HashSet::default();
        for set in sets {
            // Compiled into this binary: a set that does not decode is a build defect.
            let set = prost_types::FileDescriptorSet::decode(set).expect("a descriptor set compiled into the binary");
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        known.insert(Arc::from(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        )));
                    }
                }
            }
        }
        known
    })
}

/// The metric and span label of a request path: the method when the path
/// names one this platform serves, else `unknown`. Known labels are shared,
/// not allocated per request.
fn method_label(path: &str) -> Arc<str> {
    static UNKNOWN: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    match known_methods().get(path) {
        Some(label) => label.clone(),
        None => UNKNOWN.get_or_init(|| Arc::from("unknown")).clone(),
    }
}

/// A gRPC status code as a metric label without an allocation per request.
fn code_label(code: &str) -> metrics::SharedString {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    match CODES.iter().find(|c| **c == code) {
        Some(c) => metrics::SharedString::const_str(c),
        None => metrics::SharedString::from(code.to_owned()),
    }
}

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
        let header = match req
            .headers()
            .get(&REQUEST_ID_HEADER)
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.to_str().is_ok())
        {
            Some(given) => given.clone(),
            None => {
                // Formatted on the stack: every request without an id mints one.
                let mut buf = uuid::Uuid::encode_buffer();
                let minted = mint_request_id().hyphenated().encode_lower(&mut buf);
                HeaderValue::from_str(minted).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
            }
        };
        req.headers_mut().insert(REQUEST_ID_HEADER.clone(), header.clone());
        // Shared by the span and both metrics: the served method, or
        // `unknown` (this layer runs before auth: a caller without a
        // token must not be able to add a label value per path it makes up).
        let method = method_label(req.uri().path());
        let span = tracing::info_span!("rpc", method = %method, request_id = header.to_str().unwrap_or_default());
        // The ready service is the one to call; keep a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let start = Instant::now();
        Box::pin(
            async move {
                // A call the client gives up on (its deadline, a reset) is
                // dropped mid-flight: still counted, as CANCELLED.
                let mut cancelled = Cancelled {
                    method: Some(method.clone()),
                    start,
                };
                let result = inner.call(req).await;
                cancelled.method = None;
                let elapsed = start.elapsed().as_secs_f64();
                // Unary errors travel "trailers-only", so the status is in the headers;
                // a streaming or OK response reports 0 here.
                let code = match &result {
                    Ok(resp) => resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("0"),
                    Err(_) => "transport",
                };
                if code != "0" {
                    tracing::debug!(code = %code, elapsed_ms = elapsed * 1000.0, "rpc failed");
                }
                record(method, code_label(code), elapsed);
                result.map(|mut resp| {
                    resp.headers_mut().insert(REQUEST_ID_HEADER.clone(), header);
                    resp
                })
            }
            .instrument(span),
        )
    }
}

/// One call in both RPC metrics.
fn record(method: Arc<str>, code: metrics::SharedString, elapsed: f64) {
    let method = metrics::SharedString::from_shared(method);
    metrics::counter!("feed_rpc_requests_total", "method" => method.clone(), "code" => code).increment(1);
    metrics::histogram!("feed_rpc_duration_seconds", "method" => method).record(elapsed);
}

/// Counts a call as CANCELLED (code 1) if dropped before it answered.
struct Cancelled {
    /// None once the call answered.
    method: Option<Arc<str>>,
    start: Instant,
}

impl Drop for Cancelled {
    fn drop(&mut self) {
        if let Some(method) = self.method.take() {
            record(
                method,
                metrics::SharedString::const_str("1"),
                self.start.elapsed().as_secs_f64(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_dropped_before_it_answers_is_counted_cancelled() {
        let metrics = crate::admin::metrics_handle();
        let hangs = tower::service_fn(|_: Request<()>| {
            std::future::pending::<Result<Response<()>, std::convert::Infallible>>()
        });
        let mut observed = ObserveLayer.layer(hangs);
        let req = Request::builder()
            .uri("/feed.notify.v1.NotifyService/Watch")
            .body(())
            .expect("request");
        let answered = tokio::time::timeout(std::time::Duration::from_millis(20), observed.call(req)).await;
        assert!(answered.is_err(), "the call hangs and is dropped");
        let text = metrics.render();
        assert!(
            text.lines().any(|l| l.starts_with("feed_rpc_requests_total")
                && l.contains("NotifyService/Watch")
                && l.contains("code=\"1\"")),
            "{text}"
        );
    }

    /// Resident set size of this process, in bytes.
    fn rss() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4096
    }

    #[tokio::test]
    async fn calls_to_made_up_paths_add_no_metric_series_and_no_memory() {
        let metrics = crate::admin::metrics_handle();
        // Answers at once, as auth does for a call without a token.
        let answers = tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .header("grpc-status", "16")
                    .body(())
                    .expect("response"),
            )
        });
        let mut observed = ObserveLayer.layer(answers);
        let series = |text: &str| {
            text.lines()
                .filter(|l| l.starts_with("feed_rpc_requests_total"))
                .count()
        };
        let call = |path: String| Request::builder().uri(path).body(()).expect("request");
        // Warm up: the allocator's and the recorder's own first growth.
        for i in 0..1_000u64 {
            observed
                .call(call(format!("/warm.up{i}/Call")))
                .await
                .expect("answered");
        }
        let (series_before, rss_before) = (series(&metrics.render()), rss());
        let mut rng = rand::rng();
        for i in 0..100_000u64 {
            let noise: u64 = rand::Rng::random(&mut rng);
            let path = format!("/attack{i}.{noise:x}{}/Method{i}", "x".repeat((noise % 200) as usize));
            observed.call(call(path)).await.expect("answered");
        }
        let text = metrics.render();
        assert!(!text.contains("attack"), "a made-up path became a label");
        assert!(
            series(&text) <= series_before + 1,
            "100,000 made-up paths added {} series",
            series(&text) - series_before
        );
        assert!(text.contains("method=\"unknown\""), "they are counted, as unknown");
        let grown = rss().saturating_sub(rss_before);
        assert!(
            grown < 16 << 20,
            "memory grew by {grown} bytes over 100,000 made-up paths"
        );
    }

    #[test]
    fn every_served_method_keeps_its_own_label() {
        for path in [
            "/feed.timeline.v1.TimelineService/GetTimeline",
            "/feed.publish.v1.PublishService/ReadHome",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(&*method_label(path), path);
        }
        assert_eq!(&*method_label("/feed.timeline.v1.TimelineService/Nope"), "unknown");
    }

    #[test]
    fn minted_request_ids_are_distinct_time_ordered_uuids() {
        let ids: Vec<uuid::Uuid> = (0..10_000).map(|_| mint_request_id()).collect();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        assert!(ids.iter().all(|u| u.get_version_num() == 7));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let (secs, _) = ids[0].get_timestamp().expect("v7 has a time").to_unix();
        assert!(now.abs_diff(secs) < 60, "stamped with the current time");
    }
}
