//! notify in process: Watch streams (a slow client is dropped without
//! holding up anyone else and resumes from its last event id) and
//! activity events redelivered by the queue.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use feed_core::{ApiError, ManualClock};
use feed_proto::common::v1::Activity;
use feed_proto::events::v1::{ActivityEvent, activity_event};
use feed_proto::notify::v1::{Notification, NotificationKind, RemindJob, watch_event};
use feed_queue::MemoryQueue;
use feed_server::Shutdown;
use notify::graph::{RecipientRelation, Relations};
use notify::live::{EventId, LiveLog, MemoryLive};
use notify::notifier::ListQuery;
use notify::store::NotifyStore;
use notify::store::embedded::EmbeddedNotifyStore;
use notify::{Notifier, NotifyRules};

/// Nobody follows or blocks anybody: the graph plays no part in Watch.
struct NoRelations;

#[async_trait]
impl Relations for NoRelations {
    async fn relations(&self, _: u64, recipients: &[u64]) -> Result<Vec<RecipientRelation>, ApiError> {
        Ok(vec![RecipientRelation::default(); recipients.len()])
    }
}

/// No activity is visible to anyone: no test here subscribes by hand.
struct NoActivities;

#[async_trait]
impl notify::Activities for NoActivities {
    async fn visible_to(&self, _: u64, _: u64) -> Result<bool, ApiError> {
        Ok(false)
    }
}

fn notifier(live: Arc<MemoryLive>, dir: &std::path::Path, buffer: usize) -> Notifier {
    notifier_on(Arc::new(EmbeddedNotifyStore::open(dir).expect("store")), live, buffer)
}

/// A live log whose appends never finish (Redis hung), reads answered by
/// an in-memory log.
struct HungAppends(MemoryLive);

#[async_trait]
impl LiveLog for HungAppends {
    async fn append(&self, _: u64, _: &Notification) -> Result<EventId, notify::live::LiveError> {
        std::future::pending().await
    }
    async fn read_after(
        &self,
        user: u64,
        after: Option<EventId>,
        max: usize,
    ) -> Result<Vec<(EventId, Notification)>, notify::live::LiveError> {
        self.0.read_after(user, after, max).await
    }
    async fn last_id(&self, user: u64) -> Result<Option<EventId>, notify::live::LiveError> {
        self.0.last_id(user).await
    }
    fn wake(&self, user: u64) -> tokio::sync::watch::Receiver<u64> {
        self.0.wake(user)
    }
}

#[tokio::test]
async fn a_hung_live_log_holds_up_no_delivery() {
    let dir = tempfile::tempdir().expect("dir");
    let n = notifier_on(
        Arc::new(EmbeddedNotifyStore::open(dir.path()).expect("store")),
        Arc::new(HungAppends(MemoryLive::new(100))),
        16,
    );
    // More messages than one live copy at a time could ever push.
    for i in 0..3u64 {
        let sent = tokio::time::timeout(Duration::from_secs(5), n.send_message(&format!("m{i}"), 2, 1, "hi"))
            .await
            .expect("SendMessage returns while the live log hangs");
        sent.expect("sent");
    }
    assert_eq!(
        listing(&n, 1, 10).await.notes.len(),
        3,
        "every message is stored and listed"
    );
}

fn notifier_on(store: Arc<dyn NotifyStore>, live: Arc<dyn LiveLog>, buffer: usize) -> Notifier {
    notifier_with(store, live, Arc::new(NoRelations), buffer)
}

fn notifier_with(
    store: Arc<dyn NotifyStore>,
    live: Arc<dyn LiveLog>,
    relations: Arc<dyn Relations>,
    buffer: usize,
) -> Notifier {
    Notifier::new(
        store,
        live,
        notify::Peers {
            graph: relations,
            activities: Arc::new(NoActivities),
        },
        Arc::new(MemoryQueue::<RemindJob>::default()),
        Arc::new(ManualClock::new(1_750_000_000_000)),
        NotifyRules {
            watch_buffer: buffer,
            slow_client: Duration::from_millis(300),
            heartbeat: Duration::from_secs(3600),
            ..NotifyRules::default()
        },
        Shutdown::new(),
    )
}

fn note(content: &str) -> Notification {
    Notification {
        content: content.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_slow_client_is_dropped_while_others_keep_receiving_and_it_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = Arc::new(MemoryLive::new(1000));
    let n = notifier(live.clone(), dir.path(), 4);
    let mut slow = n.watch(1, None).expect("watch");
    let mut fast = n.watch(1, None).expect("watch");
    // Let both streams subscribe before anything is appended.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut fast_seen = Vec::new();
    for i in 0..20 {
        live.append(1, &note(&format!("n{i}"))).await.expect("append");
        // The fast client keeps up.
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), fast.recv()).await {
            let ev = ev.expect("fast stream stays healthy");
            if let Some(watch_event::Event::Notification(x)) = ev.event {
                fast_seen.push(x.content);
                break;
            }
        }
    }
    assert_eq!(fast_seen.len(), 20, "the fast client got everything: {fast_seen:?}");
    // The slow client has not read for longer than the server waits.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut last_ok = None;
    let mut ended = None;
    while let Some(item) = slow.recv().await {
        match item {
            Ok(ev) => last_ok = Some(ev.event_id),
            Err(e) => ended = Some(e),
        }
    }
    assert!(
        matches!(ended, Some(ApiError::ResourceExhausted(_))),
        "the slow client is dropped: {ended:?}"
    );
    let resume = EventId::parse(&last_ok.expect("some events before the drop")).expect("id");
    let mut again = n.watch(1, Some(resume)).expect("watch");
    let mut rest = Vec::new();
    while rest.len() < 20 {
        match tokio::time::timeout(Duration::from_secs(2), again.recv()).await {
            Ok(Some(Ok(ev))) => {
                if let Some(watch_event::Event::Notification(x)) = ev.event {
                    rest.push(x.content);
                }
            }
            _ => break,
        }
    }
    let delivered_before = 20 - rest.len();
    let expected: Vec<String> = (delivered_before..20).map(|i| format!("n{i}")).collect();
    assert_eq!(rest, expected, "resuming delivers exactly what was missed");
}

/// User 1 posts activity 7 (a photo).
fn post_event() -> ActivityEvent {
    ActivityEvent {
        event_id: "event/7/1/0".into(),
        activity: Some(Activity {
            id: 7,
            actor: 1,
            verb: "post".into(),
            object: "photo:3".into(),
            ..Default::default()
        }),
        change: activity_event::Change::Created as i32,
    }
}

fn like_event(event: &str, actor: u64, post: u64) -> ActivityEvent {
    ActivityEvent {
        event_id: event.into(),
        activity: Some(Activity {
            id: 1000 + actor,
            actor,
            verb: "like".into(),
            object: format!("activity:{post}"),
            created_at_ms: 1_750_000_000_000,
            ..Default::default()
        }),
        change: activity_event::Change::Created as i32,
    }
}

#[tokio::test]
async fn redelivered_and_reordered_activity_events_count_each_liker_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = notifier(Arc::new(MemoryLive::new(10)), dir.path(), 16);
    let post = post_event();
    n.on_activity_event(&post).await.expect("post");
    // The queue delivers at least once, in any order.
    let likes = [like_event("l2", 2, 7), like_event("l3", 3, 7)];
    for ev in [&likes[1], &likes[0], &likes[1], &post, &likes[0]] {
        n.on_activity_event(ev).await.expect("event");
    }
    let page = listing(&n, 1, 10).await;
    assert_eq!(page.notes.len(), 1, "{:?}", page.notes);
    let g = &page.notes[0];
    assert_eq!(g.kind, NotificationKind::Remind as i32);
    assert_eq!((g.action.as_str(), g.actor_count), ("like", 2));
    let counts = n.counts(1).await.expect("counts");
    let reminds = counts
        .iter()
        .find(|c| c.kind == NotificationKind::Remind as i32)
        .expect("remind counts");
    assert_eq!(reminds.unread, 1);
}

fn event(
    event: &str,
    id: u64,
    actor: u64,
    verb: &str,
    object: &str,
    at: i64,
    change: activity_event::Change,
) -> ActivityEvent {
    ActivityEvent {
        event_id: event.into(),
        activity: Some(Activity {
            id,
            actor,
            verb: verb.into(),
            object: object.into(),
            created_at_ms: if change == activity_event::Change::Updated {
                at - 500
            } else {
                at
            },
            updated_at_ms: at,
            ..Default::default()
        }),
        change: change as i32,
    }
}

/// The newest `limit` notifications of `user`.
async fn listing(n: &Notifier, user: u64, limit: usize) -> notify::notifier::NotePage {
    n.list(
        user,
        ListQuery {
            limit,
            ..Default::default()
        },
    )
    .await
    .expect("list")
}

/// What a user's list says, without delivery order: a group's id (its
/// place in the list) comes from the first event delivered into it.
async fn notes_of(n: &Notifier, user: u64) -> Vec<(String, String, u64, Vec<u64>)> {
    let page = listing(n, user, 100).await;
    let mut out: Vec<_> = page
        .notes
        .into_iter()
        .map(|n| {
            let mut actors = n.latest_actors.clone();
            actors.sort_unstable();
            (n.action, n.object_id, n.actor_count, actors)
        })
        .collect();
    out.sort();
    out
}

/// Issue 14, bug 3: a like re-driven after the update it preceded (a
/// restart left its event pending) never reminded the liker of the update.
#[tokio::test]
async fn events_take_effect_in_the_order_they_happened_whatever_order_they_are_processed_in() {
    use activity_event::Change::{Created, Updated};
    let t = 1_750_000_000_000;
    // Post 100 by user 1; user 2 likes it, user 3 comments on it, user 1
    // edits it, then user 4 likes it.
    let events = [
        event("post", 100, 1, "post", "photo:9", t, Created),
        event("like", 200, 2, "like", "activity:100", t + 1000, Created),
        event("comment", 300, 3, "comment", "activity:100", t + 2000, Created),
        event("update", 100, 1, "post", "photo:9", t + 3000, Updated),
        event("late-like", 400, 4, "like", "activity:100", t + 4000, Created),
    ];
    let mut orders: Vec<Vec<usize>> = vec![vec![]];
    for _ in 0..events.len() {
        orders = orders
            .into_iter()
            .flat_map(|o| {
                (0..events.len())
                    .filter(|i| !o.contains(i))
                    .map(|i| [o.clone(), vec![i]].concat())
                    .collect::<Vec<_>>()
            })
            .collect();
    }
    let mut want = None;
    for order in orders {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedNotifyStore::open(dir.path()).expect("store").with_sync(false);
        let n = notifier_on(Arc::new(store), Arc::new(MemoryLive::new(100)), 16);
        for &i in &order {
            n.on_activity_event(&events[i]).await.expect("event");
        }
        let got = [
            notes_of(&n, 1).await,
            notes_of(&n, 2).await,
            notes_of(&n, 3).await,
            notes_of(&n, 4).await,
        ];
        let actions = |u: usize| got[u].iter().map(|x| x.0.clone()).collect::<Vec<_>>();
        let want = want.get_or_insert_with(|| {
            // The order they happened in: checked once, in full.
            assert_eq!(order, vec![0, 1, 2, 3, 4]);
            let mut author = actions(0);
            author.sort();
            assert_eq!(
                author,
                ["comment", "like"],
                "the author hears of the likes and the comment"
            );
            let mut liker = actions(1);
            liker.sort();
            assert_eq!(
                liker,
                ["comment", "update"],
                "the liker follows the post from the like on"
            );
            assert_eq!(actions(2), ["update"], "the commenter hears of the later edit");
            assert!(actions(3).is_empty(), "a like after the edit is not told of it");
            got.clone()
        });
        assert_eq!(&got, want, "processed in order {order:?}");
    }
}

/// Two replicas on one ScyllaDB keyspace (the CQL node the test script
/// starts) handed the same activity events at the same instant: one note
/// per recipient, each liker counted once.
#[tokio::test]
async fn replicas_delivering_the_same_events_make_one_note() {
    let Some(nodes) = feed_testkit::cql_nodes() else { return };
    let cfg = feed_server::config::ScyllaConfig::single_node(nodes, feed_testkit::cql_keyspace("notifyrace"))
        .with_login(feed_testkit::cql_login());
    notify::store::scylla::migrate(&cfg).await.expect("migrate");
    let replica = async || {
        let store = notify::store::scylla::ScyllaNotifyStore::connect(&cfg)
            .await
            .expect("connect");
        notifier_on(Arc::new(store), Arc::new(MemoryLive::new(100)), 16)
    };
    let (a, b) = (replica().await, replica().await);
    let post = post_event();
    let (x, y) = tokio::join!(a.on_activity_event(&post), b.on_activity_event(&post));
    x.expect("post on a");
    y.expect("post on b");
    for liker in 2..6 {
        let like = like_event(&format!("l{liker}"), liker, 7);
        let (x, y) = tokio::join!(a.on_activity_event(&like), b.on_activity_event(&like));
        x.expect("like on a");
        y.expect("like on b");
    }
    let page = listing(&b, 1, 10).await;
    assert_eq!(page.notes.len(), 1, "{:?}", page.notes);
    assert_eq!((page.notes[0].action.as_str(), page.notes[0].actor_count), ("like", 4));
}

/// follow-graph is down for good: every remind delivery fails.
struct GraphDown;

#[async_trait]
impl Relations for GraphDown {
    async fn relations(&self, _: u64, _: &[u64]) -> Result<Vec<RecipientRelation>, ApiError> {
        Err(ApiError::Unavailable("follow-graph down".into()))
    }
}

/// publish's job records for events, as far as notify sees them:
/// dead-lettered at the third failed attempt, or the first permanent one.
#[derive(Default)]
struct Ledger {
    failed: std::sync::Mutex<Vec<String>>,
    done: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl notify::EventLedger for Ledger {
    async fn done(&self, event_id: &str) -> Result<(), ApiError> {
        self.done.lock().expect("lock").push(event_id.into());
        Ok(())
    }
    async fn fail(&self, event_id: &str, _: &str, permanent: bool) -> Result<bool, ApiError> {
        let mut failed = self.failed.lock().expect("lock");
        failed.push(event_id.into());
        Ok(permanent || failed.iter().filter(|e| *e == event_id).count() >= 3)
    }
}

#[tokio::test]
async fn an_event_that_keeps_failing_is_dead_lettered_after_its_attempts_not_retried_forever() {
    let dir = tempfile::tempdir().expect("dir");
    let n = notifier_with(
        Arc::new(EmbeddedNotifyStore::open(dir.path()).expect("store")),
        Arc::new(MemoryLive::new(10)),
        Arc::new(GraphDown),
        16,
    );
    let events = Arc::new(MemoryQueue::<ActivityEvent>::default());
    let ledger = Arc::new(Ledger::default());
    // Mentions are checked against follow-graph (blocks, visibility) on every attempt.
    let mut mention = like_event("m2", 2, 7);
    if let Some(a) = mention.activity.as_mut() {
        a.mentions = vec![3];
    }
    // Invalid: the remind it raises gets an event id past 128 characters.
    // Dropped without a word, its job in publish stayed pending for ever.
    let invalid_id = "x".repeat(125);
    let invalid = like_event(&invalid_id, 4, 7);
    feed_queue::JobQueue::enqueue(events.as_ref(), &[post_event(), mention, invalid])
        .await
        .expect("enqueue");
    let shutdown = Shutdown::new();
    let consumer = tokio::spawn(notify::worker::event_consumer(
        n,
        events.clone(),
        ledger.clone(),
        "c".into(),
        Duration::from_millis(20),
        shutdown.clone(),
    ));
    let held = || async {
        feed_queue::JobQueue::held(events.as_ref(), &["event/7/1/0", "m2", invalid_id.as_str()])
            .await
            .expect("held")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while held().await != [false, false, false] {
        assert!(std::time::Instant::now() < deadline, "the failing event left the queue");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A few more reclaim periods: nothing comes back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.trigger();
    consumer.await.expect("consumer");
    assert_eq!(
        *ledger.done.lock().expect("lock"),
        ["event/7/1/0"],
        "the post needs no graph"
    );
    let failed = ledger.failed.lock().expect("lock").clone();
    assert_eq!(
        failed.iter().filter(|e| *e == "m2").count(),
        3,
        "three attempts, then dead: no fourth"
    );
    assert_eq!(
        failed.iter().filter(|e| **e == invalid_id).count(),
        1,
        "the invalid event is dead-lettered at its first failure"
    );
}

/// Issue 19, item 3: note ids of one millisecond collide when their keys
/// do (two senders' messages with one event id, under this fixed clock),
/// and the second message was dropped while its call answered success.
/// Each note now takes the first id from its own that is free or its own.
#[tokio::test]
async fn messages_whose_ids_collide_both_arrive_and_replays_find_their_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = notifier(Arc::new(MemoryLive::new(100)), dir.path(), 16);
    let (a, a_dup) = n.send_message("e1", 2, 1, "from two").await.expect("first");
    let (b, b_dup) = n.send_message("e1", 3, 1, "from three").await.expect("second");
    assert!(!a_dup && !b_dup, "two messages, neither a duplicate");
    assert_ne!(a, b, "the second took another id");
    assert_eq!(
        n.send_message("e1", 3, 1, "from three").await.expect("replay"),
        (b, true),
        "a replay finds its own note, not the one its id collided with"
    );
    assert_eq!(n.send_message("e1", 2, 1, "from two").await.expect("replay"), (a, true));
    let mut got: Vec<(u64, String)> = listing(&n, 1, 10)
        .await
        .notes
        .into_iter()
        .map(|m| (m.sender, m.content))
        .collect();
    got.sort();
    assert_eq!(got, [(2, "from two".to_owned()), (3, "from three".to_owned())]);
}

/// Issue 19, item 5: Watch streams are capped per user and per replica; a
/// stream the client closed frees its place.
#[tokio::test]
async fn watch_streams_are_capped_per_user_and_per_replica_and_a_closed_one_frees_its_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = Notifier::new(
        Arc::new(EmbeddedNotifyStore::open(dir.path()).expect("store")),
        Arc::new(MemoryLive::new(100)),
        notify::Peers {
            graph: Arc::new(NoRelations),
            activities: Arc::new(NoActivities),
        },
        Arc::new(MemoryQueue::<RemindJob>::default()),
        Arc::new(ManualClock::new(1_750_000_000_000)),
        NotifyRules {
            watch_max_per_user: 2,
            watch_max_streams: 3,
            heartbeat: Duration::from_secs(3600),
            ..NotifyRules::default()
        },
        Shutdown::new(),
    );
    let first = n.watch(1, None).expect("first of user 1");
    let _second = n.watch(1, None).expect("second of user 1");
    let third = n.watch(1, None).expect_err("a third of user 1");
    assert!(
        matches!(&third, ApiError::ResourceExhausted(m) if m.contains("per user")),
        "{third:?}"
    );
    let _other = n.watch(2, None).expect("user 2, the replica's third");
    let full = n.watch(3, None).expect_err("the replica is full");
    assert!(
        matches!(&full, ApiError::ResourceExhausted(m) if m.contains("replica")),
        "{full:?}"
    );

    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match n.watch(1, None) {
            Ok(_) => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the closed stream kept its place: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
