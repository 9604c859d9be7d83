//! Test support: a real `redis-server` per test on a free port, a TCP
//! proxy that injects network faults, and helpers to wait for servers
//! without sleeping blindly.

pub mod jwt;
mod proxy;
mod tls;

pub use proxy::TcpProxy;
pub use tls::TestPki;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; the OS will not hand
/// it out again immediately).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `addr` until it accepts a TCP connection or `timeout` passes.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("{addr} did not accept connections within {timeout:?}")
}

/// The contact point of the CQL node the test script started
/// (`FEED__SCYLLA__NODES`, see `scripts/cql-node.sh`). Without one the
/// caller skips and says so, unless `FEED_REQUIRE_CQL` is set (the test
/// script sets it once its node answers): then a missing node fails the
/// test instead of skipping it.
pub fn cql_nodes() -> Option<String> {
    let nodes = std::env::var("FEED__SCYLLA__NODES").unwrap_or_default();
    if !nodes.trim().is_empty() {
        return Some(nodes);
    }
    assert!(
        std::env::var_os("FEED_REQUIRE_CQL").is_none(),
        "FEED_REQUIRE_CQL is set but FEED__SCYLLA__NODES is not: the CQL node is missing"
    );
    println!("skipped: FEED__SCYLLA__NODES is not set (start a node with scripts/cql-node.sh start)");
    None
}

/// The login of the test run's CQL node (`FEED__SCYLLA__USERNAME`,
/// `FEED__SCYLLA__PASSWORD`: the node the test script starts asks for one);
/// empty when unset.
pub fn cql_login() -> (String, String) {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    (var("FEED__SCYLLA__USERNAME"), var("FEED__SCYLLA__PASSWORD"))
}

/// A keyspace name of its own for one test (`what`, this process, a clock
/// reading), so tests sharing a CQL node never see each other's rows.
pub fn cql_keyspace(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let what: String = what.chars().filter(|c| c.is_ascii_alphanumeric()).take(20).collect();
    format!("t_{what}_{}_{nanos}", std::process::id())
}

/// Runs a service binary's `--migrate` step (what the Kubernetes migration
/// Job runs) against `nodes` and `keyspace`, replicated once; panics with
/// its exit status when it fails.
pub fn run_migrate(binary: &str, nodes: &str, keyspace: &str) {
    let status = Command::new(binary)
        .arg("--migrate")
        .env("FEED__SCYLLA__NODES", nodes)
        .env("FEED__SCYLLA__KEYSPACE", keyspace)
        .env("FEED__SCYLLA__REPLICATION_FACTOR", "1")
        .status()
        .expect("the binary runs");
    assert!(status.success(), "{binary} --migrate: {status}");
}

/// The `redis-server` binary: `REDIS_SERVER` or the one on PATH.
fn redis_binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

/// A `redis-server` child process owned by one test; killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
    /// What it was started with, for [`RedisServer::restart`].
    args: Vec<String>,
    /// Whether it speaks only TLS ([`RedisServer::start_tls`]).
    tls: bool,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port with persistence off and the inbox
    /// encoding settings the platform documents.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Starts a server from a configuration file (e.g. the platform's
    /// `deploy/redis.conf`), then extra `--name value` arguments.
    pub fn start_with_config(conf: &std::path::Path, extra: &[&str]) -> anyhow::Result<Self> {
        let conf = conf.display().to_string();
        let mut args = vec![conf.as_str()];
        args.extend_from_slice(extra);
        Self::start_args(&args, true, false)
    }

    /// Starts a server with extra `--name value` arguments.
    pub fn start_with(extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_args(extra, false, false)
    }

    /// Starts a server that speaks only TLS, with `pki`'s certificate, and
    /// asks clients for one of `pki`'s CA (mutual TLS).
    pub fn start_tls(pki: &TestPki) -> anyhow::Result<Self> {
        let (cert, key, ca) = (pki.cert(), pki.key(), pki.ca());
        Self::start_args(
            &[
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "yes",
            ],
            false,
            true,
        )
    }

    /// `tls`: the chosen port is the TLS port, the plaintext one is off.
    fn start_args(extra: &[&str], config_first: bool, tls: bool) -> anyhow::Result<Self> {
        let mut dir = tempfile::tempdir()?;
        // A port can be taken between probing and binding: retry a few times.
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            // A configuration file must be redis-server's first argument.
            let (first, rest) = match (config_first, extra.split_first()) {
                (true, Some((conf, rest))) => (vec![*conf], rest),
                _ => (vec![], extra),
            };
            let port_arg = port.to_string();
            let dir_arg = dir.path().display().to_string();
            let ports = if tls {
                vec!["--port", "0", "--tls-port", &port_arg]
            } else {
                vec!["--port", &port_arg]
            };
            let args: Vec<String> = first
                .into_iter()
                .chain(ports)
                .chain([
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    &dir_arg,
                ])
                .chain(rest.iter().copied())
                .map(str::to_owned)
                .collect();
            let child = spawn_redis(&args)?;
            let mut server = Self {
                child,
                port,
                args,
                tls,
                _dir: dir,
            };
            match wait_for_port(server.addr(), Duration::from_secs(10)) {
                Ok(()) if server.child.try_wait()?.is_none() => return Ok(server),
                Ok(()) => last_err = Some(anyhow::anyhow!("redis-server exited at start (port {port} taken?)")),
                Err(e) => last_err = Some(e),
            }
            dir = server.take_dir()?;
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// Stops a failed attempt and hands its directory to the next one.
    fn take_dir(mut self) -> anyhow::Result<tempfile::TempDir> {
        self.kill();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir()?);
        Ok(dir)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A `redis://` URL for clients (`rediss://` when it speaks TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// Freezes the server (SIGSTOP): connections stay open and the kernel
    /// still accepts new ones, but nothing is answered, as when Redis hangs
    /// or the network drops packets silently.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status();
    }

    /// Kills the server now (fault tests), leaving the port closed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// After [`RedisServer::kill`]: a new server on the same port, empty
    /// (persistence is off), as a Redis that crashed and was restarted.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = spawn_redis(&self.args)?;
        wait_for_port(self.addr(), Duration::from_secs(10))
    }
}

fn spawn_redis(args: &[String]) -> anyhow::Result<Child> {
    Command::new(redis_binary())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run redis-server ({e}); the test script installs it"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a contract test's backend factory returns: the store under test
/// and what must live as long as it (a temp dir, a redis-server), or None
/// to skip a backend this machine does not have.
pub type Backend<S> = Option<(Box<S>, Box<dyn std::any::Any>)>;

/// Emits one `#[tokio::test]` per check of a contract suite for one
/// backend, as quickwit's metastore test macro does: a failing check names
/// itself (`embedded::follow_is_idempotent...`) and does not hide the
/// others. `$make` is an async fn in the calling module that takes the
/// check's name (for a keyspace of its own) and returns a [`Backend`].
#[macro_export]
macro_rules! contract_tests {
    ($backend:ident, $make:ident, $suite:path, [$($check:ident),+ $(,)?]) => {
        mod $backend {
            use $suite as suite;
            $(
                #[tokio::test]
                async fn $check() {
                    let Some((store, _keep)) = super::$make(stringify!($check)).await else {
                        return;
                    };
                    suite::$check(&*store).await;
                }
            )+
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_server_answers_and_stops_on_drop() {
        let server = RedisServer::start().expect("redis-server starts");
        let addr = server.addr();
        let mut s = TcpStream::connect(addr).expect("connect");
        use std::io::{Read, Write};
        s.write_all(b"PING\r\n").expect("write");
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"+PONG\r\n");
        drop(s);
        drop(server);
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
    }
}
