//! `feed-bench flood`: publish → delivered for ordinary authors while one
//! actor floods, in the split deployment (one replica each). The flooder
//! (`--flood-followers` live followers) publishes `--flood-posts` posts as
//! fast as publish takes them, 8 at a time; a second after it starts,
//! ordinary authors (100 live followers each) post one at a time, and each
//! post is timed from the Publish call until it is in a random follower's
//! inbox. Run twice: with the fanout budget (`--budget`, the default of
//! `fanout.actor_budget_per_minute`; the flood past it takes the bulk lane)
//! and with one lane for all (budget 0), the comparison measured in the
//! same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use feed_e2e::split::{Role, Split};
use feed_inbox::redis_store::{LIVE_MARK, floor_key, inbox_key};
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use feed_proto::publish::v1::publish_service_client::PublishServiceClient;

use crate::split_bench::{ONE_EACH, bench_redis};
use crate::timeline_bench::{Rng, follow_all};
use crate::{post, wait_idle};

/// Ordinary authors, each with this many live followers.
const AUTHORS: u64 = 10;
const AUTHOR_FOLLOWERS: u64 = 100;

/// One round: `posts` ordinary posts timed while the flood runs, then
/// every job drained.
async fn round(budget: &str, flood_followers: u64, flood_posts: u64, posts: usize) -> anyhow::Result<Round> {
    let redis = bench_redis()?;
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let split = Split::start_on(
        redis,
        ONE_EACH,
        &[
            ("FEED__FOLLOW_GRAPH__CELEBRITY_THRESHOLD", "1000000"),
            ("FEED__FANOUT__ACTOR_BUDGET_PER_MINUTE", budget),
            ("FEED__TELEMETRY__LOG_FILTER", "warn"),
        ],
    )
    .await;
    let flooder = 1u64;
    let fans: Vec<u64> = (1_000_000..1_000_000 + flood_followers).collect();
    let author = |a: u64| 10 + a;
    let follower = |a: u64, i: u64| 2_000_000 + a * AUTHOR_FOLLOWERS + i;
    let mut follows: Vec<(u64, u64)> = fans.iter().map(|u| (*u, flooder)).collect();
    for a in 0..AUTHORS {
        follows.extend((0..AUTHOR_FOLLOWERS).map(|i| (follower(a, i), author(a))));
    }
    for chunk in follows.chunks(1000) {
        let mut pipe = redis::pipe();
        for (u, _) in chunk {
            pipe.cmd("SET").arg(floor_key(*u)).arg(&0u64.to_be_bytes()[..]).ignore();
            pipe.cmd("ZADD").arg(inbox_key(*u)).arg(0).arg(LIVE_MARK).ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
    }
    follow_all(
        &FollowGraphServiceClient::new(split.channel(Role::FollowGraph, 0)),
        follows,
    )
    .await;
    let publish = PublishServiceClient::new(split.channel(Role::Publish, 0));
    // The follows become edge jobs when publish next reads follow-graph's
    // change log: settled once no job is pending and the stream has stopped
    // growing (else the set-up's edge jobs land in the fast lane in the
    // middle of the measurement).
    let mut last = u64::MAX;
    loop {
        wait_idle(&mut publish.clone()).await?;
        let len: u64 = redis::AsyncCommands::xlen(&mut conn, "feed:jobs").await?;
        if len == last {
            break;
        }
        last = len;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let flooded = Arc::new(AtomicU64::new(0));
    let floods: Vec<_> = (0..8u64)
        .map(|_| {
            let (mut p, stop, flooded) = (publish.clone(), stop.clone(), flooded.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = flooded.fetch_add(1, Ordering::Relaxed);
                    if n >= flood_posts {
                        flooded.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    let _ = p
                        .publish(post(flooder, format!("flood{n}"), format!("flood-{n}")))
                        .await;
                }
            })
        })
        .collect();
    // The flood's backlog builds first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rng = Rng(7);
    let mut took = Vec::with_capacity(posts);
    for n in 0..posts {
        let a = n as u64 % AUTHORS;
        let reader = follower(a, rng.next() % AUTHOR_FOLLOWERS);
        let t = Instant::now();
        let id = publish
            .clone()
            .publish(post(author(a), format!("ordinary{n}"), format!("ordinary-{n}")))
            .await?
            .into_inner()
            .activity_id;
        let member = id.to_be_bytes();
        loop {
            let score: Option<f64> = redis::AsyncCommands::zscore(&mut conn, inbox_key(reader), &member[..]).await?;
            if score.is_some() {
                took.push(t.elapsed());
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(120),
                "post {id} not in {reader}'s inbox after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.await?;
    }
    // Every job done: the flood's backlog is drained too.
    wait_idle(&mut publish.clone()).await?;
    let flooded = flooded.load(Ordering::Relaxed);
    let pushed = flooded * flood_followers + (posts as u64) * AUTHOR_FOLLOWERS;
    let rate = pushed as f64 / started.elapsed().as_secs_f64();
    split.stop().await;
    took.sort();
    Ok(Round { took, flooded, rate })
}

/// One round's figures.
struct Round {
    /// Sorted publish -> inbox times of the ordinary posts.
    took: Vec<Duration>,
    /// Posts the flooder sent meanwhile.
    flooded: u64,
    /// Inbox deliveries per second from the flood's start until every job was done.
    rate: f64,
}

/// The benchmark.
pub async fn run(budget: u32, flood_followers: u64, flood_posts: u64, posts: usize) -> anyhow::Result<()> {
    let pct = |v: &[Duration], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1000.0;
    let say = |name: &str, r: &Round| {
        println!(
            "{name}: ordinary post -> in a follower's inbox p50 {:.1} ms p99 {:.1} ms ({} flood posts sent meanwhile); {:.0} inbox deliveries/s until every job was done",
            pct(&r.took, 0.5),
            pct(&r.took, 0.99),
            r.flooded,
            r.rate
        )
    };
    let lanes = round(&budget.to_string(), flood_followers, flood_posts, posts).await?;
    say(&format!("with the fanout budget ({budget}/min)"), &lanes);
    let fifo = round("0", flood_followers, flood_posts, posts).await?;
    say("one lane for all             ", &fifo);
    println!(
        "flood: ordinary publish->inbox p99 {:.1} ms while one actor posts {flood_posts} times to {flood_followers} followers, {:.1} ms with one lane; fanout {:.0} deliveries/s = {:.2}x one lane's",
        pct(&lanes.took, 0.99),
        pct(&fifo.took, 0.99),
        lanes.rate,
        lanes.rate / fifo.rate
    );
    Ok(())
}
