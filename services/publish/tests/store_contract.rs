//! The ActivityStore contract on every backend.

use publish::store::ActivityStore;
use publish::store::embedded::EmbeddedActivityStore;

async fn embedded(_: &str) -> feed_testkit::Backend<dyn ActivityStore> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedActivityStore::open(dir.path()).expect("open");
    Some((Box::new(store), Box::new(dir)))
}

publish::activity_store_contract!(embedded_store, embedded);

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
        s.put_jobs(&[fan(3), fan(5), fan(7), backfill]).await.expect("put");
        s.complete_job("fan/5/user:1", &[], 0).await.expect("complete");
        assert!(s.fail_job("fan/3/user:1", "boom", 1, 0).await.expect("fail"));
    }
    let s = EmbeddedActivityStore::open(dir.path()).expect("reopen");
    let w = s.pending_work(9).await.expect("pending");
    assert_eq!(w.fanout_from, Some(7), "the finished job is gone, the other kept");
    assert_eq!(w.backfill_feeds.len(), 1);
    assert_eq!(
        w.stalled,
        vec![(feed_core::FeedRef::user(1), 3)],
        "the dead fanout, from the dead letters"
    );
    s.revive_jobs(&[], 1).await.expect("revive");
    s.complete_job("fan/3/user:1", &[], 1).await.expect("complete");
    s.complete_job("fan/7/user:1", &[], 0).await.expect("complete");
    s.complete_job("edge/9/user:1/1", &[], 0).await.expect("complete");
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
            s.complete_job(&format!("j/{n:04}"), &[], 0).await.expect("complete");
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
    s.complete_job("j/0100", &[], 0).await.expect("complete");
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

/// On the CQL node the test script starts (see `scripts/cql-node.sh`), a
/// keyspace per check.
async fn cql(check: &str) -> feed_testkit::Backend<dyn ActivityStore> {
    let cfg = cql_config(check)?;
    publish::store::scylla::migrate(&cfg).await.expect("migrate");
    let store = publish::store::scylla::ScyllaActivityStore::connect(&cfg)
        .await
        .expect("connect");
    Some((Box::new(store), Box::new(())))
}

publish::activity_store_contract!(scylla_store, cql);

#[tokio::test]
async fn redis_queue_delivers_reclaims_acks_dead_letters_and_trims() {
    use feed_proto::events::v1::Job;
    use feed_queue::JobQueue as _;
    use publish::RedisFanoutQueue;
    use std::time::Duration;

    let redis = feed_testkit::RedisServer::start().expect("redis");
    let q = RedisFanoutQueue::connect(&redis.url(), "t:jobs", "g")
        .await
        .expect("queue");
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

async fn heads_over_embedded(_: &str) -> feed_testkit::Backend<dyn ActivityStore> {
    use publish::store::shared_heads::SharedHeads;
    let redis = feed_testkit::RedisServer::start().expect("redis");
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = EmbeddedActivityStore::open(dir.path()).expect("open");
    let store = SharedHeads::connect(inner, &redis.url(), false).await.expect("connect");
    Some((Box::new(store), Box::new((dir, redis))))
}

publish::activity_store_contract!(shared_heads_over_embedded, heads_over_embedded);

/// The shared heads over the store replicas really share: the ScyllaDB
/// store on the CQL node, heads on a real redis-server.
async fn heads_over_cql(check: &str) -> feed_testkit::Backend<dyn ActivityStore> {
    use publish::store::shared_heads::SharedHeads;
    let cfg = cql_config(check)?;
    publish::store::scylla::migrate(&cfg).await.expect("migrate");
    let inner = publish::store::scylla::ScyllaActivityStore::connect(&cfg)
        .await
        .expect("connect");
    let redis = feed_testkit::RedisServer::start().expect("redis");
    let store = SharedHeads::connect(inner, &redis.url(), false).await.expect("connect");
    Some((Box::new(store), Box::new(redis)))
}

publish::activity_store_contract!(shared_heads_over_scylla, heads_over_cql);

/// The heads in Redis are exact whatever happens to them: read before and
/// after writes, evicted, flushed, left half-filled by a reader, trimmed
/// past what they keep, or for a feed that only now gets its first
/// pull-mode item (a new celebrity, whose head said "none").
#[tokio::test]
async fn shared_heads_stay_exact_through_eviction_flush_and_unfinished_fills() {
    use feed_core::FeedRef;
    use feed_proto::common::v1::{Activity, DeliveryMode};
    use publish::store::contract::every_pulled;
    use publish::store::shared_heads::SharedHeads;
    use publish::store::{ActivityStore, OutboxEntry};
    let redis = feed_testkit::RedisServer::start().expect("redis");
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = EmbeddedActivityStore::open(dir.path()).expect("open");
    let s = SharedHeads::connect(inner, &redis.url(), false).await.expect("connect");
    let mut conn = redis::Client::open(redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let star = FeedRef::parse("user:1").expect("feed");
    let newcomer = FeedRef::parse("user:2").expect("feed");
    let publish = async |id: u64, feed: &FeedRef| {
        let a = Activity {
            id,
            actor: 1,
            ..Activity::default()
        };
        let e = OutboxEntry {
            feed: feed.clone(),
            id,
            mode: DeliveryMode::Pull,
        };
        s.commit_publish(&a, &[e], &[]).await.expect("publish");
    };
    let mut want: Vec<u64> = Vec::new();
    let check = async |want: &[u64], what: &str| {
        assert_eq!(every_pulled(&s, &star, 25).await, want, "{what}");
        let (_, first) = s
            .pulled_many(&[newcomer.clone(), star.clone()], None, 10)
            .await
            .expect("pulled")
            .into_iter()
            .find(|(i, _)| *i == 1)
            .expect("the star has pulled ids");
        assert_eq!(first, want[..10.min(want.len())], "{what}: first page");
    };
    // More than a head keeps (256): the rest pages in from the store.
    for id in 1_000..1_300 {
        publish(id, &star).await;
    }
    want.extend((1_000..1_300).rev());
    check(&want, "filled on the first read").await;
    let head: Vec<u8> = redis::cmd("GET")
        .arg("pulled-head:{user:1}")
        .query_async(&mut conn)
        .await
        .expect("head");
    assert_eq!((head[0], head.len()), (b'C', 9 + 256 * 8), "complete, 256 ids");
    assert_eq!(&head[1..9], &1_044u64.to_be_bytes()[..], "the floor is the oldest kept");
    assert!(s.pulled(&newcomer, None, 10).await.expect("pulled").is_empty());
    let none: Vec<u8> = redis::cmd("GET")
        .arg("pulled-head:{user:2}")
        .query_async(&mut conn)
        .await
        .expect("head");
    assert_eq!(none, [&b"C"[..], &[0u8; 8][..]].concat(), "a feed with none says so");
    publish(2_000, &star).await;
    publish(2_001, &newcomer).await;
    want.insert(0, 2_000);
    check(&want, "a publish after the fill").await;
    assert_eq!(
        s.pulled(&newcomer, None, 10).await.expect("pulled"),
        vec![2_001],
        "a feed whose head said none gets its first item"
    );
    // Reads are served from the head (a planted one is what they answer).
    let planted = [&b"C"[..], &[0u8; 8][..], &7u64.to_be_bytes()[..]].concat();
    let _: () = redis::cmd("SET")
        .arg("pulled-head:{user:2}")
        .arg(planted)
        .query_async(&mut conn)
        .await
        .expect("plant");
    assert_eq!(s.pulled(&newcomer, None, 10).await.expect("pulled"), vec![7]);
    let _: i64 = redis::cmd("DEL")
        .arg("pulled-head:{user:2}")
        .query_async(&mut conn)
        .await
        .expect("unplant");
    // Evicted, flushed: the store answers and the heads fill again.
    let _: i64 = redis::cmd("DEL")
        .arg("pulled-head:{user:1}")
        .query_async(&mut conn)
        .await
        .expect("evict");
    check(&want, "after eviction").await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("flush");
    check(&want, "after a flush").await;
    // A reader that marked the head and died: reads go to the store, and
    // publishes land in the marker, never lost; the marker expires.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("flush");
    let _: () = redis::cmd("SET")
        .arg("pulled-head:{user:1}")
        .arg(&b"Pdeadbeef"[..])
        .query_async(&mut conn)
        .await
        .expect("marker");
    publish(2_002, &star).await;
    let marker: Vec<u8> = redis::cmd("GET")
        .arg("pulled-head:{user:1}")
        .query_async(&mut conn)
        .await
        .expect("marker");
    assert_eq!(
        marker,
        [&b"Pdeadbeef"[..], &2_002u64.to_be_bytes()[..]].concat(),
        "the publish landed in the marker, for the filler's union"
    );
    want.insert(0, 2_002);
    check(&want, "while a fill is unfinished").await;
    let _: () = redis::cmd("PEXPIRE")
        .arg("pulled-head:{user:1}")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("expire");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    check(&want, "after the marker expired").await;
    // Without Redis, publishes still succeed and the store answers.
    drop(redis);
    let outage = async {
        publish(2_003, &star).await;
        want.insert(0, 2_003);
        check(&want, "while Redis is gone").await;
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), outage)
        .await
        .expect("no hang without Redis");
}

fn cql_config(what: &str) -> Option<feed_server::config::ScyllaConfig> {
    Some(
        feed_server::config::ScyllaConfig::single_node(feed_testkit::cql_nodes()?, feed_testkit::cql_keyspace(what))
            .with_login(feed_testkit::cql_login()),
    )
}

/// `publish --migrate` (the Kubernetes migration Job) applies the schema; until
/// it ran, the store refuses the keyspace and says what to run.
#[tokio::test]
async fn the_migrate_step_applies_the_schema_the_store_checks() {
    let Some(cfg) = cql_config("migrate") else { return };
    let refused = publish::store::scylla::ScyllaActivityStore::connect(&cfg)
        .await
        .err()
        .expect("no schema yet");
    assert!(refused.to_string().contains("--migrate"), "{refused}");
    feed_testkit::run_migrate(env!("CARGO_BIN_EXE_publish"), &cfg.nodes, &cfg.keyspace);
    publish::store::scylla::ScyllaActivityStore::connect(&cfg)
        .await
        .expect("the schema is there");
}
