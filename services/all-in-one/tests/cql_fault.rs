//! The real `feedd` binary on a CQL node of its own that is down at start,
//! then stopped mid-run and restarted: health says NOT_SERVING (and the log
//! says why) while the node is unreachable, every call answers UNAVAILABLE
//! within its deadline, and every acknowledged write is there afterwards.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use feed_proto::followgraph::v1 as fg;
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use feed_proto::publish::v1 as pb;
use feed_proto::publish::v1::publish_service_client::PublishServiceClient;
use feed_server::FeedConfig;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TOKEN: &str = "fault-test-internal";
/// The server's request deadline in this test.
const DEADLINE: Duration = Duration::from_secs(8);

/// A CQL node in a directory of its own, through the project's script.
struct Node {
    dir: tempfile::TempDir,
    port: u16,
}

impl Node {
    fn script(&self, command: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/cql-node.sh");
        let out = Command::new(script)
            .arg(command)
            .env("CQL_NODE_DIR", self.dir.path())
            .env("CQL_NODE_PORT", self.port.to_string())
            .output()
            .expect("cql-node.sh runs");
        assert!(
            out.status.success(),
            "cql-node.sh {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.script("stop");
    }
}

struct Feedd {
    child: Child,
    addr: String,
    log: std::path::PathBuf,
}

impl Drop for Feedd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn feedd(data: &std::path::Path, cfg: &FeedConfig) -> Feedd {
    let log = data.join("feedd.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_feedd"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "", "--data-dir"])
        .arg(data)
        .env("FEED__AUTH__INTERNAL_TOKENS", TOKEN)
        .env("FEED__SCYLLA__NODES", &cfg.scylla.nodes)
        .env("FEED__SCYLLA__KEYSPACE", &cfg.scylla.keyspace)
        .env("FEED__SCYLLA__REQUEST_TIMEOUT_MS", "3000")
        .env("FEED__SERVER__REQUEST_TIMEOUT_MS", DEADLINE.as_millis().to_string())
        .env("FEED__REDIS__URL", &cfg.redis.url)
        .env("FEED__TELEMETRY__LOG_FORMAT", "text")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("feedd starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines.next().expect("feedd prints its address").expect("line");
        if let Some(a) = line.strip_prefix("feedd listening on ") {
            break a.to_owned();
        }
    };
    Feedd { child, addr, log }
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {TOKEN}")).expect("ascii"),
    );
    req
}

async fn health(channel: &Channel) -> Option<ServingStatus> {
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await
        .ok()?
        .into_inner()
        .status;
    ServingStatus::try_from(status).ok()
}

async fn wait_health(channel: &Channel, want: ServingStatus, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = health(channel).await;
        if got == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "health stayed {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn post(n: usize) -> pb::PublishRequest {
    pb::PublishRequest {
        activity: Some(pb::NewActivity {
            actor: 1,
            verb: "post".into(),
            object: format!("post:{n}"),
            foreign_id: format!("p-{n}"),
            ..pb::NewActivity::default()
        }),
        publish_at_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cql_node_down_at_start_and_mid_run_costs_readiness_not_acknowledged_writes() {
    // Runs where the test script provides CQL nodes; this one starts its own.
    if feed_testkit::cql_nodes().is_none() {
        return;
    }
    let redis = feed_testkit::RedisServer::start().expect("redis");
    let node = Node {
        dir: tempfile::tempdir().expect("node dir"),
        port: feed_testkit::free_port().expect("port"),
    };
    let mut cfg = FeedConfig::default();
    cfg.scylla.nodes = format!("127.0.0.1:{}", node.port);
    cfg.scylla.keyspace = feed_testkit::cql_keyspace("fault");
    cfg.scylla.replication_factor = 1;
    (cfg.scylla.username, cfg.scylla.password) = feed_testkit::cql_login();
    cfg.redis.url = redis.url();

    // Down at start: the server answers health, NOT_SERVING, and says why.
    let data = tempfile::tempdir().expect("data");
    let feedd = feedd(data.path(), &cfg);
    let channel = Channel::from_shared(format!("http://{}", feedd.addr))
        .expect("uri")
        .connect_lazy();
    wait_health(&channel, ServingStatus::NotServing, Duration::from_secs(20)).await;
    let mut graph = FollowGraphServiceClient::new(channel.clone());
    let early = graph
        .follow(authed(fg::FollowRequest {
            follower_id: 2,
            feed: "user:1".into(),
        }))
        .await
        .expect_err("not ready");
    assert_eq!(early.code(), Code::Unavailable, "{early:?}");
    let log = std::fs::read_to_string(&feedd.log).expect("log");
    assert!(log.contains("storage not reachable"), "the log says why: {log}");

    // The node comes up and gets its schema: feedd turns SERVING by itself.
    node.script("start");
    feed_e2e_migrate(&cfg).await;
    wait_health(&channel, ServingStatus::Serving, Duration::from_secs(60)).await;

    let mut publish = PublishServiceClient::new(channel.clone());
    let mut follows_acked = Vec::new();
    let mut posts_acked = Vec::new();
    let mut failed = Vec::new();
    for n in 0..40usize {
        if n == 20 {
            node.script("stop");
        }
        let user = 100 + n as u64;
        let started = Instant::now();
        let follow = graph
            .follow(authed(fg::FollowRequest {
                follower_id: user,
                feed: "user:1".into(),
            }))
            .await;
        let published = publish.publish(authed(post(n))).await;
        let mut check = |what: &'static str, status: tonic::Status| {
            assert!(n >= 20, "{what} {n} failed while the node was up: {status:?}");
            assert_eq!(status.code(), Code::Unavailable, "{what} {n}: {status:?}");
            failed.push((what, n));
        };
        match follow {
            Ok(_) => follows_acked.push(user),
            Err(status) => check("follow", status),
        }
        match published {
            Ok(r) => posts_acked.push(r.into_inner().activity_id),
            Err(status) => check("publish", status),
        }
        assert!(
            started.elapsed() < DEADLINE * 2,
            "call {n} took {:?}: past its deadline",
            started.elapsed()
        );
    }
    assert_eq!(
        (follows_acked.len(), posts_acked.len()),
        (20, 20),
        "acknowledged while up"
    );
    assert!(!failed.is_empty(), "calls failed while the node was down");
    // A serving server leaves rotation after three failed checks in a row
    // (each up to the statement timeout, a second apart), not on the first.
    wait_health(&channel, ServingStatus::NotServing, Duration::from_secs(45)).await;

    // Back on its data: SERVING again, and every acknowledged write is there.
    node.script("resume");
    wait_health(&channel, ServingStatus::Serving, Duration::from_secs(90)).await;
    let followers = graph
        .list_followers(authed(fg::ListFollowersRequest {
            feed: "user:1".into(),
            page_size: 1000,
            page_token: String::new(),
        }))
        .await
        .expect("followers")
        .into_inner();
    let listed = followers.follower_ids;
    for user in &follows_acked {
        assert!(
            listed.contains(user),
            "acknowledged follow of {user} is lost: {listed:?}"
        );
    }
    let stored = publish
        .get_activities(authed(pb::GetActivitiesRequest {
            ids: posts_acked.clone(),
            include_deleted: false,
            viewer_id: 0,
        }))
        .await
        .expect("activities")
        .into_inner();
    assert!(
        stored.missing_ids.is_empty(),
        "acknowledged posts lost: {:?}",
        stored.missing_ids
    );
    // What failed is retried and lands once; a retried post keeps one id.
    for (what, n) in failed {
        if what == "publish" {
            let again = publish.publish(authed(post(n))).await.expect("retry").into_inner();
            let twice = publish.publish(authed(post(n))).await.expect("again").into_inner();
            assert_eq!(again.activity_id, twice.activity_id);
        }
    }
}

async fn feed_e2e_migrate(cfg: &FeedConfig) {
    follow_graph::migrate(cfg).await.expect("graph schema");
    publish::migrate(cfg).await.expect("publish schema");
    notify::migrate(cfg).await.expect("notify schema");
}
