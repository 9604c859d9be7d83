//! A running platform for end-to-end tests: feedd's services on
//! `127.0.0.1:0`, real gRPC, tokens of both roles.

pub mod inproc;
pub mod model;
pub mod raw;
pub mod split;

use std::net::SocketAddr;
use std::time::Duration;

use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use feed_proto::notify::v1::notify_service_client::NotifyServiceClient;
use feed_proto::publish::v1::publish_service_client::PublishServiceClient;
use feed_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
use feed_server::{Authenticator, FeedConfig, Role, Shutdown};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The internal-role token of a test platform.
pub const INTERNAL_TOKEN: &str = "test-internal-token";
/// The bff-role token of a test platform.
pub const BFF_TOKEN: &str = "test-bff-token";

/// The stores the platform under test runs on. With `FEED_E2E_STORE=cql`
/// (the test script's second pass), follow-graph, publish and notify run on
/// the CQL node of `FEED__SCYLLA__NODES`, each platform in a keyspace of its
/// own; otherwise on the embedded stores.
pub fn cql_store() -> Option<feed_server::config::ScyllaConfig> {
    if !on_cql() {
        return None;
    }
    let nodes = std::env::var("FEED__SCYLLA__NODES").unwrap_or_default();
    assert!(
        !nodes.trim().is_empty(),
        "FEED_E2E_STORE=cql needs FEED__SCYLLA__NODES (scripts/cql-node.sh start)"
    );
    Some(
        feed_server::config::ScyllaConfig::single_node(nodes, feed_testkit::cql_keyspace("e2e"))
            .with_login(feed_testkit::cql_login()),
    )
}

/// Whether this is the CQL pass (`FEED_E2E_STORE=cql`).
pub fn on_cql() -> bool {
    std::env::var("FEED_E2E_STORE").ok().as_deref() == Some("cql")
}

/// Generated cases for a property test: fewer on the CQL node, where every
/// case migrates a keyspace of its own.
pub fn property_cases(embedded: u32) -> u32 {
    if on_cql() { (embedded / 8).max(2) } else { embedded }
}

/// Applies every service's schema, as the Kubernetes migration Job does
/// with `--migrate` (nothing on the embedded stores).
pub async fn migrate_all(cfg: &FeedConfig) -> anyhow::Result<()> {
    follow_graph::migrate(cfg).await?;
    publish::migrate(cfg).await?;
    notify::migrate(cfg).await
}

/// feedd's services running in this process.
pub struct Platform {
    /// The gRPC address.
    pub addr: SocketAddr,
    /// A connected channel.
    pub channel: Channel,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The keyspace of its own on the CQL node, dropped by [`Platform::stop`].
    cql: Option<feed_server::config::ScyllaConfig>,
    _dir: tempfile::TempDir,
}

impl Platform {
    /// Starts on embedded storage in a fresh directory; returns once health is SERVING.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts with configuration changes applied by `tune` (Redis, thresholds...).
    pub async fn start_with(tune: impl FnOnce(&mut FeedConfig)) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut cfg = FeedConfig::default();
        cfg.storage.data_dir = dir.path().to_path_buf();
        cfg.server.admin_listen = String::new();
        cfg.server.drain_timeout_ms = 2_000;
        if let Some(scylla) = cql_store() {
            cfg.scylla = scylla;
        }
        tune(&mut cfg);
        migrate_all(&cfg).await?;
        let cfg_scylla = cfg.scylla.clone();
        let auth = Authenticator::new([
            (INTERNAL_TOKEN.to_owned(), Role::Internal),
            (BFF_TOKEN.to_owned(), Role::Bff),
        ])
        .with_server_limits(&cfg)
        .with_jwt_config(&cfg.auth)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = Shutdown::new();
        let mut task = tokio::spawn(feed_all_in_one::run(
            cfg,
            auth,
            INTERNAL_TOKEN.to_owned(),
            listener,
            shutdown.clone(),
        ));
        // A platform that failed to start says why (its task's error), not
        // only that nothing answers.
        let started = async {
            let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
            wait_serving(channel.clone(), "", Duration::from_secs(10)).await?;
            anyhow::Ok(channel)
        };
        let channel = tokio::select! {
            started = started => started?,
            ended = &mut task => {
                return Err(match ended {
                    Ok(Err(cause)) => cause.context("the platform stopped at start"),
                    Ok(Ok(())) => anyhow::anyhow!("the platform stopped at start"),
                    Err(join) => join.into(),
                });
            }
        };
        Ok(Self {
            addr,
            channel,
            shutdown,
            task,
            cql: (!cfg_scylla.nodes.is_empty()).then_some(cfg_scylla),
            _dir: dir,
        })
    }

    /// Starts on its own redis-server (inboxes, streams, live logs, leases),
    /// then applies `tune`; the server lives as long as the returned handle.
    pub async fn start_on_redis(
        tune: impl FnOnce(&mut FeedConfig),
    ) -> anyhow::Result<(Self, feed_testkit::RedisServer)> {
        let redis = feed_testkit::RedisServer::start()?;
        let url = redis.url();
        let platform = Self::start_with(|cfg| {
            cfg.redis.url = url;
            tune(cfg);
        })
        .await?;
        Ok((platform, redis))
    }

    /// Triggers shutdown and waits for the drain to finish; on the CQL
    /// node, drops the platform's keyspace (a node holding hundreds of
    /// tables runs out of heap).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.task.await??;
        if let Some(cfg) = self.cql {
            let session = feed_cql::connect_for_schema(&cfg).await?;
            session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", cfg.keyspace), ())
                .await?;
        }
        Ok(())
    }

    /// The shutdown signal (to test draining while requests run).
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }
}

/// Polls the health service until `service` is SERVING.
pub async fn wait_serving(channel: Channel, service: &str, timeout: Duration) -> anyhow::Result<()> {
    let mut client = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = client
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status.as_ref().ok() == Some(&(ServingStatus::Serving as i32)) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{service:?} not SERVING: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request carrying `token`, and `x-feed-user-id` when `user` is given.
pub fn authed<T>(msg: T, token: &str, user: Option<u64>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = MetadataValue::try_from(format!("Bearer {token}")) {
        req.metadata_mut().insert("authorization", v);
    }
    if let Some(u) = user
        && let Ok(v) = MetadataValue::try_from(u.to_string())
    {
        req.metadata_mut().insert(feed_server::auth::USER_HEADER, v);
    }
    req
}

/// A request with the internal token.
pub fn internal<T>(msg: T) -> tonic::Request<T> {
    authed(msg, INTERNAL_TOKEN, None)
}

/// A request with the bff token acting as `user`.
pub fn bff<T>(msg: T, user: u64) -> tonic::Request<T> {
    authed(msg, BFF_TOKEN, Some(user))
}

/// A platform on a redis-server of its own with a client per service: what
/// the end-to-end modules talk to (each wraps it in its own `Env` for the
/// helpers of its area).
pub struct TestApp {
    /// The platform under test.
    pub platform: Platform,
    /// Its Redis (inboxes, streams, live logs, leases).
    pub redis: feed_testkit::RedisServer,
    /// follow-graph.
    pub graph: FollowGraphServiceClient<Channel>,
    /// publish.
    pub publish: PublishServiceClient<Channel>,
    /// timeline.
    pub timeline: TimelineServiceClient<Channel>,
    /// notify.
    pub notify: NotifyServiceClient<Channel>,
}

impl TestApp {
    /// Starts a platform on its own redis-server, configured by `tune`.
    pub async fn start(tune: impl FnOnce(&mut FeedConfig)) -> Self {
        let (platform, redis) = Platform::start_on_redis(tune).await.expect("platform");
        Self::over(platform, redis)
    }

    /// Like [`TestApp::start`], with every Redis connection of the platform
    /// going through a proxy the test can silence or cut (fault tests).
    pub async fn start_behind_proxy(tune: impl FnOnce(&mut FeedConfig)) -> (Self, feed_testkit::TcpProxy) {
        let redis = feed_testkit::RedisServer::start().expect("redis-server");
        let proxy = feed_testkit::TcpProxy::start(redis.addr()).await.expect("proxy");
        let url = proxy.redis_url();
        let platform = Platform::start_with(|cfg| {
            cfg.redis.url = url;
            tune(cfg);
        })
        .await
        .expect("platform");
        (Self::over(platform, redis), proxy)
    }

    fn over(platform: Platform, redis: feed_testkit::RedisServer) -> Self {
        let channel = platform.channel.clone();
        Self {
            graph: FollowGraphServiceClient::new(channel.clone()),
            publish: PublishServiceClient::new(channel.clone()),
            timeline: TimelineServiceClient::new(channel.clone()),
            notify: NotifyServiceClient::new(channel),
            platform,
            redis,
        }
    }

    /// `follower` follows `feed` (internal token).
    pub async fn follow(&mut self, follower: u64, feed: &str) {
        self.graph
            .follow(internal(feed_proto::followgraph::v1::FollowRequest {
                follower_id: follower,
                feed: feed.into(),
            }))
            .await
            .expect("follow");
    }

    /// Makes `user` a member of `feed` or not (internal token): what lets
    /// them post to a group or company feed.
    pub async fn set_member(&mut self, user: u64, feed: &str, member: bool) {
        self.graph
            .set_membership(internal(feed_proto::followgraph::v1::SetMembershipRequest {
                feed: feed.into(),
                user_id: user,
                member,
            }))
            .await
            .expect("membership");
    }

    /// Stops the platform (drain, keyspace dropped on the CQL node), then its Redis.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.platform.stop().await
    }

    /// Waits until publish reports no pending job (fanout, edge and event
    /// jobs all done), up to 30 s (a test that made a thousand edge jobs
    /// took 15 s to drain them on a CI machine busy with other tests). It
    /// first lets a tail round pass (publish reads follow-graph's edge log
    /// every 200 ms), so an edge change just made is already a pending job.
    pub async fn settled(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        tokio::time::sleep(Duration::from_millis(250)).await;
        loop {
            let lag = self
                .publish
                .get_fanout_lag(internal(feed_proto::publish::v1::GetFanoutLagRequest {}))
                .await
                .expect("lag")
                .into_inner();
            if lag.pending_jobs == 0 {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "jobs still pending: {lag:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Declares `Env`, an area's wrapper over [`TestApp`] for its own helpers
/// (an `impl Env` in the test module), dereferencing to the app.
#[macro_export]
macro_rules! area_env {
    () => {
        /// The area's helpers over the shared [`feed_e2e::TestApp`].
        struct Env(feed_e2e::TestApp);

        impl std::ops::Deref for Env {
            type Target = feed_e2e::TestApp;
            fn deref(&self) -> &feed_e2e::TestApp {
                &self.0
            }
        }

        impl std::ops::DerefMut for Env {
            fn deref_mut(&mut self) -> &mut feed_e2e::TestApp {
                &mut self.0
            }
        }
    };
}
