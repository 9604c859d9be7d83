//! Redis connections that fail fast and replace themselves.
//!
//! redis-rs's `ConnectionManager` reconnects after a dropped connection, but
//! by default it retries six times with exponential backoff, and every call
//! waits on that attempt: when Redis goes away each call hangs for 6–13 s.
//! And a call that times out leaves the connection in place, so a
//! connection whose packets are silently dropped (a dead node behind a
//! still-open socket, a NAT that forgot it) fails every call after it, at
//! the response timeout each, until the kernel gives up on it minutes later.
//!
//! [`Redis`] is a connection manager with both fixed: one connect attempt
//! per reconnect, bounded by [`Timeouts::connect`] (a call made while Redis
//! is down fails within that, and the next call tries again), and a call
//! that times out replaces the connection it went through, so the next one
//! dials afresh. After such a timeout the client fails every call at once
//! until a background PING on a fresh connection answers: a silent or
//! frozen Redis costs one caller the response timeout, not every caller
//! (a home read must answer, degraded, well within a second). It is a
//! [`ConnectionLike`]: commands and pipelines run on it as on the manager.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// How long a connection and a reply may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Dialing, including the handshake.
    pub connect: Duration,
    /// A command's reply; past it the call fails and the connection is replaced.
    pub response: Duration,
}

impl Default for Timeouts {
    /// 1 s to connect, 1 s for a reply: a Redis command takes microseconds,
    /// and these bound what a caller waits when Redis is gone.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(1),
            response: Duration::from_secs(1),
        }
    }
}

/// A shared, self-replacing connection (see the module docs). Clones share it.
#[derive(Clone)]
pub struct Redis {
    shared: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// The connection in use and its generation: a timed-out call replaces
    /// only the one it went through, not a newer one.
    current: Mutex<(u64, ConnectionManager)>,
    /// A call timed out and no PING has answered since: calls fail at once.
    down: AtomicBool,
    /// How long a probe PING may take.
    response: Duration,
}

impl Shared {
    /// The connection in use, with its generation.
    fn current(&self) -> (u64, ConnectionManager) {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (current.0, current.1.clone())
    }

    /// Replaces connection `generation` with a fresh one unless a newer one
    /// already stands; false when it did (another call got there first).
    fn replace(&self, generation: u64) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != generation {
            return false;
        }
        // Lazy: builds the manager without dialing, so holding the lock is cheap.
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(fresh) => *current = (generation + 1, fresh),
            Err(err) => tracing::warn!(error = %err, "redis: no fresh connection"),
        }
        true
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").finish_non_exhaustive()
    }
}

/// The TLS material `rediss://` URLs are dialed with: one Redis per
/// process, so one setting per process, made at start ([`set_tls`]).
static TLS: std::sync::RwLock<Option<redis::TlsCertificates>> = std::sync::RwLock::new(None);

/// From now on, `rediss://` URLs check the server's certificate against
/// `ca` (PEM; None: the system's trust store) and present `client` (PEM
/// certificate and key) to a server that asks for one.
pub fn set_tls(ca: Option<Vec<u8>>, client: Option<(Vec<u8>, Vec<u8>)>) {
    let certs = redis::TlsCertificates {
        client_tls: client.map(|(client_cert, client_key)| redis::ClientTlsConfig {
            client_cert,
            client_key,
        }),
        root_cert: ca,
    };
    *TLS.write().unwrap_or_else(|p| p.into_inner()) = Some(certs);
}

/// A client for `url`: `redis://` in plaintext, `rediss://` over TLS with
/// what [`set_tls`] set (the system's trust store when nothing was).
pub fn client(url: &str) -> RedisResult<redis::Client> {
    if url.starts_with("rediss://") {
        // rustls asks for the process's crypto provider when both or
        // neither are built in; ring, as tonic's. Already installed: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let tls = TLS.read().unwrap_or_else(|p| p.into_inner()).clone();
    match tls {
        Some(certs) if url.starts_with("rediss://") => redis::Client::build_with_tls(url, certs),
        _ => redis::Client::open(url),
    }
}

impl Redis {
    /// Connects to `url` with the default [`Timeouts`].
    pub async fn connect(url: &str) -> RedisResult<Self> {
        Self::connect_with(url, Timeouts::default()).await
    }

    /// Connects to `url`; fails if the first connection cannot be made.
    pub async fn connect_with(url: &str, timeouts: Timeouts) -> RedisResult<Self> {
        let client = client(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(timeouts.response))
            // One attempt per reconnect: calls fail fast while Redis is
            // away, and each later call starts a new attempt.
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                config,
                current: Mutex::new((0, manager)),
                down: AtomicBool::new(false),
                response: timeouts.response,
            }),
        })
    }

    /// The connection in use, with its generation.
    fn current(&self) -> (u64, ConnectionManager) {
        self.shared.current()
    }

    /// After a call through connection `generation` failed with `e`:
    /// replaces that connection if the call timed out.
    fn after_error(&self, generation: u64, e: &redis::RedisError) {
        if !e.is_timeout() {
            return;
        }
        // Calls that timed out on the same connection together replace it once.
        if !self.shared.replace(generation) {
            return;
        }
        tracing::warn!(error = %e, "redis: call timed out; replacing its connection");
        if !self.shared.down.swap(true, Ordering::SeqCst) {
            tokio::spawn(probe(self.shared.clone()));
        }
    }

    /// Whether calls fail at once (a call timed out; no PING has answered since).
    pub fn is_failing_fast(&self) -> bool {
        self.shared.down.load(Ordering::SeqCst)
    }

    fn refuse_while_down(&self) -> RedisResult<()> {
        if self.shared.down.load(Ordering::SeqCst) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "redis unreachable",
                "a call timed out; failing fast until a PING answers".to_owned(),
            )));
        }
        Ok(())
    }

    /// Connections replaced after timeouts so far.
    pub fn replacements(&self) -> u64 {
        self.shared.current.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

/// PINGs until one answers, then lets calls through again; each failed
/// PING replaces the connection it went through (one dialed while Redis
/// was silent may stay silent). One per client at a time (see `down`).
async fn probe(shared: Arc<Shared>) {
    loop {
        let (generation, mut conn) = shared.current();
        let ping = tokio::time::timeout(shared.response, redis::cmd("PING").query_async::<String>(&mut conn)).await;
        if matches!(ping, Ok(Ok(_))) {
            shared.down.store(false, Ordering::SeqCst);
            tracing::info!("redis: answering again");
            return;
        }
        shared.replace(generation);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            self.refuse_while_down()?;
            let (generation, mut conn) = self.current();
            let result = conn.req_packed_command(cmd).await;
            if let Err(e) = &result {
                self.after_error(generation, e);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.refuse_while_down()?;
            let (generation, mut conn) = self.current();
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &result {
                self.after_error(generation, e);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }
}
