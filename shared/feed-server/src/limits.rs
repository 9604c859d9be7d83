//! A request's deadline and the shedding at the concurrency limit, answered
//! as gRPC statuses inside the metrics layer ([`crate::observe::Observe`]).
//!
//! tonic's own server timeout sits outside every layer: a call past its
//! deadline dropped the metrics layer's future and was never counted, and
//! a call shed at the limit reached that layer as an error, labelled
//! `transport`. Here both come back as responses the metrics see:
//! DEADLINE_EXCEEDED (`4`, at the server's deadline, or 5 ms before the
//! client's own when that is sooner) and RESOURCE_EXHAUSTED (`8`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use tonic::Status;
use tower::{BoxError, Layer, Service};

/// How long before a client's own deadline a late call is answered.
const ASKED_MARGIN: Duration = Duration::from_millis(5);

/// The deadline a client asked for in `grpc-timeout` (gRPC over HTTP/2:
/// up to 8 digits and a unit, H M S m u n), if any and well-formed.
fn asked_timeout(headers: &HeaderMap) -> Option<Duration> {
    let raw = headers.get("grpc-timeout")?.to_str().ok()?;
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Adds [`Limits`] around a service: `timeout` caps every request's deadline.
#[derive(Debug, Clone)]
pub struct LimitsLayer {
    timeout: Duration,
}

impl LimitsLayer {
    /// Requests get at most `timeout` (less when the client asks for less).
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limits<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Limits {
            inner,
            timeout: self.timeout,
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Limits<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B> Service<Request<B>> for Limits<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // A client's own deadline is also enforced outside every layer
        // (tonic's server reads `grpc-timeout` first): answer a little
        // before it, so this answer, counted, is the one that goes out.
        let deadline = asked_timeout(req.headers()).map_or(self.timeout, |asked| {
            asked
                .saturating_sub(ASKED_MARGIN)
                .max(Duration::from_millis(1))
                .min(self.timeout)
        });
        let answer = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(deadline, answer).await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(e)) => {
                    let e: BoxError = e.into();
                    if e.is::<tower::load_shed::error::Overloaded>() {
                        Ok(Status::resource_exhausted(
                            "server at its concurrency limit; retry, another replica may answer",
                        )
                        .into_http())
                    } else {
                        Err(e)
                    }
                }
                Err(_) => {
                    Ok(Status::deadline_exceeded(format!("no answer within the deadline ({deadline:?})")).into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", v.parse().expect("header"));
        h
    }

    #[test]
    fn a_clients_grpc_timeout_is_read_in_every_unit_and_junk_is_ignored() {
        assert_eq!(asked_timeout(&headers("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(asked_timeout(&headers("3M")), Some(Duration::from_secs(180)));
        assert_eq!(asked_timeout(&headers("5S")), Some(Duration::from_secs(5)));
        assert_eq!(asked_timeout(&headers("250m")), Some(Duration::from_millis(250)));
        assert_eq!(asked_timeout(&headers("7u")), Some(Duration::from_micros(7)));
        assert_eq!(
            asked_timeout(&headers("99999999n")),
            Some(Duration::from_nanos(99_999_999))
        );
        for junk in ["", "m", "5", "5x", "-5m", "123456789m", "5 m"] {
            assert_eq!(asked_timeout(&headers(junk)), None, "{junk:?}");
        }
        assert_eq!(asked_timeout(&HeaderMap::new()), None);
    }

    /// Answers nothing for `0` (a stand-in for a handler that hangs), under
    /// follow-graph's name so its generated client can call it.
    #[derive(Clone)]
    struct Hanging(Duration);

    impl tonic::server::NamedService for Hanging {
        const NAME: &'static str = "feed.followgraph.v1.FollowGraphService";
    }

    impl Service<Request<tonic::body::Body>> for Hanging {
        type Response = Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<tonic::body::Body>) -> Self::Future {
            let hang = self.0;
            Box::pin(async move {
                tokio::time::sleep(hang).await;
                Ok(Status::unavailable("woke up").into_http())
            })
        }
    }

    #[tokio::test]
    async fn late_and_shed_calls_answer_deadline_exceeded_and_resource_exhausted_and_are_counted() {
        let metrics = crate::admin::metrics_handle();
        let mut set = crate::ServiceSet::default();
        set.routes.add_service(Hanging(Duration::from_secs(2)));
        let config = crate::config::ServerConfig {
            request_timeout_ms: 300,
            concurrency_limit: 1,
            ..Default::default()
        };
        let (channel, shutdown) = crate::serve::serve_on_loopback(set, config).await;
        let client = feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient::new(channel);
        let call = |timeout: Option<Duration>| {
            let mut client = client.clone();
            async move {
                let mut req = tonic::Request::new(feed_proto::followgraph::v1::GetGraphVersionsRequest::default());
                if let Some(t) = timeout {
                    req.set_timeout(t);
                }
                let start = std::time::Instant::now();
                let code = client.get_graph_versions(req).await.expect_err("no answer").code();
                (code, start.elapsed())
            }
        };

        // The server's deadline, then a shorter one the client asked for.
        let (code, took) = call(None).await;
        assert_eq!(code, tonic::Code::DeadlineExceeded);
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        // The client enforces its deadline too: on a loaded machine its own
        // timer can end the call (CANCELLED, locally) and reset the stream
        // before the server's answer; the server then counts it cancelled.
        let (client_code, took) = call(Some(Duration::from_millis(100))).await;
        assert!(
            matches!(client_code, tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
            "{client_code:?}"
        );
        assert!(
            took < Duration::from_millis(290),
            "the client's shorter deadline: {took:?}"
        );

        // One call holds the only slot; the next is shed at once.
        let holder = tokio::spawn(call(None));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (code, took) = call(None).await;
        assert_eq!(code, tonic::Code::ResourceExhausted);
        assert!(took < Duration::from_millis(150), "shed, not queued: {took:?}");
        assert_eq!(holder.await.expect("holder").0, tonic::Code::DeadlineExceeded);

        let text = metrics.render();
        let count = |code: &str| {
            text.lines()
                .filter(|l| l.starts_with("feed_rpc_requests_total") && l.contains("GetGraphVersions"))
                .filter(|l| l.contains(&format!("code=\"{code}\"")))
                .map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
                .sum::<u64>()
        };
        if client_code == tonic::Code::DeadlineExceeded {
            assert_eq!(count("4"), 3, "every late call counted as DEADLINE_EXCEEDED:\n{text}");
        } else {
            assert_eq!(count("4") + count("1"), 3, "every late call counted:\n{text}");
            assert!(count("4") >= 2, "{text}");
        }
        assert_eq!(count("8"), 1, "the shed call counted as RESOURCE_EXHAUSTED:\n{text}");
        assert_eq!(count("transport"), 0, "{text}");
        shutdown.trigger();
    }
}
