//! The split deployment as SRE runs it: every service its own process (the
//! real binaries, started with `deploy/local/feed.toml` like
//! `scripts/split-local.sh`), replicas balanced by the internal clients,
//! one real Redis; on the CQL node every stateful service runs twice.
//!
//! Processes get free ports on 127.0.0.1 and keep them across a restart,
//! so the peers' replica lists stay true after a SIGKILL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use feed_server::config::ScyllaConfig;
use tonic::transport::Channel;

use crate::{BFF_TOKEN, INTERNAL_TOKEN, wait_serving};

/// A binary of the split deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// follow-graph.
    FollowGraph,
    /// publish (sweeper, edge tail, scheduled releases).
    Publish,
    /// timeline.
    Timeline,
    /// notify.
    Notify,
    /// fanout-worker.
    FanoutWorker,
}

impl Role {
    /// Every role, in start order.
    pub const ALL: [Role; 5] = [
        Role::FollowGraph,
        Role::Publish,
        Role::Timeline,
        Role::Notify,
        Role::FanoutWorker,
    ];

    /// The binary's file name.
    pub fn binary(self) -> &'static str {
        match self {
            Role::FollowGraph => "follow-graph",
            Role::Publish => "publish",
            Role::Timeline => "timeline",
            Role::Notify => "notify",
            Role::FanoutWorker => "fanout-worker",
        }
    }

    fn stateful(self) -> bool {
        matches!(self, Role::FollowGraph | Role::Publish | Role::Notify)
    }
}

/// How many replicas of each role run.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    /// follow-graph, publish and notify (stores shared only on the CQL node).
    pub stateful: usize,
    /// timeline.
    pub timeline: usize,
    /// fanout-worker.
    pub fanout_workers: usize,
}

impl Topology {
    /// Two of everything on the CQL node; on the embedded stores (a
    /// directory per process) one of each stateful service.
    pub fn default_for_store() -> Self {
        Self {
            stateful: if cql_nodes().is_some() { 2 } else { 1 },
            timeline: 2,
            fanout_workers: 2,
        }
    }

    fn count(&self, role: Role) -> usize {
        match role {
            Role::Timeline => self.timeline,
            Role::FanoutWorker => self.fanout_workers,
            _ => self.stateful,
        }
    }
}

/// The CQL node of the test run, if any: the split deployment is what
/// production runs, so it uses the node whenever the run has one.
pub fn cql_nodes() -> Option<String> {
    std::env::var("FEED__SCYLLA__NODES")
        .ok()
        .filter(|n| !n.trim().is_empty())
}

struct Replica {
    role: Role,
    index: usize,
    addr: SocketAddr,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

/// The running split deployment.
pub struct Split {
    /// Its Redis.
    pub redis: feed_testkit::RedisServer,
    /// The proxy every process reaches Redis through, when started behind one.
    pub proxy: Option<feed_testkit::TcpProxy>,
    replicas: Vec<Replica>,
    cql: Option<ScyllaConfig>,
    dir: tempfile::TempDir,
    /// feedd: one process serves every role.
    one_process: bool,
    /// How the test and the processes dial each other: plaintext, or
    /// mutual TLS with `pki`'s certificates.
    dial: feed_server::client::Dial,
    scheme: &'static str,
    pki: Option<feed_testkit::TestPki>,
}

/// Where the service binaries are: beside the running binary (a bench in
/// `target/release`), or one level up from a test in `target/<profile>/deps`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("binary path");
    let dir = exe.parent().expect("binary dir");
    if dir.ends_with("deps") {
        dir.parent().expect("profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

fn binary(role: Role) -> PathBuf {
    binary_named(role.binary())
}

fn binary_named(name: &str) -> PathBuf {
    let bin = bin_dir().join(name);
    assert!(
        bin.exists(),
        "{} missing: build the service binaries first (cargo build --workspace --bins)",
        bin.display()
    );
    bin
}

fn config_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/feed.toml")
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

fn urls(scheme: &str, addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("{scheme}://{a}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Split {
    /// Starts the default topology with `env` (FEED__… settings) added to
    /// every process; returns once every process reports SERVING.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_with(Topology::default_for_store(), env).await
    }

    /// Starts `topology` with `env` added to every process.
    pub async fn start_with(topology: Topology, env: &[(&str, &str)]) -> Self {
        let redis = feed_testkit::RedisServer::start().expect("redis");
        Self::start_on(redis, topology, env).await
    }

    /// Starts the default topology with every process reaching Redis
    /// through a proxy the test can silence or cut (`proxy`).
    pub async fn start_behind_proxy(env: &[(&str, &str)]) -> Self {
        let redis = feed_testkit::RedisServer::start().expect("redis");
        let proxy = feed_testkit::TcpProxy::start(redis.addr()).await.expect("proxy");
        let url = proxy.redis_url();
        // Later settings win: this one replaces the direct address.
        let env: Vec<(&str, &str)> = env
            .iter()
            .copied()
            .chain([("FEED__REDIS__URL", url.as_str())])
            .collect();
        let mut split = Self::start_on(redis, Topology::default_for_store(), &env).await;
        split.proxy = Some(proxy);
        split
    }

    /// feedd (every service in one process, embedded stores) on Redis
    /// through a proxy, run as the split deployment's processes are: every
    /// role is that process, so the same tests drive it, and killing any
    /// role kills it.
    pub async fn start_feedd_behind_proxy(env: &[(&str, &str)]) -> Self {
        let redis = feed_testkit::RedisServer::start().expect("redis");
        let proxy = feed_testkit::TcpProxy::start(redis.addr()).await.expect("proxy");
        let dir = tempfile::tempdir().expect("dir");
        let addr = free_addr();
        let own = format!("http://{addr}");
        let env: Vec<(String, String)> = [
            ("FEED__REDIS__URL", proxy.redis_url().as_str()),
            ("FEED__AUTH__INTERNAL_TOKENS", INTERNAL_TOKEN),
            ("FEED__AUTH__BFF_TOKENS", BFF_TOKEN),
            ("FEED__CLIENTS__TOKEN", INTERNAL_TOKEN),
            ("FEED__CLIENTS__FOLLOW_GRAPH_URL", own.as_str()),
            ("FEED__CLIENTS__PUBLISH_URL", own.as_str()),
            ("FEED__SERVER__LISTEN", addr.to_string().as_str()),
            ("FEED__SERVER__ADMIN_LISTEN", ""),
            (
                "FEED__STORAGE__DATA_DIR",
                dir.path().join("feedd").display().to_string().as_str(),
            ),
            ("FEED__STORAGE__SYNC_WRITES", "false"),
            ("FEED__TELEMETRY__LOG_FORMAT", "text"),
            ("NO_COLOR", "1"),
        ]
        .into_iter()
        .chain(env.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut split = Self {
            redis,
            proxy: Some(proxy),
            replicas: vec![Replica {
                role: Role::Publish,
                index: 0,
                addr,
                env,
                child: None,
            }],
            cql: None,
            dir,
            one_process: true,
            dial: feed_server::client::Dial::default(),
            scheme: "http",
            pki: None,
        };
        split.spawn(0);
        split.wait_ready(0).await;
        split
    }

    /// Whether this is feedd (one process for every role).
    pub fn is_one_process(&self) -> bool {
        self.one_process
    }

    /// Starts `topology` on `redis` (a bench's, with its own settings).
    pub async fn start_on(redis: feed_testkit::RedisServer, topology: Topology, env: &[(&str, &str)]) -> Self {
        Self::start_on_with(redis, topology, env, None).await
    }

    /// Starts `topology` with every gRPC hop over mutual TLS: each server
    /// serves a certificate of a CA made for this run and asks its callers
    /// for one, the services dial each other over `https://` with theirs,
    /// and so do this harness's channels. Redis stays plaintext here (its
    /// TLS is tested in feed-redis): in debug builds under a loaded CI
    /// machine, a dozen processes' TLS handshakes to Redis at start could
    /// miss its 1 s connect timeout.
    pub async fn start_with_tls(topology: Topology, env: &[(&str, &str)]) -> Self {
        let pki = feed_testkit::TestPki::new().expect("certificates");
        let redis = feed_testkit::RedisServer::start().expect("redis");
        Self::start_on_with(redis, topology, env, Some(pki)).await
    }

    async fn start_on_with(
        redis: feed_testkit::RedisServer,
        topology: Topology,
        env: &[(&str, &str)],
        pki: Option<feed_testkit::TestPki>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let scheme = if pki.is_some() { "https" } else { "http" };
        let cql = cql_nodes().map(|nodes| {
            ScyllaConfig::single_node(nodes, feed_testkit::cql_keyspace("split")).with_login(feed_testkit::cql_login())
        });
        let mut addrs: Vec<(Role, usize, SocketAddr)> = Vec::new();
        for role in Role::ALL {
            for i in 0..topology.count(role) {
                addrs.push((role, i, free_addr()));
            }
        }
        let of = |role: Role| -> Vec<SocketAddr> {
            addrs
                .iter()
                .filter(|(r, _, _)| *r == role)
                .map(|(_, _, a)| *a)
                .collect()
        };
        let mut common: Vec<(String, String)> = vec![
            ("FEED__REDIS__URL".into(), redis.url()),
            ("FEED__AUTH__INTERNAL_TOKENS".into(), INTERNAL_TOKEN.into()),
            ("FEED__AUTH__BFF_TOKENS".into(), BFF_TOKEN.into()),
            ("FEED__CLIENTS__TOKEN".into(), INTERNAL_TOKEN.into()),
            (
                "FEED__CLIENTS__FOLLOW_GRAPH_URL".into(),
                urls(scheme, &of(Role::FollowGraph)),
            ),
            ("FEED__CLIENTS__PUBLISH_URL".into(), urls(scheme, &of(Role::Publish))),
            ("FEED__SERVER__ADMIN_LISTEN".into(), String::new()),
            ("FEED__STORAGE__SYNC_WRITES".into(), "false".into()),
            ("FEED__TELEMETRY__LOG_FORMAT".into(), "text".into()),
            ("NO_COLOR".into(), "1".into()),
        ];
        if let Some(c) = &cql {
            if !c.username.is_empty() {
                common.push(("FEED__SCYLLA__USERNAME".into(), c.username.clone()));
                common.push(("FEED__SCYLLA__PASSWORD".into(), c.password.clone()));
            }
            common.push(("FEED__SCYLLA__NODES".into(), c.nodes.clone()));
            common.push(("FEED__SCYLLA__KEYSPACE".into(), c.keyspace.clone()));
            common.push(("FEED__SCYLLA__REPLICATION_FACTOR".into(), "1".into()));
        }
        let mut clients = feed_server::config::ClientsConfig::default();
        if let Some(pki) = &pki {
            for (k, v) in [
                ("FEED__SERVER__TLS_CERT", pki.cert()),
                ("FEED__SERVER__TLS_KEY", pki.key()),
                ("FEED__SERVER__TLS_CLIENT_CA", pki.ca()),
                ("FEED__CLIENTS__TLS_CA", pki.ca()),
                ("FEED__CLIENTS__TLS_CERT", pki.cert()),
                ("FEED__CLIENTS__TLS_KEY", pki.key()),
            ] {
                common.push((k.into(), v));
            }
            clients.tls_ca = pki.ca();
            clients.tls_cert = pki.cert();
            clients.tls_key = pki.key();
        }
        common.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let mut split = Self {
            redis,
            proxy: None,
            replicas: Vec::new(),
            cql,
            dir,
            one_process: false,
            dial: feed_server::client::Dial::from_config(&clients).expect("client TLS"),
            scheme,
            pki,
        };
        if split.cql.is_some() {
            // As the migration Job does, before any server starts.
            for role in [Role::FollowGraph, Role::Publish, Role::Notify] {
                let out = split
                    .command(role, &common)
                    .arg("--migrate")
                    .output()
                    .expect("migrate runs");
                assert!(
                    out.status.success(),
                    "{} --migrate: {}",
                    role.binary(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        for (role, index, addr) in addrs {
            let mut env = common.clone();
            env.push(("FEED__SERVER__LISTEN".into(), addr.to_string()));
            if role.stateful() {
                let data = split.dir.path().join(format!("{}-{index}", role.binary()));
                env.push(("FEED__STORAGE__DATA_DIR".into(), data.display().to_string()));
            }
            split.replicas.push(Replica {
                role,
                index,
                addr,
                env,
                child: None,
            });
        }
        for at in 0..split.replicas.len() {
            split.spawn(at);
        }
        for at in 0..split.replicas.len() {
            split.wait_ready(at).await;
        }
        split
    }

    fn command(&self, role: Role, env: &[(String, String)]) -> Command {
        let mut cmd = Command::new(if self.one_process {
            binary_named("feedd")
        } else {
            binary(role)
        });
        // Only what this deployment sets: not the test run's own FEED__ variables.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FEED")) {
            cmd.env_remove(k);
        }
        cmd.arg("--config").arg(config_file());
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    fn log_path(&self, at: usize) -> PathBuf {
        let r = &self.replicas[at];
        self.dir.path().join(format!("{}-{}.log", r.role.binary(), r.index))
    }

    fn spawn(&mut self, at: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(at))
            .expect("log file");
        let r = &self.replicas[at];
        let child = self
            .command(r.role, &r.env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("binary starts");
        self.replicas[at].child = Some(child);
    }

    async fn wait_ready(&self, at: usize) {
        let r = &self.replicas[at];
        let channel = self.direct(r.addr);
        if let Err(e) = wait_serving(channel, "", Duration::from_secs(90)).await {
            panic!("{}[{}] not ready: {e}\n{}", r.role.binary(), r.index, self.log_tail(at));
        }
    }

    fn at(&self, role: Role, index: usize) -> usize {
        if self.one_process {
            return 0;
        }
        self.replicas
            .iter()
            .position(|r| r.role == role && r.index == index)
            .unwrap_or_else(|| panic!("no {}[{index}]", role.binary()))
    }

    /// How many replicas of `role` run.
    pub fn count(&self, role: Role) -> usize {
        if self.one_process {
            return 1;
        }
        self.replicas.iter().filter(|r| r.role == role).count()
    }

    /// The gRPC address of one replica.
    pub fn addr(&self, role: Role, index: usize) -> SocketAddr {
        self.replicas[self.at(role, index)].addr
    }

    /// A channel to one replica.
    pub fn channel(&self, role: Role, index: usize) -> Channel {
        self.direct(self.addr(role, index))
    }

    fn direct(&self, addr: SocketAddr) -> Channel {
        self.dial
            .channel(&format!("{}://{addr}", self.scheme))
            .expect("channel")
    }

    /// Whether every gRPC hop is over mutual TLS ([`Split::start_with_tls`]).
    pub fn tls(&self) -> Option<&feed_testkit::TestPki> {
        self.pki.as_ref()
    }

    /// A channel balanced over every replica of `role` the way the services'
    /// own clients balance (`feed_server::client::balanced`): calls go to
    /// any live replica.
    pub fn any(&self, role: Role) -> Channel {
        let list: Vec<SocketAddr> = self
            .replicas
            .iter()
            .filter(|r| r.role == role || self.one_process)
            .map(|r| r.addr)
            .collect();
        self.dial.channel(&urls(self.scheme, &list)).expect("balanced channel")
    }

    /// The process ids of the running replicas (a bench adds up their CPU).
    pub fn pids(&self) -> Vec<u32> {
        self.roles_and_pids().into_iter().map(|(_, pid)| pid).collect()
    }

    /// Each running replica's role and process id.
    pub fn roles_and_pids(&self) -> Vec<(Role, u32)> {
        self.replicas
            .iter()
            .filter_map(|r| r.child.as_ref().map(|c| (r.role, c.id())))
            .collect()
    }

    /// SIGKILLs one replica.
    pub fn kill(&mut self, role: Role, index: usize) {
        let at = self.at(role, index);
        if let Some(mut child) = self.replicas[at].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes every replica of `role` (SIGSTOP): their work waits, their
    /// connections stay open. The tests hold fanout workers this way so
    /// that reads land while jobs are pending, as in a backlog.
    pub fn pause(&self, role: Role) {
        self.signal(role, "-STOP");
    }

    /// Lets paused replicas of `role` run again (SIGCONT).
    pub fn resume(&self, role: Role) {
        self.signal(role, "-CONT");
    }

    fn signal(&self, role: Role, signal: &str) {
        for r in self.replicas.iter().filter(|r| r.role == role) {
            if let Some(child) = &r.child {
                let _ = Command::new("kill").arg(signal).arg(child.id().to_string()).status();
            }
        }
    }

    /// Starts a killed replica again on the same port; returns once it is SERVING.
    pub async fn restart(&mut self, role: Role, index: usize) {
        let at = self.at(role, index);
        assert!(self.replicas[at].child.is_none(), "{} is running", role.binary());
        self.spawn(at);
        self.wait_ready(at).await;
    }

    /// The last lines each process logged (for a failure message).
    pub fn log_tail(&self, at: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(at)).unwrap_or_default();
        // A panic's backtrace would push its message out of the tail.
        let frame = |l: &str| {
            let t = l.trim_start();
            t.starts_with("at ") || t.split_once(": ").is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        };
        let lines: Vec<&str> = text.lines().filter(|l| !frame(l)).collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERMs every process and waits for it to drain and exit; drops
    /// the keyspace on the CQL node.
    pub async fn stop(mut self) {
        for r in &self.replicas {
            if let Some(child) = &r.child {
                let _ = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
                let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            }
        }
        for r in &mut self.replicas {
            if let Some(mut child) = r.child.take() {
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(cfg) = self.cql.take()
            && let Ok(session) = feed_cql::connect_for_schema(&cfg).await
        {
            let _ = session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", cfg.keyspace), ())
                .await;
        }
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for at in 0..self.replicas.len() {
            if let Some(mut child) = self.replicas[at].child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if failed {
                let r = &self.replicas[at];
                eprintln!("--- {}[{}] ---\n{}", r.role.binary(), r.index, self.log_tail(at));
            }
        }
    }
}
