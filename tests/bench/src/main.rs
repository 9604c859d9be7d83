//! `feed-bench`: benchmarks as binaries. Each starts its own redis-server
//! and platform, measures, and compares with the raw limit measured in the
//! same run on the same machine (never against a fixed number).

// The platform's binaries use mimalloc (glibc malloc's arena locks and
// consolidation took a quarter of a timeline read's CPU); so does the bench,
// which runs the platform in process.
#[global_allocator]
static ALLOC: feed_server::Allocator = feed_server::Allocator;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use feed_inbox::redis_store::{floor_key, inbox_key};
use feed_inbox::{InboxLimits, InboxStore, RedisInbox};
use feed_proto::followgraph::v1 as fg;
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use feed_proto::publish::v1 as pb;
use feed_proto::publish::v1::publish_service_client::PublishServiceClient;
use feed_server::{Authenticator, FeedConfig, Role, Shutdown};
use feed_testkit::RedisServer;
use futures::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

mod flood_bench;
mod split_bench;
mod timeline_bench;

/// The internal token of every platform the benches start (the split
/// deployment's processes are configured with it).
const TOKEN: &str = feed_e2e::INTERNAL_TOKEN;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Deliveries per second from Publish to the last inbox write.
    Fanout {
        /// Follower counts of the authors to measure.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        followers: Vec<u64>,
        /// In-process fanout workers.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Jobs each worker runs at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Entries already in each follower's inbox.
        #[arg(long, default_value_t = 100)]
        prefill: u64,
    },
    /// GetTimeline throughput and latency against a minimal gRPC + Redis server.
    Timeline {
        /// Users on the power-law follow graph.
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// Requests per concurrency level.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Concurrency levels.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        concurrency: Vec<usize>,
    },
    /// The split deployment (a process per service): GetTimeline against a
    /// minimal gRPC + gRPC + Redis server, and publish -> visible.
    Split {
        /// Users on the power-law follow graph.
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// Requests per concurrency level.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Concurrency levels.
        #[arg(long, value_delimiter = ',', default_value = "16,64")]
        concurrency: Vec<usize>,
        /// Push-mode followers of the author in the publish -> visible run.
        #[arg(long, default_value_t = 10_000)]
        followers: u64,
        /// Posts measured in the publish -> visible run.
        #[arg(long, default_value_t = 50)]
        posts: usize,
    },
    /// The split deployment: publish -> in a follower's inbox for ordinary
    /// authors while one actor floods, with the fanout budget and with one lane.
    Flood {
        /// Live followers of the flooding actor.
        #[arg(long, default_value_t = 1_000)]
        flood_followers: u64,
        /// Posts the flooding actor sends.
        #[arg(long, default_value_t = 2_000)]
        flood_posts: u64,
        /// Fanout units per actor per minute in the fast lane.
        #[arg(long, default_value_t = 120)]
        budget: u32,
        /// Ordinary posts measured.
        #[arg(long, default_value_t = 50)]
        posts: usize,
    },
}

/// A Publish of a plain post by `actor` (public, to the actor's own feed),
/// deduplicated by `foreign_id`.
pub(crate) fn post(actor: u64, object: String, foreign_id: String) -> tonic::Request<pb::PublishRequest> {
    req(pb::PublishRequest {
        activity: Some(pb::NewActivity {
            actor,
            verb: "post".into(),
            object,
            foreign_id,
            ..pb::NewActivity::default()
        }),
        publish_at_ms: 0,
    })
}

pub(crate) fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {TOKEN}")).expect("ascii"),
    );
    r
}

pub(crate) struct Platform {
    pub(crate) addr: SocketAddr,
    pub(crate) shutdown: Shutdown,
    pub(crate) task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

pub(crate) async fn start_platform(
    redis: &str,
    workers: usize,
    concurrency: usize,
    tune: impl FnOnce(&mut FeedConfig),
) -> anyhow::Result<Platform> {
    let dir = tempfile::tempdir()?;
    let mut cfg = FeedConfig::default();
    cfg.storage.data_dir = dir.path().to_path_buf();
    // Bulk-loading the follow graph is set-up, not the measured path.
    cfg.storage.sync_writes = false;
    cfg.server.admin_listen = String::new();
    cfg.redis.url = redis.to_owned();
    cfg.fanout.workers = workers;
    cfg.fanout.concurrency = concurrency;
    cfg.follow_graph.celebrity_threshold = u64::MAX;
    cfg.follow_graph.max_following = 10;
    cfg.telemetry.log_filter = "warn".into();
    tune(&mut cfg);
    feed_server::telemetry::init(&cfg.telemetry);
    let auth = Authenticator::new([(TOKEN.to_owned(), Role::Internal)]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = Shutdown::new();
    let task = tokio::spawn(feed_all_in_one::run(
        cfg,
        auth,
        TOKEN.to_owned(),
        listener,
        shutdown.clone(),
    ));
    Ok(Platform {
        addr,
        shutdown,
        task,
        _dir: dir,
    })
}

/// Waits until no fanout job is pending.
pub(crate) async fn wait_idle(publish: &mut PublishServiceClient<Channel>) -> anyhow::Result<()> {
    loop {
        let lag = publish
            .get_fanout_lag(req(pb::GetFanoutLagRequest {}))
            .await?
            .into_inner();
        if lag.pending_jobs == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn redis_memory(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no used_memory in INFO"))
}

/// Raw limit: the same keys, the same batch size, plain pipelined ZADD.
async fn raw_zadd(
    conn: &redis::aio::MultiplexedConnection,
    users: &[u64],
    batch: usize,
    parallel: usize,
) -> anyhow::Result<f64> {
    let member = u64::MAX.to_be_bytes();
    let start = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(users.chunks(batch))
        .map(|chunk| {
            let mut c = conn.clone();
            async move {
                let mut pipe = redis::pipe();
                for u in chunk {
                    pipe.cmd("ZADD").arg(inbox_key(*u)).arg(0).arg(&member[..]).ignore();
                }
                let _: () = pipe.query_async(&mut c).await?;
                Ok(())
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let elapsed = start.elapsed();
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    // Put the inboxes back as they were.
    for chunk in users.chunks(batch) {
        let mut pipe = redis::pipe();
        for u in chunk {
            pipe.cmd("ZREM").arg(inbox_key(*u)).arg(&member[..]).ignore();
        }
        let mut c = conn.clone();
        let _: () = pipe.query_async(&mut c).await?;
    }
    Ok(users.len() as f64 / elapsed.as_secs_f64())
}

async fn fanout(followers: Vec<u64>, workers: usize, concurrency: usize, prefill: u64) -> anyhow::Result<()> {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/redis.conf");
    let redis = RedisServer::start_with_config(&conf, &[])?;
    let platform = start_platform(&redis.url(), workers, concurrency, |_| {}).await?;
    let channel = Channel::from_shared(format!("http://{}", platform.addr))?
        .connect()
        .await?;
    let graph = FollowGraphServiceClient::new(channel.clone());
    let mut publish = PublishServiceClient::new(channel);
    // The raw limit queues 16 pipelines of 1,000 commands at once: on a slow
    // day one waits longer than the client's default 500 ms response timeout.
    let patient = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection_with_config(&patient)
        .await?;
    let inbox = RedisInbox::connect(&redis.url(), InboxLimits::default()).await?;

    // Memory per entry: inboxes filled to the cap through the platform's own layout.
    let cap = InboxLimits::default().cap as u64;
    let sample: u64 = 2_000;
    let before = redis_memory(&mut conn).await?;
    for u in 0..sample {
        let user = 1_000_000_000 + u;
        let ids: Vec<u64> = (0..cap).map(|i| (1u64 << 60) + u * 10_000 + i).collect();
        inbox.rebuild(user, &ids, 0, None).await?;
    }
    let bytes_per_entry = (redis_memory(&mut conn).await?.saturating_sub(before)) as f64 / (sample * cap) as f64;
    println!("memory: {bytes_per_entry:.1} bytes per inbox entry ({sample} inboxes of {cap})");

    let mut last = String::new();
    for (n, &count) in followers.iter().enumerate() {
        let author = 1 + n as u64;
        // Followers spread over the id space, as real users are (many shards).
        let users: Vec<u64> = (1..=count).map(|i| 10_000 + i * 37 + n as u64).collect();
        let t = Instant::now();
        futures::stream::iter(users.clone())
            .for_each_concurrent(64, |u| {
                let mut g = graph.clone();
                async move {
                    if let Err(e) = g
                        .follow(req(fg::FollowRequest {
                            follower_id: u,
                            feed: format!("user:{author}"),
                        }))
                        .await
                    {
                        eprintln!("follow failed: {e}");
                    }
                }
            })
            .await;
        // The follows' own backfill jobs must drain before the measurement.
        wait_idle(&mut publish).await?;
        println!("set-up: {count} follows in {:.1}s", t.elapsed().as_secs_f64());
        for chunk in users.chunks(1000) {
            let mut pipe = redis::pipe();
            for u in chunk {
                pipe.cmd("SET").arg(floor_key(*u)).arg(&0u64.to_be_bytes()[..]).ignore();
                for i in 0..prefill {
                    pipe.cmd("ZADD")
                        .arg(inbox_key(*u))
                        .arg(0)
                        .arg(&((1u64 << 59) + i).to_be_bytes()[..])
                        .ignore();
                }
            }
            let _: () = pipe.query_async(&mut conn).await?;
        }

        let raw = raw_zadd(&conn, &users, 1000, workers * concurrency).await?;

        let start = Instant::now();
        let id = publish
            .publish(crate::post(author, "post:bench".to_owned(), format!("bench-{n}")))
            .await?
            .into_inner()
            .activity_id;
        let accepted = start.elapsed();
        wait_idle(&mut publish).await?;
        let elapsed = start.elapsed();
        // Check every inbox really holds the item before reporting.
        let mut delivered = 0;
        for chunk in users.chunks(1000) {
            let mut pipe = redis::pipe();
            for u in chunk {
                pipe.cmd("ZSCORE").arg(inbox_key(*u)).arg(&id.to_be_bytes()[..]);
            }
            let scores: Vec<Option<f64>> = pipe.query_async(&mut conn).await?;
            delivered += scores.iter().filter(|s| s.is_some()).count();
        }
        anyhow::ensure!(
            delivered == users.len(),
            "only {delivered} of {} inboxes got the item",
            users.len()
        );
        let rate = count as f64 / elapsed.as_secs_f64();
        println!(
            "{count} followers: {rate:.0} deliveries/s in {:.0} ms (Publish answered in {:.1} ms); raw pipelined ZADD {raw:.0}/s ({workers} workers x {concurrency})",
            elapsed.as_secs_f64() * 1000.0,
            accepted.as_secs_f64() * 1000.0
        );
        last = format!(
            "fanout: {rate:.0} deliveries/s = {:.0}% of raw pipelined ZADD ({raw:.0}/s); {bytes_per_entry:.1} bytes/inbox entry",
            100.0 * rate / raw
        );
    }
    platform.shutdown.trigger();
    let _ = platform.task.await;
    println!("{last}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench = async {
        match Args::parse().cmd {
            Cmd::Fanout {
                followers,
                workers,
                concurrency,
                prefill,
            } => fanout(followers, workers, concurrency, prefill).await,
            Cmd::Timeline {
                users,
                requests,
                concurrency,
            } => timeline_bench::run(users, requests, concurrency).await,
            Cmd::Split {
                users,
                requests,
                concurrency,
                followers,
                posts,
            } => split_bench::run(users, requests, concurrency, followers, posts).await,
            Cmd::Flood {
                flood_followers,
                flood_posts,
                budget,
                posts,
            } => flood_bench::run(budget, flood_followers, flood_posts, posts).await,
        }
    };
    // Interrupted (Ctrl-C, a timeout's SIGTERM), the bench is dropped, and
    // with it its redis-server: an exit from a signal would leave it running.
    tokio::select! {
        result = bench => result,
        _ = feed_server::shutdown::terminate_signal() => anyhow::bail!("interrupted"),
    }
}
