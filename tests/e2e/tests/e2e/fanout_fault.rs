//! A fanout worker process is SIGKILLed in the middle of a 20,000-follower
//! fanout; another takes over the unacknowledged sub-jobs (XAUTOCLAIM) and
//! every follower ends with the item exactly once.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use feed_e2e::{INTERNAL_TOKEN, Platform, internal};
use feed_inbox::redis_store::{floor_key, inbox_key};
use feed_proto::followgraph::v1 as fg;
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use feed_proto::publish::v1 as pb;
use feed_proto::publish::v1::publish_service_client::PublishServiceClient;
use feed_testkit::RedisServer;
use futures::StreamExt;

const FOLLOWERS: u64 = 20_000;

/// The fanout-worker binary, built beside the test binaries.
fn worker_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("fanout-worker");
    assert!(
        bin.exists(),
        "{} missing: build the workspace binaries first",
        bin.display()
    );
    bin
}

fn spawn_worker(redis: &str, addr: std::net::SocketAddr) -> Child {
    Command::new(worker_binary())
        .env("FEED__REDIS__URL", redis)
        .env("FEED__CLIENTS__PUBLISH_URL", format!("http://{addr}"))
        .env("FEED__CLIENTS__FOLLOW_GRAPH_URL", format!("http://{addr}"))
        .env("FEED__CLIENTS__TOKEN", INTERNAL_TOKEN)
        // Small pages make the fanout long enough to interrupt.
        .env("FEED__FANOUT__PAGE_SIZE", "100")
        .env("FEED__FANOUT__WORKERS", "2")
        .env("FEED__FANOUT__CONCURRENCY", "4")
        .env("FEED__FANOUT__RECLAIM_IDLE_MS", "500")
        // Its health and metrics on free ports: a worker left over from an
        // interrupted run must not keep this one from starting.
        .env("FEED__SERVER__LISTEN", "127.0.0.1:0")
        .env("FEED__SERVER__ADMIN_LISTEN", "")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fanout-worker starts")
}

async fn holders(conn: &mut redis::aio::MultiplexedConnection, users: &[u64], id: u64) -> (usize, usize) {
    // In pipelines of a thousand: one of 20,000 outlasts the client's
    // response timeout on a busy machine.
    let mut all: Vec<Vec<Vec<u8>>> = Vec::with_capacity(users.len());
    for chunk in users.chunks(1000) {
        let mut pipe = redis::pipe();
        for u in chunk {
            pipe.cmd("ZRANGE").arg(inbox_key(*u)).arg(0).arg(-1);
        }
        let part: Vec<Vec<Vec<u8>>> = pipe.query_async(conn).await.expect("zrange");
        all.extend(part);
    }
    let with = all
        .iter()
        .filter(|m| m.iter().any(|x| x.as_slice() == id.to_be_bytes()))
        .count();
    let extra = all.iter().filter(|m| m.len() > 1).count();
    (with, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_worker_mid_fanout_loses_and_duplicates_nothing() {
    let redis = RedisServer::start().expect("redis");
    let url = redis.url();
    let platform = Platform::start_with(|cfg| {
        cfg.redis.url = url.clone();
        cfg.fanout.workers = 0;
        cfg.follow_graph.celebrity_threshold = 1_000_000;
        // Set-up speed: this test is about workers dying, not about fsync.
        cfg.storage.sync_writes = false;
    })
    .await
    .expect("platform");
    // The first worker also drains the follows' own (edge) jobs before the publish.
    let mut first = spawn_worker(&url, platform.addr);
    let mut publish = PublishServiceClient::new(platform.channel.clone());
    // Followers spread over three shards (ids up to 140,000).
    let users: Vec<u64> = (1..=FOLLOWERS).map(|i| i * 7 + 1).collect();
    let graph = FollowGraphServiceClient::new(platform.channel.clone());
    futures::stream::iter(users.clone())
        .for_each_concurrent(32, |u| {
            let mut g = graph.clone();
            async move {
                g.follow(internal(fg::FollowRequest {
                    follower_id: u,
                    feed: "user:1".into(),
                }))
                .await
                .expect("follow");
            }
        })
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        // Edge jobs are ingested every 200 ms; wait until none is pending twice in a row.
        let idle = || async {
            publish
                .clone()
                .get_fanout_lag(internal(pb::GetFanoutLagRequest {}))
                .await
                .expect("lag")
                .into_inner()
                .pending_jobs
                == 0
        };
        if idle().await {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if idle().await {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "set-up jobs never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = redis::Client::open(url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    for chunk in users.chunks(1000) {
        let mut pipe = redis::pipe();
        for u in chunk {
            pipe.cmd("SET").arg(floor_key(*u)).arg(&0u64.to_be_bytes()[..]).ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.expect("live inboxes");
    }

    let id = publish
        .publish(internal(pb::PublishRequest {
            activity: Some(pb::NewActivity {
                actor: 1,
                verb: "post".into(),
                object: "post:big".into(),
                foreign_id: "big".into(),
                ..pb::NewActivity::default()
            }),
            publish_at_ms: 0,
        }))
        .await
        .expect("publish")
        .into_inner()
        .activity_id;

    // Kill it once it has delivered to some followers but not all.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (with, _) = holders(&mut conn, &users, id).await;
        if with > 0 {
            assert!(with < users.len(), "fanout finished before it could be interrupted");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "fanout never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    let (partial, _) = holders(&mut conn, &users, id).await;

    let mut second = spawn_worker(&url, platform.addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (with, extra) = holders(&mut conn, &users, id).await;
        assert_eq!(extra, 0, "an inbox holds something twice or something else");
        if with == users.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {with} of {} delivered",
            users.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("killed after {partial} of {FOLLOWERS} deliveries; the second worker finished the rest");
    second.kill().expect("stop");
    let _ = second.wait();
    platform.stop().await.expect("stop");
}
