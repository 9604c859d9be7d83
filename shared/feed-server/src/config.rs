//! Layered configuration: defaults → TOML file → environment
//! (`FEED__SECTION__KEY`, e.g. `FEED__REDIS__URL`).
//!
//! One struct for the whole platform, so every key a deployment sets can be
//! checked against it, and a typo fails at start-up (`deny_unknown_fields`).

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use feed_cql::ScyllaConfig;

/// The platform's configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedConfig {
    /// gRPC server settings.
    pub server: ServerConfig,
    /// Service tokens.
    pub auth: AuthConfig,
    /// Per-user rate limits of bff callers.
    pub quotas: QuotaConfig,
    /// Logs.
    pub telemetry: TelemetryConfig,
    /// Embedded storage.
    pub storage: StorageConfig,
    /// Redis, when used instead of the embedded equivalents.
    pub redis: RedisConfig,
    /// ScyllaDB, when used instead of the embedded store.
    pub scylla: ScyllaConfig,
    /// follow-graph service settings.
    pub follow_graph: FollowGraphConfig,
    /// publish service settings.
    pub publish: PublishConfig,
    /// Fanout worker settings.
    pub fanout: FanoutConfig,
    /// Home inbox sizing.
    pub inbox: InboxConfig,
    /// How services reach each other.
    pub clients: ClientsConfig,
    /// notify service settings.
    pub notify: NotifyConfig,
    /// timeline service settings.
    pub timeline: TimelineConfig,
}

/// Rate limits per end user: a token bucket per (bff token, user) and
/// class of call, refilled at the rate, holding at most the burst. Internal
/// callers (the platform's services, operators) are not limited. A rate of
/// 0 turns that class's limit off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Reads (`Get*`, `List*`, `Read*`, `Stream*`, `Watch`) per second.
    pub reads_per_sec: f64,
    /// Reads one user may make at once after a quiet spell.
    pub read_burst: f64,
    /// Writes (every other RPC) per second.
    pub writes_per_sec: f64,
    /// Writes one user may make at once after a quiet spell.
    pub write_burst: f64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            reads_per_sec: 50.0,
            read_burst: 100.0,
            writes_per_sec: 10.0,
            write_burst: 30.0,
        }
    }
}

/// timeline settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimelineConfig {
    /// Most items per page (a larger `limit` is refused).
    pub max_limit: usize,
    /// A read scans at most this many candidate ids per returned item
    /// before answering with `has_more`.
    pub scan_factor: usize,
    /// Most followed feeds read per page for pull-mode items and history.
    pub max_feeds_per_read: usize,
    /// Inbox rebuilds running at once in one process, across all users.
    pub rebuild_budget: usize,
    /// A reader's activity is recorded (the inbox expiry restarted) at
    /// most this often.
    pub active_debounce_ms: u64,
    /// The split timeline's `ReadHomes` calls in flight at once; rounds
    /// asked while that many are under way go together in the next call.
    pub publish_calls_in_flight: usize,
}

impl Default for TimelineConfig {
    fn default() -> Self {
        Self {
            max_limit: 100,
            scan_factor: 10,
            max_feeds_per_read: 1000,
            rebuild_budget: 8,
            active_debounce_ms: 60_000,
            publish_calls_in_flight: 4,
        }
    }
}

/// notify settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Reminds on one (object, action) within a window of this many seconds form one group.
    pub group_window_secs: u64,
    /// Subscription reason → the actions it delivers.
    pub reasons: std::collections::BTreeMap<String, Vec<String>>,
    /// Per-action defaults of a user's subscription config (unlisted actions are on).
    pub default_actions: std::collections::BTreeMap<String, bool>,
    /// Default recipient policy for strangers: `accept`, `filter` or `drop`.
    pub strangers: String,
    /// Default recipient policy for new accounts.
    pub new_accounts: String,
    /// Default recipient policy for mentions from strangers.
    pub unsolicited_mentions: String,
    /// Default recipient policy for reminds and messages from muted users.
    pub muted_users: String,
    /// Accounts younger than this are "new".
    pub new_account_age_secs: u64,
    /// Live events kept per user for resuming Watch streams.
    pub watch_backlog: usize,
    /// Heartbeat period of Watch streams.
    pub heartbeat_ms: u64,
    /// Events buffered per Watch stream.
    pub watch_buffer: usize,
    /// A Watch client whose buffer stays full this long is dropped (it resumes from its last event id).
    pub slow_client_ms: u64,
    /// Open Watch streams one user may hold on one replica; one more is
    /// RESOURCE_EXHAUSTED.
    pub watch_max_per_user: usize,
    /// Open Watch streams one replica serves in all; one more is
    /// RESOURCE_EXHAUSTED (the client retries, landing on another replica).
    pub watch_max_streams: usize,
    /// Subscribers per remind delivery job page.
    pub remind_page: usize,
    /// Redis Stream of publish's activity events.
    pub events_stream: String,
    /// Consumer group of notify on the events stream.
    pub events_group: String,
    /// Redis Stream of remind delivery jobs.
    pub jobs_stream: String,
    /// Most notifications kept and scanned per user (older ones are trimmed).
    pub max_per_user: usize,
    /// A Subscribe call is refused once the user holds this many
    /// subscriptions (all count, those their posts and reactions made too;
    /// those still subscribe them past it).
    pub max_subscriptions_per_user: usize,
    /// How often the sweeper re-drives stale remind jobs and trims notify's streams.
    pub sweep_interval_ms: u64,
    /// A remind job untouched this long is re-driven by the sweeper.
    pub stale_after_ms: u64,
    /// An event or remind job delivered to a replica and unacknowledged
    /// this long is taken over by another.
    pub reclaim_idle_ms: u64,
    /// A user's live log expires this long after its last event.
    pub live_ttl_secs: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        let reasons = [
            ("create_post", vec!["comment", "like", "share", "mention"]),
            ("follow_object", vec!["update", "comment"]),
            ("mentioned", vec!["comment", "update"]),
        ]
        .into_iter()
        .map(|(r, a)| (r.to_owned(), a.into_iter().map(str::to_owned).collect()))
        .collect();
        Self {
            group_window_secs: 6 * 3600,
            reasons,
            default_actions: Default::default(),
            strangers: "accept".into(),
            new_accounts: "accept".into(),
            unsolicited_mentions: "accept".into(),
            muted_users: "filter".into(),
            new_account_age_secs: 7 * 24 * 3600,
            watch_backlog: 1000,
            heartbeat_ms: 15_000,
            watch_buffer: 256,
            slow_client_ms: 5_000,
            watch_max_per_user: 8,
            watch_max_streams: 20_000,
            remind_page: 500,
            events_stream: "feed:activity-events".into(),
            events_group: "notify".into(),
            jobs_stream: "feed:notify-jobs".into(),
            max_per_user: 1000,
            max_subscriptions_per_user: 10_000,
            sweep_interval_ms: 5_000,
            stale_after_ms: 60_000,
            reclaim_idle_ms: 30_000,
            live_ttl_secs: 7 * 24 * 3600,
        }
    }
}

/// publish settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    /// Most bytes of an activity's `extra` JSON.
    pub max_extra_bytes: usize,
    /// Failed attempts before a job is dead-lettered.
    pub max_attempts: u32,
    /// How often the sweeper re-drives stale jobs and releases scheduled items.
    pub sweep_interval_ms: u64,
    /// A pending job untouched this long is re-enqueued by the sweeper.
    pub stale_after_ms: u64,
    /// Most items one actor may have scheduled and not yet released.
    pub max_scheduled_per_actor: usize,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            max_extra_bytes: 8 * 1024,
            max_attempts: 5,
            sweep_interval_ms: 5_000,
            stale_after_ms: 60_000,
            max_scheduled_per_actor: 1000,
        }
    }
}

/// Fanout worker settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FanoutConfig {
    /// Worker tasks in this process (feedd; the fanout-worker binary).
    pub workers: usize,
    /// Jobs one worker runs at once.
    pub concurrency: usize,
    /// Followers per page and per inbox pipeline.
    pub page_size: u32,
    /// Unacknowledged jobs are taken over after this long.
    pub reclaim_idle_ms: u64,
    /// Redis Stream of jobs.
    pub stream: String,
    /// Consumer group of the workers.
    pub group: String,
    /// Fanout jobs per actor per minute that travel in the fast lane; past
    /// it an actor's jobs take the bulk lane (`<stream>:bulk`). 0: no budget.
    pub actor_budget_per_minute: u32,
    /// One worker receive in this many takes the bulk lane first (the
    /// others take the fast lane first).
    pub bulk_share: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            // Measured on 2 cores: 4 x 4 keeps Redis busy while pages are fetched.
            workers: 4,
            concurrency: 4,
            page_size: 1000,
            reclaim_idle_ms: 30_000,
            stream: "feed:jobs".into(),
            group: "fanout".into(),
            actor_budget_per_minute: 120,
            bulk_share: 4,
        }
    }
}

/// Home inbox sizing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboxConfig {
    /// Ids kept per inbox.
    pub cap: usize,
    /// An inbox unread this long expires; its user turns cold.
    pub ttl_secs: u64,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            cap: 800,
            ttl_secs: 7 * 24 * 3600,
        }
    }
}

/// Addresses of other services; empty means "this process" (feedd).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientsConfig {
    /// follow-graph gRPC endpoint, e.g. `http://follow-graph:50051`
    /// (`https://` for TLS).
    pub follow_graph_url: String,
    /// publish gRPC endpoint.
    pub publish_url: String,
    /// Internal token for service-to-service calls; defaults to the first internal token.
    pub token: String,
    /// PEM CA certificate(s) that `https://` peers' certificates must chain
    /// to; required for `https://` URLs.
    pub tls_ca: String,
    /// The name peers' certificates are checked against; empty: the URL's host.
    pub tls_domain: String,
    /// PEM certificate chain presented to peers that ask for one (mutual TLS).
    pub tls_cert: String,
    /// Its PEM private key.
    pub tls_key: String,
}

impl std::fmt::Debug for ClientsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientsConfig")
            .field("follow_graph_url", &self.follow_graph_url)
            .field("publish_url", &self.publish_url)
            .field(
                "token",
                &format_args!("<{}>", if self.token.is_empty() { "unset" } else { "redacted" }),
            )
            .field("tls_ca", &self.tls_ca)
            .field("tls_domain", &self.tls_domain)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

/// gRPC server settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub listen: String,
    /// Prometheus `/metrics` listen address; empty disables it.
    pub admin_listen: String,
    /// Per-request deadline, also capping a client's `grpc-timeout`.
    pub request_timeout_ms: u64,
    /// Requests in flight across all connections before shedding with RESOURCE_EXHAUSTED.
    pub concurrency_limit: usize,
    /// The part of `concurrency_limit` one token's calls may hold at once
    /// (0.0–1.0): past it that caller is refused with RESOURCE_EXHAUSTED
    /// while the rest stays free for other callers.
    pub caller_share: f64,
    /// HTTP/2 streams (calls, including open Watch streams) one connection
    /// may have open at once; a client waits for one to end before it opens
    /// another.
    pub max_concurrent_streams: u32,
    /// Connections are closed after this age so new replicas receive traffic.
    pub max_connection_age_secs: u64,
    /// After SIGTERM: health turns NOT_SERVING, then this pause lets load
    /// balancers notice before the listener closes.
    pub drain_delay_ms: u64,
    /// In-flight requests get this long to finish after the listener closes.
    pub drain_timeout_ms: u64,
    /// PEM certificate chain; TLS is on when this and `tls_key` are set.
    pub tls_cert: String,
    /// PEM private key.
    pub tls_key: String,
    /// PEM CA certificate(s); when set (TLS on), every caller must present a
    /// certificate that chains to it (mutual TLS).
    pub tls_client_ca: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            admin_listen: "127.0.0.1:9090".into(),
            request_timeout_ms: 10_000,
            concurrency_limit: 1024,
            caller_share: 0.75,
            max_concurrent_streams: 1024,
            max_connection_age_secs: 300,
            drain_delay_ms: 0,
            drain_timeout_ms: 10_000,
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_client_ca: String::new(),
        }
    }
}

/// Service tokens. Comma-separated lists so a Kubernetes Secret can inject
/// them as environment variables (`FEED__AUTH__INTERNAL_TOKENS`). `Debug`
/// shows how many there are, never the tokens.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Tokens of the `internal` role: may act for any user and call admin RPCs.
    pub internal_tokens: String,
    /// Tokens of the `bff` role: must name the user in `x-feed-user-id`.
    pub bff_tokens: String,
    /// A file holding more `role:token` lines (a mounted Secret).
    pub tokens_file: String,
    /// A JWKS file (OKP/Ed25519 and EC/P-256 keys): when set, every bff call
    /// also needs `x-feed-user-token`, an end user's JWT signed by one of
    /// its keys, whose `sub` is the user the call names. Empty: off.
    pub jwt_jwks_file: String,
    /// The `iss` those tokens must carry.
    pub jwt_issuer: String,
    /// The `aud` those tokens must carry (one of).
    pub jwt_audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub jwt_leeway_secs: u64,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = |list: &str| list.split(',').filter(|t| !t.trim().is_empty()).count();
        f.debug_struct("AuthConfig")
            .field(
                "internal_tokens",
                &format_args!("<{} redacted>", count(&self.internal_tokens)),
            )
            .field("bff_tokens", &format_args!("<{} redacted>", count(&self.bff_tokens)))
            .field("tokens_file", &self.tokens_file)
            .field("jwt_jwks_file", &self.jwt_jwks_file)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_leeway_secs", &self.jwt_leeway_secs)
            .finish()
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text` or `json`.
    pub log_format: String,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub log_filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: "text".into(),
            // The storage engine logs every flush at info.
            log_filter: "info,fjall=warn,lsm_tree=warn".into(),
        }
    }
}

/// Embedded storage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory of the embedded database (one process per directory).
    pub data_dir: PathBuf,
    /// fsync every acknowledged write (default). Off trades the last
    /// moments of writes in a power loss for speed, e.g. for bulk loads.
    pub sync_writes: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            sync_writes: true,
        }
    }
}

/// Redis. `Debug` leaves out a password in the URL.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/`; empty uses the embedded equivalents.
    pub url: String,
    /// The URL points at a Redis Cluster: inbox scripts then touch one
    /// slot per call (hash tags keep a user's keys together).
    pub cluster: bool,
    /// PEM CA the server's certificate must chain to, for a `rediss://`
    /// URL; empty: the system's trust store.
    pub tls_ca: String,
    /// PEM certificate presented to a Redis that asks for one (`tls-auth-clients`).
    pub tls_cert: String,
    /// Its PEM private key.
    pub tls_key: String,
}

impl RedisConfig {
    /// Makes `tls_*` the process's TLS for `rediss://` URLs
    /// ([`feed_redis::set_tls`]). A TLS setting beside a plaintext URL, or a
    /// certificate without its key, is refused naming it.
    pub fn use_tls(&self) -> anyhow::Result<()> {
        let ca = match self.tls_ca.as_str() {
            "" => None,
            path => Some(crate::client::read_pem("redis.tls_ca", path)?),
        };
        let client = crate::client::pem_pair(("redis.tls_cert", &self.tls_cert), ("redis.tls_key", &self.tls_key))?;
        if ca.is_none() && client.is_none() {
            return Ok(());
        }
        anyhow::ensure!(
            self.url.starts_with("rediss://"),
            "redis.tls_ca, redis.tls_cert and redis.tls_key need a rediss:// redis.url"
        );
        feed_redis::set_tls(ca, client);
        Ok(())
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `redis://user:password@host`: keep the scheme and the host.
        let url = match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://<redacted>@{}", &self.url[..scheme], &self.url[at + 1..])
            }
            _ => self.url.clone(),
        };
        f.debug_struct("RedisConfig")
            .field("url", &url)
            .field("cluster", &self.cluster)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

/// follow-graph settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FollowGraphConfig {
    /// A feed with at least this many followers becomes a celebrity (pulled at read).
    pub celebrity_threshold: u64,
    /// It stops being one below `threshold * (1 - hysteresis)`, so a feed
    /// hovering at the threshold does not flip delivery mode on every follow.
    pub celebrity_hysteresis: f64,
    /// Most feeds one user may follow (bounds timeline merges and rebuilds).
    pub max_following: u64,
    /// Most users one user may block (bounds the state a user can pile up).
    pub max_blocks: u64,
    /// Most users one user may mute.
    pub max_mutes: u64,
    /// The edge log keeps a change at most this long, even when a reader
    /// (publish) has not passed it; readers never look further back.
    pub edge_log_keep_secs: u64,
}

impl Default for FollowGraphConfig {
    fn default() -> Self {
        Self {
            celebrity_threshold: 10_000,
            celebrity_hysteresis: 0.1,
            max_following: 5_000,
            max_blocks: 10_000,
            max_mutes: 10_000,
            edge_log_keep_secs: 7 * 24 * 3600,
        }
    }
}

impl FeedConfig {
    /// Loads defaults, then `file` (when given), then `FEED__*` variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_from(FeedConfig::default(), file, Env::prefixed("FEED__").split("__"))
    }

    /// Like [`FeedConfig::load`], with a binary's own default ports: the
    /// service binaries each default to ports of their own, so several of
    /// them started by hand on one host do not clash.
    pub fn load_with_ports(file: Option<&Path>, listen: u16, admin: u16) -> anyhow::Result<Self> {
        let mut base = FeedConfig::default();
        base.server.listen = format!("127.0.0.1:{listen}");
        base.server.admin_listen = format!("127.0.0.1:{admin}");
        Self::load_from(base, file, Env::prefixed("FEED__").split("__"))
    }

    fn load_from(base: FeedConfig, file: Option<&Path>, env: Env) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(base));
        if let Some(path) = file {
            anyhow::ensure!(path.exists(), "config file {} does not exist", path.display());
            fig = fig.merge(Toml::file(path));
        }
        Ok(fig.merge(env).extract()?)
    }
}

#[cfg(test)]
// figment's Jail API returns its large error type; that is its signature, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_the_config_shows_no_secret() {
        let mut cfg = FeedConfig::default();
        cfg.auth.internal_tokens = "int-s3cret-1, int-s3cret-2".into();
        cfg.auth.bff_tokens = "bff-s3cret".into();
        cfg.redis.url = "redis://app:pw-s3cret@redis.internal:6379/0".into();
        cfg.clients.token = "int-s3cret-1".into();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("<2 redacted>") && shown.contains("<1 redacted>"),
            "{shown}"
        );
        assert!(shown.contains("redis://<redacted>@redis.internal:6379/0"), "{shown}");
        cfg.redis.url = "redis://127.0.0.1:6379/".into();
        assert!(
            format!("{cfg:?}").contains("redis://127.0.0.1:6379/"),
            "a URL without credentials shows whole"
        );
    }

    #[test]
    fn a_binary_defaults_to_its_own_ports_and_settings_still_override_them() {
        figment::Jail::expect_with(|jail| {
            let cfg = FeedConfig::load_with_ports(None, 50062, 9092).expect("config loads");
            assert_eq!(
                (cfg.server.listen.as_str(), cfg.server.admin_listen.as_str()),
                ("127.0.0.1:50062", "127.0.0.1:9092")
            );
            jail.set_env("FEED__SERVER__ADMIN_LISTEN", "127.0.0.1:1");
            let cfg = FeedConfig::load_with_ports(None, 50062, 9092).expect("config loads");
            assert_eq!(cfg.server.admin_listen, "127.0.0.1:1");
            Ok(())
        });
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "feed.toml",
                "[server]\nlisten = \"0.0.0.0:1\"\nrequest_timeout_ms = 5\n[follow_graph]\ncelebrity_threshold = 7\n",
            )?;
            jail.set_env("FEED__SERVER__LISTEN", "0.0.0.0:2");
            jail.set_env("FEED__SCYLLA__NODES", "a:9042, b:9042");
            let cfg = FeedConfig::load(Some(Path::new("feed.toml"))).expect("config loads");
            assert_eq!(cfg.server.listen, "0.0.0.0:2");
            assert_eq!(cfg.server.request_timeout_ms, 5);
            assert_eq!(cfg.follow_graph.celebrity_threshold, 7);
            assert_eq!(cfg.scylla.node_list(), vec!["a:9042", "b:9042"]);
            assert_eq!(cfg.redis.url, "");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FEED__SERVER__LISTN", "typo");
            assert!(FeedConfig::load(None).is_err());
            Ok(())
        });
    }
}
