//! The real `feedd` binary as a user runs it: flags, dev token, metrics,
//! gRPC, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use feed_proto::followgraph::v1::FollowRequest;
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use tonic::metadata::MetadataValue;

struct Feedd {
    child: Child,
    grpc: String,
    metrics: String,
    token: String,
}

impl Drop for Feedd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path) -> Feedd {
    let mut child = Command::new(env!("CARGO_BIN_EXE_feedd"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env_remove("FEED__AUTH__INTERNAL_TOKENS")
        // The embedded stores, whatever CQL node the test run provides.
        .env_remove("FEED__SCYLLA__NODES")
        .env_remove("FEED__AUTH__BFF_TOKENS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("feedd starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut grpc, mut metrics, mut token) = (String::new(), String::new(), String::new());
    while grpc.is_empty() || token.is_empty() || metrics.is_empty() {
        let line = lines.next().expect("feedd prints its addresses").expect("line");
        if let Some(a) = line.strip_prefix("feedd listening on ") {
            grpc = a.to_owned();
        } else if let Some(a) = line.strip_prefix("feedd metrics on http://") {
            metrics = a.trim_end_matches("/metrics").to_owned();
        } else if let Some((_, t)) = line.split_once("): ") {
            token = t.to_owned();
        }
    }
    Feedd {
        child,
        grpc,
        metrics,
        token,
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("admin port");
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body
}

#[tokio::test]
async fn feedd_serves_with_a_dev_token_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut feedd = start(dir.path());
    let saved = std::fs::read_to_string(dir.path().join("dev-token")).expect("dev-token file");
    assert_eq!(saved.trim(), feedd.token);

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", feedd.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = FollowGraphServiceClient::new(channel);
    let mut req = tonic::Request::new(FollowRequest {
        follower_id: 1,
        feed: "user:2".into(),
    });
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {}", feedd.token)).expect("ascii"),
    );
    // Health may still be settling; the RPC itself works at once.
    assert!(client.follow(req).await.expect("follow").into_inner().changed);

    let metrics = http_get(&feedd.metrics, "/metrics");
    assert!(metrics.contains("feed_rpc_requests_total"), "{metrics}");
    assert!(metrics.contains("FollowGraphService/Follow"), "{metrics}");

    let started = Instant::now();
    let pid = feedd.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = feedd.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "feedd did not exit after SIGTERM");
        // Yield, so this client can answer the server's GOAWAY and let the drain finish.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    eprintln!("exit after SIGTERM took {:?}", started.elapsed());

    // Restarted on the same directory: same token, the follow is still there.
    let again = start(dir.path());
    assert_eq!(again.token, feedd.token);
}
