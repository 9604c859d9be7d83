//! `feed-bench timeline`: GetTimeline (limit 20) over gRPC at several
//! concurrency levels, against the raw limit measured in the same run: a
//! minimal tonic server answering each request with one Redis
//! `ZRANGE ... BYLEX REV LIMIT 0 20` from the same redis-server, driven by
//! the same client, the two measured in alternating rounds.

use std::time::{Duration, Instant};

use feed_inbox::redis_store::{LIVE_MARK, floor_key, inbox_key};
use feed_proto::followgraph::v1 as fg;
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use feed_proto::publish::v1::publish_service_client::PublishServiceClient;
use feed_proto::timeline::v1 as tl;
use feed_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
use feed_proto::timeline::v1::timeline_service_server::{TimelineService, TimelineServiceServer};
use feed_testkit::RedisServer;
use futures::StreamExt;
use tonic::transport::Channel;

use crate::{req, start_platform, wait_idle};

/// A deterministic generator (xorshift), so runs are comparable.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A power-law pick in 1..=n: low ids are the celebrities.
    pub(crate) fn zipf(&mut self, n: u64) -> u64 {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((n as f64).powf(u)).floor().max(1.0) as u64
    }
}

/// The raw limit's work: a user's newest 20 inbox ids in one Redis read, as a response.
pub(crate) async fn raw_page(
    conn: &redis::aio::MultiplexedConnection,
    user: u64,
) -> Result<tonic::Response<tl::GetTimelineResponse>, tonic::Status> {
    let mut c = conn.clone();
    let ids: Vec<Vec<u8>> = redis::cmd("ZRANGE")
        .arg(inbox_key(user))
        // Ids only, below the live mark.
        .arg(&[b'(', LIVE_MARK[0]][..])
        .arg("-")
        .arg("BYLEX")
        .arg("REV")
        .arg("LIMIT")
        .arg(0)
        .arg(20)
        .query_async(&mut c)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    Ok(tonic::Response::new(tl::GetTimelineResponse {
        items: ids
            .iter()
            .map(|m| tl::TimelineItem {
                activity: Some(feed_proto::common::v1::Activity {
                    id: m.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }))
}

/// The raw limit: one Redis read per request, nothing else.
struct Raw {
    conn: redis::aio::MultiplexedConnection,
}

#[tonic::async_trait]
impl TimelineService for Raw {
    async fn get_timeline(
        &self,
        req: tonic::Request<tl::GetTimelineRequest>,
    ) -> Result<tonic::Response<tl::GetTimelineResponse>, tonic::Status> {
        raw_page(&self.conn, req.get_ref().user_id).await
    }

    async fn get_feed(
        &self,
        _: tonic::Request<tl::GetFeedRequest>,
    ) -> Result<tonic::Response<tl::GetFeedResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("raw limit serves timelines only"))
    }
}

/// Latencies of one drive, how long it took and the CPU it used.
#[derive(Default)]
pub(crate) struct Samples {
    pub(crate) latencies: Vec<Duration>,
    elapsed: f64,
    /// CPU seconds of this process (client and server) and the redis-server.
    cpu: f64,
}

impl Samples {
    pub(crate) fn add(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.elapsed += other.elapsed;
        self.cpu += other.cpu;
    }

    /// CPU microseconds per request: steadier than req/s when client,
    /// server and Redis share two cores and the scheduler's interleaving
    /// moves throughput from round to round.
    pub(crate) fn cpu_per_request(&self) -> f64 {
        self.cpu * 1e6 / self.latencies.len().max(1) as f64
    }

    /// (req/s, p50 ms, p99 ms).
    pub(crate) fn summary(mut self) -> (f64, f64, f64) {
        self.latencies.sort();
        let all = &self.latencies;
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
        (all.len() as f64 / self.elapsed, pct(0.50), pct(0.99))
    }
}

/// Timeline and raw limit run in alternating rounds, so a change in the
/// machine's state during a level weighs on both sides alike.
pub(crate) const ROUNDS: usize = 4;

/// CPU seconds one process has used (`self` or a pid).
pub(crate) fn process_cpu(proc: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{proc}/stat")) else {
        return 0.0;
    };
    // Fields after the command name: state is the first, utime the 12th, stime the 13th (in 1/100 s).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used so far by this process, the processes `pids` and the redis-server.
pub(crate) async fn cpu_seconds(redis: &mut redis::aio::MultiplexedConnection, pids: &[u32]) -> anyhow::Result<f64> {
    let process = process_cpu("self") + pids.iter().map(|p| process_cpu(&p.to_string())).sum::<f64>();
    Ok(process + redis_cpu(redis).await?)
}

/// The Redis server's CPU seconds so far.
pub(crate) async fn redis_cpu(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(redis).await?;
    Ok(info
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| matches!(*k, "used_cpu_sys" | "used_cpu_user"))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum())
}

/// Calls per Redis command so far (`INFO commandstats`).
pub(crate) async fn redis_calls(
    redis: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(redis).await?;
    Ok(info
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_")?.split_once(':'))
        .filter_map(|(cmd, v)| {
            let calls = v.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((cmd.to_owned(), calls.parse().ok()?))
        })
        .collect())
}

/// Runs `requests` GetTimeline calls at concurrency `c`; round `round`
/// picks its own users. CPU counts this process, `pids` and Redis.
pub(crate) async fn drive(
    channel: Channel,
    redis: &mut redis::aio::MultiplexedConnection,
    pids: &[u32],
    users: u64,
    requests: usize,
    c: usize,
    round: usize,
) -> anyhow::Result<Samples> {
    let cpu = cpu_seconds(redis, pids).await?;
    let start = Instant::now();
    let per = requests / c;
    let tasks: Vec<_> = (0..c)
        .map(|w| {
            let mut client = TimelineServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1) ^ ((round as u64) << 32));
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let user = 1 + rng.next() % users;
                    let t = Instant::now();
                    client
                        .get_timeline(req(tl::GetTimelineRequest {
                            user_id: user,
                            limit: 20,
                            cursor: String::new(),
                        }))
                        .await?;
                    lat.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(lat)
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::with_capacity(requests);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Samples {
        latencies,
        elapsed,
        cpu: cpu_seconds(redis, pids).await? - cpu,
    })
}

/// The benchmark.
pub async fn run(users: u64, requests: usize, levels: Vec<usize>) -> anyhow::Result<()> {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/redis.conf");
    let redis = RedisServer::start_with_config(&conf, &[])?;
    let platform = start_platform(&redis.url(), 4, 4, |cfg| {
        cfg.follow_graph.celebrity_threshold = users / 20;
        cfg.follow_graph.max_following = COLD_FOLLOWS as u64;
    })
    .await?;
    let channel = Channel::from_shared(format!("http://{}", platform.addr))?
        .connect()
        .await?;
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;

    populate(channel.clone(), channel.clone(), &mut conn, users).await?;

    let raw_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let raw_addr = raw_listener.local_addr()?;
    let raw = Raw { conn: conn.clone() };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TimelineServiceServer::new(raw))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(raw_listener).with_nodelay(Some(true))),
    );
    let raw_channel = Channel::from_shared(format!("http://{raw_addr}"))?.connect().await?;

    let mut last = String::new();
    for c in levels {
        // Warm both paths, then measure them in alternating rounds.
        drive(channel.clone(), &mut conn, &[], users, 200, c.min(200), 0).await?;
        drive(raw_channel.clone(), &mut conn, &[], users, 200, c.min(200), 0).await?;
        let (mut ours, mut raw) = (Samples::default(), Samples::default());
        for round in 0..ROUNDS {
            ours.add(drive(channel.clone(), &mut conn, &[], users, requests / ROUNDS, c, round).await?);
            raw.add(drive(raw_channel.clone(), &mut conn, &[], users, requests / ROUNDS, c, round).await?);
        }
        let (cpu, raw_cpu) = (ours.cpu_per_request(), raw.cpu_per_request());
        let (rate, p50, p99) = ours.summary();
        let (raw_rate, raw_p50, raw_p99) = raw.summary();
        println!(
            "c={c}: {rate:.0} req/s p50 {p50:.2} ms p99 {p99:.2} ms; raw gRPC+Redis {raw_rate:.0} req/s p50 {raw_p50:.2} ms p99 {raw_p99:.2} ms; \
             CPU per request (client, server, Redis) {cpu:.0} us vs raw {raw_cpu:.0} us ({:.0}%)",
            100.0 * raw_cpu / cpu
        );
        last = format!(
            "timeline: {rate:.0} req/s p50 {p50:.2} ms p99 {p99:.2} ms at c={c} = {:.0}% of raw gRPC+Redis ({raw_rate:.0} req/s)",
            100.0 * rate / raw_rate
        );
    }
    let cold = cold_first_pages(channel.clone(), &mut conn, users).await?;
    platform.shutdown.trigger();
    let _ = platform.task.await;
    println!("{cold}");
    println!("{last}");
    Ok(())
}

/// Returning users measured by [`cold_first_pages`].
const COLD_USERS: u64 = 100;
/// Feeds each of them follows.
const COLD_FOLLOWS: usize = 1_000;

/// A returning user's first page: [`COLD_USERS`] users each follow
/// [`COLD_FOLLOWS`] of the bench's users, then their inboxes are gone (as
/// after a long absence), and each reads one first page, one at a time:
/// the read merges every followed outbox and starts the inbox's rebuild
/// behind it. Returns the summary line.
async fn cold_first_pages(
    channel: Channel,
    conn: &mut redis::aio::MultiplexedConnection,
    users: u64,
) -> anyhow::Result<String> {
    let cold: Vec<u64> = (1..=COLD_USERS).map(|n| users + n).collect();
    let graph = FollowGraphServiceClient::new(channel.clone());
    let mut rng = Rng(99);
    let mut follows = Vec::new();
    for u in &cold {
        let mut followed = std::collections::BTreeSet::new();
        while followed.len() < COLD_FOLLOWS.min(users as usize) {
            followed.insert(1 + rng.next() % users);
        }
        follows.extend(followed.into_iter().map(|t| (*u, t)));
    }
    follow_all(&graph, follows).await;
    let mut publish = PublishServiceClient::new(channel.clone());
    wait_idle(&mut publish).await?;
    let mut pipe = redis::pipe();
    for u in &cold {
        pipe.cmd("DEL").arg(inbox_key(*u)).arg(floor_key(*u)).ignore();
    }
    let _: () = pipe.query_async(conn).await?;
    let mut timeline = TimelineServiceClient::new(channel);
    let mut latencies = Vec::with_capacity(cold.len());
    let mut items = 0;
    for u in &cold {
        let t = Instant::now();
        let page = timeline
            .get_timeline(req(tl::GetTimelineRequest {
                user_id: *u,
                limit: 20,
                cursor: String::new(),
            }))
            .await?
            .into_inner();
        latencies.push(t.elapsed());
        items += page.items.len();
    }
    latencies.sort();
    let pct =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64() * 1000.0;
    Ok(format!(
        "cold first page ({COLD_USERS} returning users following {COLD_FOLLOWS} feeds each, no inbox: outboxes merged, rebuild behind): p50 {:.1} ms p99 {:.1} ms ({:.1} items per page)",
        pct(0.5),
        pct(0.99),
        items as f64 / cold.len() as f64
    ))
}

/// `(follower, user)` follows, 64 at a time (set-up, not measured).
pub(crate) async fn follow_all(graph: &FollowGraphServiceClient<Channel>, follows: Vec<(u64, u64)>) {
    futures::stream::iter(follows)
        .for_each_concurrent(64, |(u, t)| {
            let mut g = graph.clone();
            async move {
                let _ = g
                    .follow(req(fg::FollowRequest {
                        follower_id: u,
                        feed: format!("user:{t}"),
                    }))
                    .await;
            }
        })
        .await;
}

/// The timeline benches' data: every user active (a live inbox), a
/// power-law follow graph (20 follows per user, low ids the celebrities),
/// 2,000 posts from power-law authors, fanned out.
pub(crate) async fn populate(
    graph: Channel,
    publish: Channel,
    conn: &mut redis::aio::MultiplexedConnection,
    users: u64,
) -> anyhow::Result<()> {
    // Every user is active: a live inbox before anything is posted.
    for chunk in (1..=users).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for u in chunk {
            pipe.cmd("SET").arg(floor_key(*u)).arg(&0u64.to_be_bytes()[..]).ignore();
            pipe.cmd("ZADD").arg(inbox_key(*u)).arg(0).arg(LIVE_MARK).ignore();
        }
        let _: () = pipe.query_async(conn).await?;
    }
    // Power-law follow graph: each user follows 20 authors, low ids far more often.
    let t = Instant::now();
    let mut rng = Rng(42);
    let mut follows = Vec::new();
    for u in 1..=users {
        for _ in 0..20 {
            let target = rng.zipf(users);
            if target != u {
                follows.push((u, target));
            }
        }
    }
    let graph = FollowGraphServiceClient::new(graph);
    follow_all(&graph, follows).await;
    let follows_done = Instant::now();
    let mut publish = PublishServiceClient::new(publish);
    wait_idle(&mut publish).await?;
    // Posts from power-law authors fill the inboxes through fanout (celebrities are pulled).
    let posts = 2_000;
    futures::stream::iter(0..posts)
        .for_each_concurrent(16, |n| {
            let mut p = publish.clone();
            let actor = Rng(7 + n).zipf(users);
            async move {
                let _ = p
                    .publish(crate::post(actor, format!("post:{n}"), format!("b{n}")))
                    .await;
            }
        })
        .await;
    wait_idle(&mut publish).await?;
    println!(
        "set-up: {users} users, {posts} posts in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    // Publish re-reads the edge log's trailing minute every 5 s for changes
    // committed behind its cursor (`feed_core::edge_log`): for a minute
    // after the set-up that is ~200,000 follows per pass, work no steady
    // state has. Reads are measured once that window has passed.
    let settle =
        Duration::from_millis(feed_core::edge_log::LATE_WINDOW_MS + 6_000).saturating_sub(follows_done.elapsed());
    if !settle.is_zero() {
        println!(
            "waiting {:.0}s for the set-up's follows to leave publish's late-change window",
            settle.as_secs_f64()
        );
        tokio::time::sleep(settle).await;
    }
    Ok(())
}
