//! Service tokens and the calling user.
//!
//! Every RPC but health and reflection carries `authorization: Bearer <token>`.
//! An `internal` token may act for any user and call admin RPCs; a `bff`
//! token must name its user in `x-feed-user-id` and may act only as that user.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use feed_core::{ApiError, UserId};
use tonic::{Request, Status};

use crate::config::{AuthConfig, QuotaConfig};
use crate::quotas::{Class, Quotas};

/// Metadata key naming the end user a `bff` call acts for.
pub const USER_HEADER: &str = "x-feed-user-id";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Platform services and operators: any user, admin RPCs.
    Internal,
    /// The mobile backend-for-frontend: only the user it names.
    Bff,
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's role.
    pub role: Role,
    /// The user named in `x-feed-user-id` (required for `bff`).
    pub user_id: Option<UserId>,
}

impl Caller {
    /// The caller an authenticated request carries. A request that did not go
    /// through the guard ([`Authenticator::guard`]) has none: refuse rather than assume.
    pub fn of<T>(req: &Request<T>) -> Result<Caller, ApiError> {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthenticated("missing credentials".into()))
    }

    /// May this caller act as `user_id` (the value of request field `field`)?
    pub fn act_as(&self, field: &str, user_id: UserId) -> Result<(), ApiError> {
        match self.role {
            Role::Internal => Ok(()),
            Role::Bff if self.user_id == Some(user_id) => Ok(()),
            Role::Bff => Err(ApiError::PermissionDenied(format!(
                "{field}: a bff token may only act as the user in {USER_HEADER}"
            ))),
        }
    }

    /// Only internal callers (admin and service-to-service RPCs).
    pub fn require_internal(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Internal => Ok(()),
            Role::Bff => Err(ApiError::PermissionDenied("this call needs an internal token".into())),
        }
    }
}

/// The value of header `name` when sent at most once, as text: one sent
/// twice is ambiguous (which one would each check and handler read?).
fn sent_once<'a>(md: &'a http::HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut sent = md.get_all(name).iter();
    match (sent.next(), sent.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::Unauthenticated(format!("{name}: not text"))),
        (Some(_), Some(_)) => Err(ApiError::Unauthenticated(format!("{name} must be sent once"))),
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Checks bearer tokens. Cheap to clone.
#[derive(Clone, Default)]
pub struct Authenticator {
    /// Per-user rate limits of bff callers; none: unlimited.
    quotas: Option<Arc<Quotas>>,
    /// End users' JWTs every bff call must carry; none: not asked for.
    jwt: Option<Arc<crate::jwt::Verifier>>,
    /// By the SHA-256 of each token: the process holds no token itself, and
    /// a lookup's timing depends on the digest of what was presented, which
    /// tells an attacker nothing about how close a guess came to a token.
    tokens: Arc<HashMap<[u8; 32], Arc<Holder>>>,
    /// The most calls one token may have in flight: no caller takes the
    /// whole concurrency limit.
    max_in_flight: usize,
}

/// A token (by its digest): what it may do, and its calls in flight.
#[derive(Debug)]
struct Holder {
    digest: [u8; 32],
    role: Role,
    in_flight: AtomicUsize,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens themselves.
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Authenticator {
    /// From `(token, role)` pairs.
    pub fn new(tokens: impl IntoIterator<Item = (String, Role)>) -> Self {
        let tokens: HashMap<[u8; 32], Arc<Holder>> = tokens
            .into_iter()
            .filter(|(t, _)| !t.is_empty())
            .map(|(t, role)| {
                let holder = Holder {
                    digest: digest(&t),
                    role,
                    in_flight: AtomicUsize::new(0),
                };
                (holder.digest, Arc::new(holder))
            })
            .collect();
        Self {
            quotas: None,
            jwt: None,
            max_in_flight: usize::MAX,
            tokens: Arc::new(tokens),
        }
    }

    /// With a server's limits: the quotas of bff callers and each caller's
    /// share of the concurrency limit (`server.caller_share`).
    pub fn with_server_limits(self, cfg: &crate::FeedConfig) -> Self {
        let share = cfg.server.caller_share.clamp(0.0, 1.0);
        let limit = cfg.server.concurrency_limit.max(1);
        self.with_quotas(&cfg.quotas)
            .with_max_in_flight(((limit as f64 * share) as usize).max(1))
    }

    /// At most `max` calls in flight per token (see [`Authenticator::guard`]).
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// Takes one of the token's in-flight places until the slot is dropped.
    fn occupy(&self, holder: Arc<Holder>) -> Result<Slot, Status> {
        if holder.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            holder.in_flight.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("feed_rpc_caller_share_refused_total").increment(1);
            return Err(crate::quotas::crowded(self.max_in_flight));
        }
        Ok(Slot(holder))
    }

    /// From configuration: the two token lists plus `tokens_file` lines `role:token`.
    pub fn from_config(cfg: &AuthConfig) -> anyhow::Result<Self> {
        let split = |s: &str, role| {
            s.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(move |t| (t.to_owned(), role))
                .collect::<Vec<_>>()
        };
        let mut tokens = split(&cfg.internal_tokens, Role::Internal);
        tokens.extend(split(&cfg.bff_tokens, Role::Bff));
        if !cfg.tokens_file.is_empty() {
            let text = std::fs::read_to_string(&cfg.tokens_file)
                .map_err(|e| anyhow::anyhow!("auth.tokens_file {}: {e}", cfg.tokens_file))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (role, token) = line
                    .split_once(':')
                    .ok_or_else(|| anyhow::anyhow!("auth.tokens_file line {}: expected role:token", n + 1))?;
                let role = match role.trim() {
                    "internal" => Role::Internal,
                    "bff" => Role::Bff,
                    other => {
                        anyhow::bail!("auth.tokens_file line {}: unknown role {other:?}", n + 1)
                    }
                };
                tokens.push((token.trim().to_owned(), role));
            }
        }
        Self::new(tokens).with_jwt_config(cfg)
    }

    /// With end users' JWTs checked when `auth.jwt_jwks_file` is set.
    pub fn with_jwt_config(self, cfg: &AuthConfig) -> anyhow::Result<Self> {
        if cfg.jwt_jwks_file.is_empty() {
            return Ok(self);
        }
        let jwks = std::fs::read_to_string(&cfg.jwt_jwks_file)
            .map_err(|e| anyhow::anyhow!("auth.jwt_jwks_file {}: {e}", cfg.jwt_jwks_file))?;
        let verifier = crate::jwt::Verifier::from_jwks(&jwks, &cfg.jwt_issuer, &cfg.jwt_audience, cfg.jwt_leeway_secs)
            .map_err(|e| anyhow::anyhow!("auth.jwt_jwks_file {}: {e}", cfg.jwt_jwks_file))?;
        Ok(self.with_jwt(verifier))
    }

    /// Every bff call must also carry its user's JWT (see [`crate::jwt`]).
    pub fn with_jwt(mut self, verifier: crate::jwt::Verifier) -> Self {
        self.jwt = Some(Arc::new(verifier));
        self
    }

    /// With per-user rate limits for bff callers (see [`Quotas`]).
    pub fn with_quotas(mut self, cfg: &QuotaConfig) -> Self {
        self.quotas = Some(Arc::new(Quotas::new(cfg)));
        self
    }

    /// Wraps a service: every call is authenticated (its [`Caller`] in the
    /// request's extensions), for a bff caller charged to its user's quota
    /// for the RPC's class, and holds one of its token's in-flight places
    /// until it is answered, before the service sees it: a caller at its
    /// share is refused, whatever the others are doing.
    pub fn guard<S>(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            auth: self.clone(),
        }
    }

    /// Authenticates a call to `path`, charges its quota and takes one of
    /// its token's in-flight places.
    fn admit(&self, headers: &http::HeaderMap, path: &str) -> Result<(Caller, Slot), Status> {
        let (caller, holder) = self.identify(headers).map_err(Status::from)?;
        if let (Some(quotas), Role::Bff, Some(user)) = (&self.quotas, caller.role, caller.user_id) {
            let class = Class::of_path(path);
            if let Err(wait) = quotas.take(holder.digest, user, class, std::time::Instant::now()) {
                metrics::counter!("feed_rpc_rate_limited_total").increment(1);
                return Err(crate::quotas::exhausted(class, wait));
            }
        }
        Ok((caller, self.occupy(holder)?))
    }

    /// True when no token is configured (feedd then creates a dev token).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Authenticates a request's metadata.
    pub fn authenticate(&self, md: &tonic::metadata::MetadataMap) -> Result<Caller, ApiError> {
        self.identify(md.as_ref()).map(|(caller, _)| caller)
    }

    /// The caller a request's headers name, and its token's holder.
    fn identify(&self, md: &http::HeaderMap) -> Result<(Caller, Arc<Holder>), ApiError> {
        let header = md
            .get("authorization")
            .ok_or_else(|| ApiError::Unauthenticated("missing authorization: Bearer <token>".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .ok_or_else(|| ApiError::Unauthenticated("authorization must be Bearer <token>".into()))?;
        let holder = self
            .tokens
            .get(&digest(token.trim()))
            .ok_or_else(|| ApiError::Unauthenticated("unknown token".into()))?;
        let role = holder.role;
        // One user, a valid id: an id past the largest one is none a
        // request field could name.
        let user_id = match sent_once(md, USER_HEADER)? {
            None => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .ok()
                    .filter(|id| (1..=feed_core::validate::MAX_USER_ID).contains(id))
                    .ok_or_else(|| {
                        ApiError::Unauthenticated(format!("{USER_HEADER} must be a user id in 1..=2^63-1"))
                    })?,
            ),
        };
        if role == Role::Bff && user_id.is_none() {
            return Err(ApiError::Unauthenticated(format!(
                "a bff token must send {USER_HEADER}"
            )));
        }
        if let (Role::Bff, Some(user), Some(jwt)) = (role, user_id, &self.jwt) {
            let header = crate::jwt::TOKEN_HEADER;
            let presented = sent_once(md, header)?
                .ok_or_else(|| ApiError::Unauthenticated(format!("{header}: a bff call carries its user's token")))?;
            let now = (feed_core::Clock::now_ms(&feed_core::SystemClock) / 1000) as i64;
            let subject = jwt
                .verify(presented, now)
                .map_err(|why| ApiError::Unauthenticated(format!("{header}: {why}")))?;
            if subject != user.to_string() {
                return Err(ApiError::Unauthenticated(format!(
                    "{header}: the token is another user's than {USER_HEADER}"
                )));
            }
        }
        Ok((Caller { role, user_id }, holder.clone()))
    }
}

/// One call's place among its token's calls in flight.
struct Slot(Arc<Holder>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A service behind [`Authenticator::guard`]. Unlike a tonic interceptor it
/// sees the RPC's path, which names the quota class a call is charged to.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    auth: Authenticator,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::Either<
        std::future::Ready<Result<Self::Response, S::Error>>,
        futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.auth.admit(req.headers(), req.uri().path()) {
            Ok((caller, slot)) => {
                req.extensions_mut().insert(caller);
                let call = self.inner.call(req);
                // The place is given back when the answer is ready (a
                // stream's body then flows without holding it) or the call
                // is dropped.
                futures::future::Either::Right(Box::pin(async move {
                    let answer = call.await;
                    drop(slot);
                    answer
                }))
            }
            Err(status) => futures::future::Either::Left(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataMap;

    fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().expect("ascii"));
        }
        m
    }

    fn auth() -> Authenticator {
        Authenticator::new([("i-tok".to_owned(), Role::Internal), ("b-tok".to_owned(), Role::Bff)])
    }

    #[test]
    fn missing_or_unknown_token_is_unauthenticated() {
        assert!(matches!(
            auth().authenticate(&md(&[])),
            Err(ApiError::Unauthenticated(_))
        ));
        assert!(matches!(
            auth().authenticate(&md(&[("authorization", "Bearer nope")])),
            Err(ApiError::Unauthenticated(_))
        ));
    }

    #[test]
    fn bff_token_needs_a_user_and_acts_only_as_that_user() {
        assert!(auth().authenticate(&md(&[("authorization", "Bearer b-tok")])).is_err());
        let caller = auth()
            .authenticate(&md(&[("authorization", "Bearer b-tok"), (USER_HEADER, "7")]))
            .expect("authenticated");
        assert!(caller.act_as("user_id", 7).is_ok());
        assert!(matches!(
            caller.act_as("user_id", 8),
            Err(ApiError::PermissionDenied(_))
        ));
        assert!(caller.require_internal().is_err());
    }

    #[test]
    fn internal_token_acts_for_anyone() {
        let caller = auth()
            .authenticate(&md(&[("authorization", "Bearer i-tok")]))
            .expect("ok");
        assert!(caller.act_as("user_id", 99).is_ok());
        assert!(caller.require_internal().is_ok());
    }

    #[test]
    fn internal_calls_carry_the_token_and_a_deadline() {
        let req = ServiceToken::new("t").expect("token").request(());
        assert_eq!(
            req.metadata().get("authorization").map(|v| v.to_str().ok()),
            Some(Some("Bearer t"))
        );
        assert_eq!(
            req.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()),
            Some(format!("{}u", crate::INTERNAL_DEADLINE.as_micros()).as_str()),
            "the peer sees the deadline"
        );
    }

    #[test]
    fn tokens_file_lines_carry_roles() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# comment\ninternal:x1\nbff:y1\n").expect("write");
        let cfg = AuthConfig {
            tokens_file: file.display().to_string(),
            ..AuthConfig::default()
        };
        let a = Authenticator::from_config(&cfg).expect("loads");
        assert!(a.authenticate(&md(&[("authorization", "Bearer x1")])).is_ok());
        assert!(
            a.authenticate(&md(&[("authorization", "Bearer y1"), (USER_HEADER, "1")]))
                .is_ok()
        );
    }

    /// A service whose calls wait until `open` is closed.
    #[derive(Clone)]
    struct Held {
        open: Arc<tokio::sync::Semaphore>,
    }

    impl tower::Service<http::Request<()>> for Held {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let open = self.open.clone();
            Box::pin(async move {
                let _ = open.acquire().await;
                Ok(http::Response::new(tonic::body::Body::empty()))
            })
        }
    }

    fn call_as(token: &str) -> http::Request<()> {
        let mut r = http::Request::new(());
        *r.uri_mut() = "/feed.timeline.v1.TimelineService/GetTimeline".parse().expect("uri");
        r.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
        r
    }

    fn grpc_status(r: &http::Response<tonic::body::Body>) -> Option<&str> {
        r.headers().get("grpc-status").and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn a_caller_at_its_share_of_the_concurrency_limit_is_refused_and_another_is_still_served() {
        use tower::Service;
        let auth = Authenticator::new([
            ("greedy".to_owned(), Role::Internal),
            ("other".to_owned(), Role::Internal),
        ])
        .with_max_in_flight(3);
        let open = Arc::new(tokio::sync::Semaphore::new(0));
        let mut svc = auth.guard(Held { open: open.clone() });
        // The greedy caller fills its share; its calls stay in flight.
        let held: Vec<_> = (0..3).map(|_| tokio::spawn(svc.call(call_as("greedy")))).collect();
        tokio::task::yield_now().await;
        let refused = tokio::time::timeout(std::time::Duration::from_secs(5), svc.call(call_as("greedy")))
            .await
            .expect("answered at once, not held")
            .expect("answered");
        assert_eq!(grpc_status(&refused), Some("8"), "RESOURCE_EXHAUSTED past its share");
        let served = tokio::spawn(svc.call(call_as("other")));
        tokio::task::yield_now().await;
        // Refused, it would be answered at once; served, it waits like the rest.
        assert!(!served.is_finished(), "the other caller is refused");
        // Once the greedy calls are answered their places are free again.
        open.close();
        for h in held.into_iter().chain([served]) {
            assert_eq!(grpc_status(&h.await.expect("join").expect("answered")), None);
        }
        let again = svc.call(call_as("greedy")).await.expect("answered");
        assert_eq!(grpc_status(&again), None, "places are given back when calls end");
    }
}

/// The bearer token one service presents to another.
#[derive(Clone)]
pub struct ServiceToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceToken(..)")
    }
}

impl ServiceToken {
    /// From the raw token.
    pub fn new(token: &str) -> anyhow::Result<Self> {
        Ok(Self(format!("Bearer {token}").parse()?))
    }

    /// A request carrying the token and the internal deadline
    /// ([`crate::INTERNAL_DEADLINE`]): a peer that hangs fails the call in
    /// time instead of holding it until the caller's own deadline.
    pub fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert("authorization", self.0.clone());
        r.set_timeout(crate::INTERNAL_DEADLINE);
        r
    }
}
