//! The ActivityStore contract on every backend.

use publish::store::contract::run_all;
use publish::store::embedded::EmbeddedActivityStore;

#[tokio::test]
async fn embedded_activity_store_passes_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    run_all(&EmbeddedActivityStore::open(dir.path()).expect("open")).await;
}

#[tokio::test]
async fn embedded_pull_entries_page_through_every_id_after_a_restart() {
    use feed_core::FeedRef;
    use publish::store::ActivityStore;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = EmbeddedActivityStore::open(dir.path()).expect("open");
        publish::store::contract::pull_entries_page_through_every_id_of_a_long_feed(&s).await;
    }
    let s = EmbeddedActivityStore::open(dir.path()).expect("reopen");
    let f = FeedRef::parse("user:777").expect("feed");
    assert_eq!(
        publish::store::contract::every_pulled(&s, &f, 200).await,
        [11_600].into_iter().chain((10_000..11_500).rev()).collect::<Vec<u64>>()
    );
    assert_eq!(
        publish::store::contract::every_outbox_id(&s, &f, 200).await,
        [11_600].into_iter().chain((10_000..11_500).rev()).collect::<Vec<u64>>()
    );
    assert!(
        s.pulled(&FeedRef::parse("user:778").expect("feed"), None, 10)
            .await
            .expect("pulled")
            .is_empty()
    );
}

#[tokio::test]
async fn embedded_pending_work_survives_a_restart_and_forgets_finished_jobs() {
    use feed_proto::events::v1::{EdgeJob, EdgeJobKind, FanoutJob, Job, job};
    use publish::store::ActivityStore;
    let dir = tempfile::tempdir().expect("tempdir");
    let fan = |activity: u64| Job {
        job_id: format!("fan/{activity}/user:1"),
        kind: Some(job::Kind::Fanout(FanoutJob {
            activity_id: activity,
            feed: "user:1".into(),
            shard: None,
            actor: 1,
        })),
        ..Job::default()
    };
    let backfill = Job {
        job_id: "edge/9/user:1/1".into(),
        kind: Some(job::Kind::Edge(EdgeJob {
            kind: EdgeJobKind::Backfill as i32,
            follower_id: 9,
            feed: "user:1".into(),
            edge_version: 1,
        })),
        ..Job::default()
    };
    {
        let s = EmbeddedActivityStore::open(dir.path()).expect("open");
        s.put_jobs(&[fan(5), fan(7), backfill]).await.expect("put");
        s.complete_job("fan/5/user:1", &[]).await.expect("complete");
    }
    let s = EmbeddedActivityStore::open(dir.path()).expect("reopen");
    let w = s.pending_work(9).await.expect("pending");
    assert_eq!(w.fanout_from, Some(7), "the finished job is gone, the other kept");
    assert_eq!(w.backfill_feeds.len(), 1);
    s.complete_job("fan/7/user:1", &[]).await.expect("complete");
    s.complete_job("edge/9/user:1/1", &[]).await.expect("complete");
    let w = s.pending_work(9).await.expect("pending");
    assert_eq!((w.fanout_from, w.backfill_feeds.len()), (None, 0));
}

#[tokio::test]
async fn embedded_stale_jobs_and_stats_see_only_live_jobs_after_a_restart() {
    use feed_proto::events::v1::Job;
    use publish::store::ActivityStore;
    let dir = tempfile::tempdir().expect("tempdir");
    let job = |n: i64| Job {
        job_id: format!("j/{n:04}"),
        created_at_ms: n,
        ..Job::default()
    };
    {
        let s = EmbeddedActivityStore::open(dir.path()).expect("open");
        s.put_jobs(&(1..=500).map(job).collect::<Vec<_>>()).await.expect("put");
        // Finished jobs leave tombstones behind: neither the sweep nor the stats may count them.
        for n in (1..=500).filter(|n| n % 100 != 0) {
            s.complete_job(&format!("j/{n:04}"), &[]).await.expect("complete");
        }
        assert!(!s.fail_job("j/0300", "boom", 5, 1_000).await.expect("fail"));
    }
    let s = EmbeddedActivityStore::open(dir.path()).expect("reopen");
    let stats = s.job_stats().await.expect("stats");
    assert_eq!((stats.pending, stats.oldest_created_ms), (5, 100));
    let ids = |jobs: Vec<Job>| jobs.into_iter().map(|j| j.job_id).collect::<Vec<_>>();
    // j/0300 failed at 1,000: it is not stale at 600, the others are, oldest first.
    assert_eq!(
        ids(s.stale_jobs(600, 2_000, 2).await.expect("stale")),
        ["j/0100", "j/0200"]
    );
    assert_eq!(
        ids(s.stale_jobs(600, 2_000, 10).await.expect("stale")),
        ["j/0400", "j/0500"],
        "those handed out are touched at 2,000"
    );
    assert_eq!(ids(s.stale_jobs(1_500, 2_000, 10).await.expect("stale")), ["j/0300"]);
    s.complete_job("j/0100", &[]).await.expect("complete");
    let stats = s.job_stats().await.expect("stats");
    assert_eq!((stats.pending, stats.oldest_created_ms), (4, 200));
}

#[tokio::test]
async fn embedded_store_finds_pulled_items_of_every_feed_after_a_restart() {
    use feed_core::FeedRef;
    use feed_proto::common::v1::{Activity, DeliveryMode};
    use publish::store::{ActivityStore, OutboxEntry};
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = |s: &str| FeedRef::parse(s).expect("feed");
    async fn publish(s: &EmbeddedActivityStore, id: u64, f: &str, mode: DeliveryMode) {
        let a = Activity {
            id,
            actor: 1,
            ..Activity::default()
        };
        let e = OutboxEntry {
            feed: FeedRef::parse(f).expect("feed"),
            id,
            mode,
        };
        s.commit_publish(&a, &[e], &[]).await.expect("publish")
    }
    {
        let s = EmbeddedActivityStore::open(dir.path()).expect("open");
        publish(&s, 10, "user:1", DeliveryMode::Pull).await;
        publish(&s, 11, "tag:a", DeliveryMode::Pull).await;
        publish(&s, 12, "tag:ab", DeliveryMode::Push).await;
    }
    let s = EmbeddedActivityStore::open(dir.path()).expect("reopen");
    assert_eq!(s.pulled(&feed("user:1"), None, 10).await.expect("pulled"), vec![10]);
    assert_eq!(s.pulled(&feed("tag:a"), None, 10).await.expect("pulled"), vec![11]);
    assert!(s.pulled(&feed("tag:ab"), None, 10).await.expect("pulled").is_empty());
    publish(&s, 13, "tag:ab", DeliveryMode::Pull).await;
    assert_eq!(s.pulled(&feed("tag:ab"), None, 10).await.expect("pulled"), vec![13]);
}

/// Runs only against a real cluster: no ScyllaDB can be installed on the
/// build machines, so without `FEED__SCYLLA__NODES` this says so and passes.
#[tokio::test]
async fn scylla_activity_store_passes_the_contract() {
    let nodes = std::env::var("FEED__SCYLLA__NODES").unwrap_or_default();
    if nodes.trim().is_empty() {
        println!("skipped: FEED__SCYLLA__NODES is not set (no ScyllaDB server on this machine)");
        return;
    }
    let cfg = feed_server::config::ScyllaConfig {
        nodes,
        keyspace: format!("feed_pub_test_{}", std::process::id()),
        replication_factor: 1,
        local_dc: String::new(),
    };
    publish::store::scylla::migrate(&cfg).await.expect("migrate");
    run_all(
        &publish::store::scylla::ScyllaActivityStore::connect(&cfg)
            .await
            .expect("connect"),
    )
    .await;
}

#[tokio::test]
async fn redis_queue_delivers_reclaims_acks_dead_letters_and_trims() {
    use feed_proto::events::v1::Job;
    use feed_server::queue::JobQueue as _;
    use publish::RedisQueue;
    use std::time::Duration;

    let redis = feed_testkit::RedisServer::start().expect("redis");
    let q = RedisQueue::connect(&redis.url(), "t:jobs", "g").await.expect("queue");
    let job = |id: &str| Job {
        job_id: id.into(),
        ..Job::default()
    };
    q.enqueue(&[job("a"), job("b")]).await.expect("enqueue");
    assert_eq!(q.lag().await.expect("lag"), (2, 0), "two waiting, none delivered");
    let got = q.receive("w1", 10, Duration::from_millis(100)).await.expect("receive");
    assert_eq!(q.lag().await.expect("lag"), (0, 2), "both delivered, unacknowledged");
    assert_eq!(
        got.iter().map(|d| d.job.job_id.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    q.ack(&got[0]).await.expect("ack");
    assert_eq!(q.lag().await.expect("lag"), (0, 1));
    assert!(
        q.receive("w2", 10, Duration::from_millis(50))
            .await
            .expect("receive")
            .is_empty()
    );
    // w1 died holding "b": another consumer takes it over once idle.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let taken = q.reclaim("w2", Duration::from_millis(20), 10).await.expect("reclaim");
    assert_eq!(
        taken.iter().map(|d| d.job.job_id.as_str()).collect::<Vec<_>>(),
        vec!["b"]
    );
    q.dead_letter(&taken[0].job, "boom").await.expect("dead letter");
    q.trim().await.expect("trim keeps pending entries");
    let mut c = redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let len: i64 = redis::cmd("XLEN")
        .arg("t:jobs")
        .query_async(&mut c)
        .await
        .expect("xlen");
    assert_eq!(len, 1, "the acknowledged entry is trimmed, the pending one kept");
    let dead: i64 = redis::cmd("XLEN")
        .arg("t:jobs:dead")
        .query_async(&mut c)
        .await
        .expect("xlen");
    assert_eq!(dead, 1);
    q.ack(&taken[0]).await.expect("ack");
}
