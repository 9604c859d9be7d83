//! `feed-bench split`: the split deployment (every service its own release
//! binary, one replica each, talking gRPC: `feed_e2e::split`) on the
//! timeline bench's follow graph. GetTimeline throughput and latency
//! against the raw limit of that shape measured in the same run: a minimal
//! tonic server that per request makes one gRPC call to a second minimal
//! tonic server and one Redis `ZRANGE ... BYLEX REV LIMIT 0 20`. Then
//! publish → visible: an author with 10,000 push-mode followers posts, and
//! the time until the post shows in a follower's timeline (and until every
//! inbox holds it).

use std::time::{Duration, Instant};

use feed_e2e::split::{Role, Split, Topology};
use feed_inbox::redis_store::{LIVE_MARK, floor_key, inbox_key};
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use feed_proto::publish::v1::publish_service_client::PublishServiceClient;
use feed_proto::timeline::v1 as tl;
use feed_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
use feed_proto::timeline::v1::timeline_service_server::{TimelineService, TimelineServiceServer};
use feed_testkit::RedisServer;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::timeline_bench::{ROUNDS, Rng, Samples, drive, follow_all, populate, process_cpu, redis_calls, redis_cpu};
use crate::{req, wait_idle};

/// The raw limit of the split shape: one gRPC hop to a peer, one Redis read.
struct RawSplit {
    conn: redis::aio::MultiplexedConnection,
    peer: HealthClient<Channel>,
}

#[tonic::async_trait]
impl TimelineService for RawSplit {
    async fn get_timeline(
        &self,
        req: tonic::Request<tl::GetTimelineRequest>,
    ) -> Result<tonic::Response<tl::GetTimelineResponse>, tonic::Status> {
        self.peer
            .clone()
            .check(HealthCheckRequest { service: String::new() })
            .await?;
        crate::timeline_bench::raw_page(&self.conn, req.get_ref().user_id).await
    }

    async fn get_feed(
        &self,
        _: tonic::Request<tl::GetFeedRequest>,
    ) -> Result<tonic::Response<tl::GetFeedResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("raw limit serves timelines only"))
    }
}

async fn serve_on_free_port(router: tonic::transport::server::Router) -> anyhow::Result<Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    Ok(Channel::from_shared(format!("http://{addr}"))?.connect().await?)
}

/// The raw limit's two servers; returns a channel to the first.
async fn raw_limit(conn: redis::aio::MultiplexedConnection) -> anyhow::Result<Channel> {
    let (_, health) = tonic_health::server::health_reporter();
    let peer = serve_on_free_port(tonic::transport::Server::builder().add_service(health)).await?;
    let raw = RawSplit {
        conn,
        peer: HealthClient::new(peer),
    };
    serve_on_free_port(tonic::transport::Server::builder().add_service(TimelineServiceServer::new(raw))).await
}

pub(crate) fn bench_redis() -> anyhow::Result<RedisServer> {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/redis.conf");
    RedisServer::start_with_config(&conf, &[])
}

pub(crate) const ONE_EACH: Topology = Topology {
    stateful: 1,
    timeline: 1,
    fanout_workers: 1,
};

/// The benchmark: timeline reads at `levels`, then publish → visible with `followers`.
pub async fn run(users: u64, requests: usize, levels: Vec<usize>, followers: u64, posts: usize) -> anyhow::Result<()> {
    let redis = bench_redis()?;
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let threshold = (users / 20).to_string();
    let mut env = vec![
        ("FEED__FOLLOW_GRAPH__CELEBRITY_THRESHOLD", threshold.as_str()),
        ("FEED__FOLLOW_GRAPH__MAX_FOLLOWING", "100"),
        ("FEED__FANOUT__WORKERS", "4"),
        ("FEED__TELEMETRY__LOG_FILTER", "warn"),
    ];
    // Each service's runtime threads (tokio's default: one per core), for
    // trying what a pod's CPU share would give it.
    let threads = std::env::var("FEED_BENCH_SERVICE_THREADS").unwrap_or_default();
    if !threads.is_empty() {
        env.push(("TOKIO_WORKER_THREADS", threads.as_str()));
    }
    let split = Split::start_on(redis, ONE_EACH, &env).await;
    populate(
        split.channel(Role::FollowGraph, 0),
        split.channel(Role::Publish, 0),
        &mut conn,
        users,
    )
    .await?;
    let timeline = split.channel(Role::Timeline, 0);
    let raw = raw_limit(conn.clone()).await?;
    let pids = split.pids();
    // Reads in a steady state: the timeline holds each reader's follow list
    // and relations per graph version (`timeline::graph_cache`), and a read
    // that first meets a reader fetches them from follow-graph. Two reads
    // per user first, so most readers are held as for an active user base.
    let warm = Instant::now();
    drive(timeline.clone(), &mut conn, &[], users, 2 * users as usize, 64, 99).await?;
    println!("warm-up: {} reads in {:.1}s", 2 * users, warm.elapsed().as_secs_f64());
    let mut last = String::new();
    for c in levels {
        drive(timeline.clone(), &mut conn, &pids, users, 200, c.min(200), 0).await?;
        drive(raw.clone(), &mut conn, &[], users, 200, c.min(200), 0).await?;
        let (mut ours, mut base) = (Samples::default(), Samples::default());
        let by_process =
            |pids: &[(Role, u32)]| -> Vec<f64> { pids.iter().map(|(_, p)| process_cpu(&p.to_string())).collect() };
        let roles = split.roles_and_pids();
        let cpu_before = by_process(&roles);
        // Redis and this client serve the raw rounds too: counted around
        // the split's rounds only.
        let (mut redis_s, mut client_s) = (0.0, 0.0);
        let mut calls: std::collections::BTreeMap<String, u64> = Default::default();
        for round in 0..ROUNDS {
            let (r0, c0, k0) = (
                redis_cpu(&mut conn).await?,
                process_cpu("self"),
                redis_calls(&mut conn).await?,
            );
            ours.add(drive(timeline.clone(), &mut conn, &pids, users, requests / ROUNDS, c, round).await?);
            redis_s += redis_cpu(&mut conn).await? - r0;
            client_s += process_cpu("self") - c0;
            for (cmd, n) in redis_calls(&mut conn).await? {
                *calls.entry(cmd.clone()).or_default() += n.saturating_sub(k0.get(&cmd).copied().unwrap_or(0));
            }
            base.add(drive(raw.clone(), &mut conn, &[], users, requests / ROUNDS, c, round).await?);
        }
        // Where a read's CPU goes, process by process (the raw rounds in
        // between cost these processes next to nothing).
        let reads = ours.latencies.len().max(1) as f64;
        let mut shares: Vec<String> = roles
            .iter()
            .zip(by_process(&roles).iter().zip(&cpu_before))
            .map(|((role, _), (after, before))| format!("{} {:.0} us", role.binary(), (after - before) * 1e6 / reads))
            .collect();
        shares.push(format!("redis {:.0} us", redis_s * 1e6 / reads));
        shares.push(format!("bench client {:.0} us", client_s * 1e6 / reads));
        println!("c={c}: CPU per read by process: {}", shares.join(", "));
        // INFO itself and the bench's own sampling are left out.
        let per_read: Vec<String> = calls
            .iter()
            .filter(|(cmd, n)| !matches!(cmd.as_str(), "info") && **n as f64 / reads >= 0.01)
            .map(|(cmd, n)| format!("{cmd} {:.2}", *n as f64 / reads))
            .collect();
        println!("c={c}: Redis commands per read: {}", per_read.join(", "));
        let (cpu, raw_cpu) = (ours.cpu_per_request(), base.cpu_per_request());
        let (rate, p50, p99) = ours.summary();
        let (raw_rate, raw_p50, raw_p99) = base.summary();
        println!(
            "c={c}: split {rate:.0} req/s p50 {p50:.2} ms p99 {p99:.2} ms; raw gRPC+gRPC+Redis {raw_rate:.0} req/s p50 {raw_p50:.2} ms p99 {raw_p99:.2} ms; \
             CPU per request (all processes, Redis) {cpu:.0} us vs raw {raw_cpu:.0} us ({:.0}%)",
            100.0 * raw_cpu / cpu
        );
        last = format!(
            "split: {rate:.0} req/s p50 {p50:.2} ms p99 {p99:.2} ms at c={c} = {:.0}% of raw gRPC+gRPC+Redis ({raw_rate:.0} req/s)",
            100.0 * rate / raw_rate
        );
    }
    split.stop().await;

    let (visible, delivered) = publish_to_visible(followers, posts).await?;
    let pct = |v: &[Duration], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "publish -> visible in a follower's timeline ({followers} followers, push): p50 {:.1} ms p99 {:.1} ms; -> in every inbox: p50 {:.1} ms p99 {:.1} ms",
        pct(&visible, 0.5),
        pct(&visible, 0.99),
        pct(&delivered, 0.5),
        pct(&delivered, 0.99)
    );
    println!("{last}; publish->visible p99 {:.1} ms", pct(&visible, 0.99));
    Ok(())
}

/// `posts` posts, one at a time, by an author `followers` users follow in
/// push mode (live inboxes): for each, the time from the Publish call to
/// the post showing in a random follower's first page, and to the fanout's
/// end. Sorted.
async fn publish_to_visible(followers: u64, posts: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let redis = bench_redis()?;
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let split = Split::start_on(
        redis,
        ONE_EACH,
        &[
            ("FEED__FOLLOW_GRAPH__CELEBRITY_THRESHOLD", "1000000"),
            ("FEED__FANOUT__WORKERS", "4"),
            ("FEED__TELEMETRY__LOG_FILTER", "warn"),
        ],
    )
    .await;
    let author = 1u64;
    let first = 1_000_000u64;
    let fans: Vec<u64> = (first..first + followers).collect();
    for chunk in fans.chunks(1000) {
        let mut pipe = redis::pipe();
        for u in chunk {
            pipe.cmd("SET").arg(floor_key(*u)).arg(&0u64.to_be_bytes()[..]).ignore();
            pipe.cmd("ZADD").arg(inbox_key(*u)).arg(0).arg(LIVE_MARK).ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
    }
    let graph = FollowGraphServiceClient::new(split.channel(Role::FollowGraph, 0));
    follow_all(&graph, fans.iter().map(|u| (*u, author)).collect()).await;
    let mut publish = PublishServiceClient::new(split.channel(Role::Publish, 0));
    wait_idle(&mut publish).await?;
    let mut timeline = TimelineServiceClient::new(split.channel(Role::Timeline, 0));
    let mut rng = Rng(99);
    let (mut visible, mut delivered) = (Vec::new(), Vec::new());
    for n in 0..posts {
        let reader = fans[(rng.next() % followers) as usize];
        let t = Instant::now();
        let id = publish
            .publish(crate::post(author, format!("v{n}"), format!("visible-{n}")))
            .await?
            .into_inner()
            .activity_id;
        loop {
            let page = timeline
                .get_timeline(req(tl::GetTimelineRequest {
                    user_id: reader,
                    limit: 20,
                    cursor: String::new(),
                }))
                .await?
                .into_inner();
            if page
                .items
                .iter()
                .any(|i| i.activity.as_ref().is_some_and(|a| a.id == id))
            {
                visible.push(t.elapsed());
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(30),
                "post {id} not visible to {reader} after 30 s"
            );
        }
        wait_idle(&mut publish).await?;
        delivered.push(t.elapsed());
    }
    split.stop().await;
    visible.sort();
    delivered.sort();
    Ok((visible, delivered))
}
