//! What replicas of publish do to each other on a shared ScyllaDB keyspace
//! (the CQL node the test script starts), and how publish consumes
//! follow-graph's edge log when a change is committed late.

mod common;

use std::sync::Arc;

use common::ScriptedGraph;
use feed_core::{Clock, IdGenerator, ManualClock, NodeLease, SystemClock};
use feed_proto::events::v1::{EdgeChange, edge_change::Cause};
use feed_proto::publish::v1::NewActivity;
use publish::graph::Graph;
use publish::store::ActivityStore;
use publish::store::embedded::EmbeddedActivityStore;
use publish::{MemoryFanoutQueue, PublishRules, Publisher};

fn publisher(store: Arc<dyn ActivityStore>, graph: Arc<dyn Graph>, node: u16) -> Publisher {
    publisher_on(store, graph, node, Arc::new(SystemClock))
}

fn publisher_on(store: Arc<dyn ActivityStore>, graph: Arc<dyn Graph>, node: u16, clock: Arc<dyn Clock>) -> Publisher {
    Publisher::new(
        store,
        graph,
        Arc::new(MemoryFanoutQueue::default()),
        publish::memory_event_queue(),
        IdGenerator::new(NodeLease::exclusive(node), clock.clone()),
        clock,
        PublishRules::default(),
    )
}

fn post(actor: u64, foreign_id: &str) -> NewActivity {
    NewActivity {
        actor,
        verb: "post".into(),
        object: format!("post:{foreign_id}"),
        foreign_id: foreign_id.into(),
        ..NewActivity::default()
    }
}

/// Two replicas, each with its own node id and store connection, publish
/// the same (actor, foreign_id) at the same instant: one id wins, and the
/// call that lost the claim returns it as a duplicate.
#[tokio::test]
async fn replicas_racing_one_foreign_id_agree_on_one_id_and_one_duplicate() {
    let Some(cfg) = feed_testkit::cql_nodes().map(|nodes| {
        feed_server::config::ScyllaConfig::single_node(nodes, feed_testkit::cql_keyspace("pubrace"))
            .with_login(feed_testkit::cql_login())
    }) else {
        return;
    };
    publish::store::scylla::migrate(&cfg).await.expect("migrate");
    let graph: Arc<dyn Graph> = Arc::new(ScriptedGraph::default());
    let connect = || publish::store::scylla::ScyllaActivityStore::connect(&cfg);
    let a = publisher(Arc::new(connect().await.expect("connect")), graph.clone(), 1);
    let b = publisher(Arc::new(connect().await.expect("connect")), graph, 2);
    for n in 0..20 {
        let fid = format!("race-{n}");
        let (x, y) = tokio::join!(a.publish(post(7, &fid), 0), b.publish(post(7, &fid), 0));
        let (x, y) = (x.expect("replica a"), y.expect("replica b"));
        assert_eq!(x.id, y.id, "{fid}: one id");
        assert!(x.duplicate != y.duplicate, "{fid}: exactly one duplicate: {x:?} {y:?}");
        let stored = a.resolve(None, Some((7, &fid))).await.expect("stored");
        assert_eq!(stored.id, x.id);
    }
}

fn change(seq: u64, follower: u64, feed: &str, version: u64) -> EdgeChange {
    EdgeChange {
        seq,
        follower_id: follower,
        feed: feed.into(),
        edge_version: version,
        following: true,
        muted: false,
        cause: Cause::Follow as i32,
        at_ms: 0,
    }
}

/// follow-graph's positions on ScyllaDB come from the writer's clock: a
/// change can be committed with a position the consumer has already passed
/// (a slow write, a node whose clock lags). The consumer re-reads a
/// trailing window and turns such a change into its job, once.
#[tokio::test]
async fn an_edge_change_committed_behind_the_cursor_still_becomes_a_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ActivityStore> = Arc::new(EmbeddedActivityStore::open(dir.path()).expect("open"));
    let graph = Arc::new(ScriptedGraph::default());
    let p = publisher(store.clone(), graph.clone(), 1);
    let ms = 1_000_000u64; // positions per millisecond
    let now = 1_800_000_000_000 * ms;
    graph.log.lock().expect("log").push(change(now, 1, "user:2", 1));
    assert_eq!(p.ingest_edges().await.expect("ingest"), 1);
    assert_eq!(store.edge_cursor().await.expect("cursor"), now);
    // Committed after the cursor passed it, 2 s behind it.
    graph
        .log
        .lock()
        .expect("log")
        .push(change(now - 2_000 * ms, 3, "user:4", 1));
    assert_eq!(
        p.ingest_edges().await.expect("ingest"),
        0,
        "the fast path reads after the cursor"
    );
    assert_eq!(
        p.ingest_late_edges().await.expect("late"),
        1,
        "the trailing window finds it"
    );
    assert!(store.job("edge/3/user:4/1").await.expect("job").is_some());
    assert_eq!(
        store.edge_cursor().await.expect("cursor"),
        now,
        "the cursor never moves back"
    );
    // Read again, it is not turned into a job twice.
    assert_eq!(p.ingest_late_edges().await.expect("late again"), 0);
    // Older than the window: a change that late is beyond what is promised.
    graph
        .log
        .lock()
        .expect("log")
        .push(change(now - 3_600_000 * ms, 5, "user:6", 1));
    assert_eq!(p.ingest_late_edges().await.expect("late"), 0);
}

/// Two publish replicas share the edge cursor, not what each ingested: a
/// change one replica turned into a job, still pending, is not late to the
/// other (its late pass enqueued every such job again: two stream entries
/// per edge job with two replicas).
#[tokio::test]
async fn a_change_another_replica_ingested_is_not_late_to_this_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ActivityStore> = Arc::new(EmbeddedActivityStore::open(dir.path()).expect("open"));
    let graph = Arc::new(ScriptedGraph::default());
    let a = publisher(store.clone(), graph.clone(), 1);
    let b = publisher(store.clone(), graph.clone(), 2);
    let ms = 1_000_000u64;
    let now = 1_800_000_000_000 * ms;
    graph.log.lock().expect("log").push(change(now, 1, "user:2", 1));
    assert_eq!(a.ingest_edges().await.expect("ingest"), 1);
    assert_eq!(
        b.ingest_late_edges().await.expect("late"),
        0,
        "replica a's pending job is not late"
    );
    // A change that is late to both is still found, by either.
    graph
        .log
        .lock()
        .expect("log")
        .push(change(now - 2_000 * ms, 3, "user:4", 1));
    assert_eq!(b.ingest_late_edges().await.expect("late"), 1);
    assert_eq!(a.ingest_late_edges().await.expect("late"), 0, "b recorded it");
}

/// Once the consumer's clock is a window past the cursor, every change at
/// or below it has been committed or never will be: one more pass, then the
/// window is not re-read (a quiet log after a burst of follows costs no
/// reads) until the cursor moves, when the window is watched again.
#[tokio::test]
async fn the_late_window_is_read_until_its_deadlines_pass_then_again_once_the_cursor_moves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ActivityStore> = Arc::new(EmbeddedActivityStore::open(dir.path()).expect("open"));
    let graph = Arc::new(ScriptedGraph::default());
    let t = 1_800_000_000_000u64;
    let clock = ManualClock::new(t);
    let p = publisher_on(store.clone(), graph.clone(), 1, Arc::new(clock.clone()));
    let ms = 1_000_000u64;
    let push = |seq: u64, follower: u64| graph.log.lock().expect("log").push(change(seq, follower, "user:2", 1));
    push(t * ms, 1);
    assert_eq!(p.ingest_edges().await.expect("ingest"), 1);

    clock.set(t + 10_000);
    push((t - 2_000) * ms, 3);
    assert_eq!(p.ingest_late_edges().await.expect("late"), 1, "inside the window");
    clock.set(t + 61_000);
    push((t - 30_000) * ms, 4);
    assert_eq!(
        p.ingest_late_edges().await.expect("late"),
        1,
        "the pass after the deadlines still reads the window"
    );
    // Beyond the promise (a change committed past its deadline): the
    // settled window is not read again, so it is not found.
    push((t - 20_000) * ms, 5);
    assert_eq!(p.ingest_late_edges().await.expect("late"), 0, "settled: not re-read");
    assert!(store.job("edge/5/user:2/1").await.expect("job").is_none());

    // A new change moves the cursor: its window is watched again, and one
    // committed behind the new cursor becomes a job.
    push((t + 62_000) * ms, 6);
    assert_eq!(p.ingest_edges().await.expect("ingest"), 1);
    push((t + 61_500) * ms, 7);
    assert_eq!(
        p.ingest_late_edges().await.expect("late"),
        1,
        "7 (5 is below the new window)"
    );
    assert!(store.job("edge/7/user:2/1").await.expect("job").is_some());
}
