//! The publish binary as an operator starts it by hand: what it refuses,
//! what it reports while a dependency is missing, and what it says when
//! its data directory is taken.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use feed_testkit::RedisServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Waits up to 20 s for a log line containing `text`.
    fn wait_for_line(&self, text: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {text:?}"),
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The binary with nothing configured but what `env` sets (the embedded
/// store, whatever CQL node the test run provides).
fn publish(env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_publish"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FEED")) {
        cmd.env_remove(k);
    }
    cmd.env("FEED__TELEMETRY__LOG_FORMAT", "json");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn spawn(mut cmd: Command) -> Running {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("publish starts");
    let (tx, lines) = mpsc::channel();
    for out in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    Running { child, lines }
}

fn base_env(dir: &std::path::Path, redis: &str, graph_port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("FEED__SERVER__LISTEN", format!("127.0.0.1:{}", free_port())),
        ("FEED__SERVER__ADMIN_LISTEN", String::new()),
        ("FEED__STORAGE__DATA_DIR", dir.display().to_string()),
        ("FEED__REDIS__URL", redis.to_owned()),
        (
            "FEED__CLIENTS__FOLLOW_GRAPH_URL",
            format!("http://127.0.0.1:{graph_port}"),
        ),
        ("FEED__CLIENTS__TOKEN", "t".into()),
        ("FEED__AUTH__INTERNAL_TOKENS", "t".into()),
    ]
}

#[test]
fn without_a_redis_url_publish_refuses_to_start_and_names_the_setting() {
    let dir = tempfile::tempdir().expect("dir");
    let env: Vec<_> = base_env(dir.path(), "", 1)
        .into_iter()
        .filter(|(k, _)| *k != "FEED__REDIS__URL")
        .collect();
    let out = publish(&env).output().expect("publish runs");
    assert!(!out.status.success(), "publish started without Redis");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("redis.url is required"), "{err}");
}

#[tokio::test]
async fn with_follow_graph_unreachable_publish_stays_not_serving_and_says_why() {
    let redis = RedisServer::start().expect("redis");
    let dir = tempfile::tempdir().expect("dir");
    let env = base_env(dir.path(), &redis.url(), free_port());
    let addr = env[0].1.clone();
    let running = spawn(publish(&env));
    let line = running.wait_for_line("not ready");
    assert!(line.contains("follow-graph unreachable"), "{line}");
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("publish listens");
    for _ in 0..3 {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: "feed.publish.v1.PublishService".into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::NotServing as i32);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[test]
fn a_second_process_on_the_same_data_dir_names_the_directory() {
    let redis = RedisServer::start().expect("redis");
    let dir = tempfile::tempdir().expect("dir");
    let first = spawn(publish(&base_env(dir.path(), &redis.url(), free_port())));
    first.wait_for_line("serving");
    let second = spawn(publish(&base_env(dir.path(), &redis.url(), free_port())));
    let line = second.wait_for_line("publish storage not reachable");
    let publish_dir = dir.path().join("publish").display().to_string();
    assert!(
        line.contains(&publish_dir) && line.contains("another process"),
        "{line}"
    );
}
