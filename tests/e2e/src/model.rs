//! A model of the platform for property tests: follow-graph, publish, a
//! fanout worker and inboxes in one process, driven by generated steps,
//! with jobs run in the order the test picks.

#![allow(missing_docs)]

use std::collections::BTreeSet;
use std::sync::Arc;

use feed_core::{FeedRef, IdGenerator, NodeLease, SystemClock};
use feed_inbox::{InboxLimits, InboxStore, MemoryInbox};
use feed_proto::common::v1::{ActivityStatus, DeliveryMode, Visibility};
use feed_proto::publish::v1::NewActivity;
use follow_graph::FollowGraph;
use follow_graph::store::GraphPolicy;
use follow_graph::store::embedded::EmbeddedGraphStore;
use proptest::prelude::*;
use publish::store::embedded::EmbeddedActivityStore;
use publish::{FanoutWorker, Graph, PublishRules, Publisher, WorkerConfig};

use crate::inproc::{LocalGraph, TestQueue};

/// Inbox cap of the model: small, so trims and floors happen.
pub const CAP: usize = 6;
/// Users 1..=USERS.
pub const USERS: u64 = 6;

/// One step of a generated scenario.
#[derive(Debug, Clone)]
pub enum Op {
    /// Into user:<actor>, and a tag and a group (refused unless a member) when set.
    Publish {
        actor: u64,
        tag: Option<u8>,
        group: Option<u8>,
        private: bool,
    },
    /// The nth publish again, byte for byte: a retry.
    Retry {
        nth: usize,
    },
    Delete {
        nth: usize,
    },
    Widen {
        nth: usize,
    },
    Follow {
        user: u64,
        feed: Feed,
    },
    Unfollow {
        user: u64,
        feed: Feed,
    },
    Mute {
        user: u64,
        target: u64,
        on: bool,
    },
    Block {
        user: u64,
        target: u64,
    },
    Unblock {
        user: u64,
        target: u64,
    },
    Rebuild {
        user: u64,
    },
    Ingest,
    RunJobs {
        count: usize,
        replay: bool,
        seed: usize,
    },
    /// Every job runs: the next check sees nothing pending.
    Drain,
}

/// A followable feed of the model.
#[derive(Debug, Clone, Copy)]
pub enum Feed {
    User(u64),
    Tag(u8),
    /// Joining a group (the app: a follow and membership at once) lets a
    /// user post into it; leaving ends both.
    Group(u8),
}

impl Feed {
    fn feed_ref(self) -> FeedRef {
        match self {
            Feed::User(u) => FeedRef::user(u),
            Feed::Tag(t) => FeedRef::parse(&format!("tag:t{t}")).expect("tag"),
            Feed::Group(g) => FeedRef::parse(&format!("group:g{g}")).expect("group"),
        }
    }
}

fn user() -> impl Strategy<Value = u64> {
    1..=USERS
}

fn feed() -> impl Strategy<Value = Feed> {
    prop_oneof![
        3 => user().prop_map(Feed::User),
        1 => (0u8..2).prop_map(Feed::Tag),
        1 => (0u8..2).prop_map(Feed::Group),
    ]
}

/// Scenario steps, with skewed posting and every graph change.
pub fn op() -> impl Strategy<Value = Op> {
    // Skewed posting: users 1 and 2 post most.
    let actor = prop_oneof![4 => Just(1u64), 3 => Just(2u64), 2 => user()];
    prop_oneof![
        5 => (
            actor,
            prop::option::weighted(0.3, 0u8..2),
            prop::option::weighted(0.2, 0u8..2),
            prop::bool::weighted(0.15),
        )
            .prop_map(|(actor, tag, group, private)| Op::Publish { actor, tag, group, private }),
        1 => any::<usize>().prop_map(|nth| Op::Retry { nth }),
        1 => any::<usize>().prop_map(|nth| Op::Delete { nth }),
        1 => any::<usize>().prop_map(|nth| Op::Widen { nth }),
        6 => (user(), feed()).prop_map(|(user, feed)| Op::Follow { user, feed }),
        2 => (user(), feed()).prop_map(|(user, feed)| Op::Unfollow { user, feed }),
        1 => (user(), user(), any::<bool>()).prop_map(|(user, target, on)| Op::Mute { user, target, on }),
        1 => (user(), user()).prop_map(|(user, target)| Op::Block { user, target }),
        1 => (user(), user()).prop_map(|(user, target)| Op::Unblock { user, target }),
        1 => Just(Op::Drain),
        1 => user().prop_map(|user| Op::Rebuild { user }),
        3 => Just(Op::Ingest),
        4 => (1usize..6, prop::bool::weighted(0.3), any::<usize>())
            .prop_map(|(count, replay, seed)| Op::RunJobs { count, replay, seed }),
    ]
}

/// follow-graph, publish, a fanout worker and inboxes, all in process.
pub struct Harness {
    /// follow-graph.
    pub graph: FollowGraph,
    /// publish.
    pub publisher: Publisher,
    worker: FanoutWorker,
    queue: Arc<TestQueue>,
    /// The inboxes.
    pub inbox: Arc<MemoryInbox>,
    /// Every id published so far.
    pub published: Vec<u64>,
    /// What each of them was published with (for retries).
    sent: Vec<NewActivity>,
    foreign: u64,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Harness {
    /// Fresh stores; users 1-4 active, 5-6 cold.
    pub async fn new() -> Self {
        let gdir = tempfile::tempdir().expect("dir");
        let pdir = tempfile::tempdir().expect("dir");
        // Celebrity at 3 followers, back to normal below 2: feeds cross both ways.
        let policy = GraphPolicy::new(3, 0.34, 100);
        // On the CQL node too, when the test script's CQL pass asks (a
        // keyspace per harness).
        let cql = crate::cql_store();
        if let Some(scylla) = &cql {
            follow_graph::store::scylla::migrate(scylla)
                .await
                .expect("graph schema");
            publish::store::scylla::migrate(scylla).await.expect("publish schema");
        }
        let gstore: Arc<dyn follow_graph::store::GraphStore> = match &cql {
            Some(scylla) => Arc::new(
                follow_graph::store::scylla::ScyllaGraphStore::connect(scylla, policy)
                    .await
                    .expect("graph store"),
            ),
            None => Arc::new(
                EmbeddedGraphStore::open(gdir.path(), policy)
                    .expect("graph store")
                    .with_sync(false),
            ),
        };
        let graph = FollowGraph::new(gstore);
        let local: Arc<dyn Graph> = Arc::new(LocalGraph(graph.clone()));
        let queue = Arc::new(TestQueue::default());
        let clock = Arc::new(SystemClock);
        let inbox = Arc::new(MemoryInbox::new(
            InboxLimits {
                cap: CAP,
                ttl_ms: 3_600_000,
                cluster: false,
            },
            clock.clone(),
        ));
        let store: Arc<dyn publish::store::ActivityStore> = match &cql {
            Some(scylla) => Arc::new(
                publish::store::scylla::ScyllaActivityStore::connect(scylla)
                    .await
                    .expect("activity store"),
            ),
            None => Arc::new(
                EmbeddedActivityStore::open(pdir.path())
                    .expect("activity store")
                    .with_sync(false),
            ),
        };
        let events = publish::memory_event_queue();
        let publisher = Publisher::new(
            store,
            local.clone(),
            queue.clone(),
            events.clone(),
            IdGenerator::new(NodeLease::exclusive(0), clock.clone()),
            clock,
            PublishRules {
                inbox_cap: CAP,
                ..PublishRules::default()
            },
        );
        let worker = FanoutWorker::new(
            Arc::new(publisher.clone()),
            queue.clone(),
            events,
            local,
            inbox.clone(),
            WorkerConfig {
                page_size: 2,
                inbox_cap: CAP,
                ..WorkerConfig::default()
            },
        );
        let h = Self {
            graph,
            publisher,
            worker,
            queue,
            inbox,
            published: vec![],
            sent: vec![],
            foreign: 0,
            _dirs: (gdir, pdir),
        };
        // Users 1-4 are active (live inboxes); 5 and 6 are cold.
        for u in 1..=4 {
            h.publisher
                .rebuild_inbox(h.inbox.as_ref(), u, &[])
                .await
                .expect("rebuild");
        }
        h
    }

    async fn run_jobs(&self, count: usize, replay: bool, seed: usize) {
        let mut pick = seed;
        for _ in 0..count {
            pick = pick.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let Some(job) = self.queue.take(pick >> 33) else { return };
            self.worker.process(&job.job_id).await.expect("job");
            if replay {
                // A redelivered job must change nothing.
                self.worker.process(&job.job_id).await.expect("replayed job");
            }
        }
    }

    /// Applies one step.
    pub async fn apply(&mut self, op: &Op) {
        match op {
            Op::Publish {
                actor,
                tag,
                group,
                private,
            } => {
                self.foreign += 1;
                let mut to: Vec<String> = tag.iter().map(|t| format!("tag:t{t}")).collect();
                to.extend(group.iter().map(|g| format!("group:g{g}")));
                let new = NewActivity {
                    actor: *actor,
                    verb: "post".into(),
                    object: format!("o{}", self.foreign),
                    foreign_id: format!("f{}", self.foreign),
                    to,
                    visibility: if *private {
                        Visibility::Private
                    } else {
                        Visibility::Public
                    } as i32,
                    ..NewActivity::default()
                };
                let member = match group {
                    Some(g) => self
                        .graph
                        .members(*actor, &[Feed::Group(*g).feed_ref()])
                        .await
                        .expect("membership")[0],
                    None => true,
                };
                match self.publisher.publish(new.clone(), 0).await {
                    Ok(p) => {
                        assert!(member, "a non-member posted into {group:?}");
                        self.published.push(p.id);
                        self.sent.push(new);
                    }
                    Err(e) => assert!(
                        !member && matches!(e, feed_core::ApiError::PermissionDenied(_)),
                        "publish refused: {e}"
                    ),
                }
            }
            Op::Retry { nth } => {
                if self.sent.is_empty() {
                    return;
                }
                let at = nth % self.sent.len();
                // Whatever changed since (membership, deletes, updates), a
                // retry is answered from its dedup record.
                let p = self
                    .publisher
                    .publish(self.sent[at].clone(), 0)
                    .await
                    .expect("an identical retry is never refused");
                assert_eq!((p.id, p.duplicate), (self.published[at], true));
            }
            Op::Delete { nth } | Op::Widen { nth } => {
                if self.published.is_empty() {
                    return;
                }
                let id = self.published[nth % self.published.len()];
                let a = self.publisher.resolve(Some(id), None).await.expect("resolve");
                if matches!(op, Op::Delete { .. }) {
                    self.publisher.delete(a).await.expect("delete");
                } else if a.status == ActivityStatus::Active as i32 {
                    let values = NewActivity {
                        visibility: Visibility::Public as i32,
                        ..NewActivity::default()
                    };
                    self.publisher
                        .update(a, &["visibility".into()], &[], &values)
                        .await
                        .expect("widen");
                }
            }
            Op::Follow { user, feed } => {
                // Self-follows and follows across a block are refused: fine.
                let _ = self.graph.follow(*user, &feed.feed_ref()).await;
                if let Feed::Group(_) = feed {
                    self.graph
                        .set_member(&feed.feed_ref(), *user, true)
                        .await
                        .expect("join");
                }
            }
            Op::Unfollow { user, feed } => {
                self.graph.unfollow(*user, &feed.feed_ref()).await.expect("unfollow");
                if let Feed::Group(_) = feed {
                    self.graph
                        .set_member(&feed.feed_ref(), *user, false)
                        .await
                        .expect("leave");
                }
            }
            Op::Mute { user, target, on } => {
                let _ = self.graph.set_mute(*user, *target, *on).await;
            }
            Op::Block { user, target } => {
                let _ = self.graph.block(*user, *target).await;
            }
            Op::Unblock { user, target } => {
                let _ = self.graph.unblock(*user, *target).await;
            }
            Op::Rebuild { user } => {
                // The user's inbox was lost (Redis flush, expiry) and is rebuilt on return.
                self.inbox.evict(*user).await.expect("evict");
                let following = self.graph.list_following(*user, None, 1000).await.expect("following").0;
                self.publisher
                    .rebuild_inbox(self.inbox.as_ref(), *user, &following)
                    .await
                    .expect("rebuild");
            }
            Op::Ingest => {
                self.publisher.ingest_edges().await.expect("ingest");
            }
            Op::RunJobs { count, replay, seed } => self.run_jobs(*count, *replay, *seed).await,
            Op::Drain => self.drain().await,
        }
    }

    /// Runs every queued job (and the edge jobs they lead to).
    pub async fn drain(&self) {
        loop {
            self.publisher.ingest_edges().await.expect("ingest");
            if self.queue.is_empty() {
                return;
            }
            self.run_jobs(usize::MAX, false, 7).await;
        }
    }

    /// The rules, computed from the durable stores.
    /// The ids user's inbox must hold above its floor.
    pub async fn expected(&self, user: u64) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        let store = self.publisher.store();
        for (&id, a) in self
            .published
            .iter()
            .zip(store.get(&self.published).await.expect("get"))
        {
            let a = a.expect("stored");
            if a.status == ActivityStatus::Deleted as i32
                || a.visibility == Visibility::Private as i32
                || a.actor == user
            {
                continue;
            }
            let mut sources = vec![FeedRef::user(a.actor)];
            sources.extend(a.to.iter().map(|t| FeedRef::parse(t).expect("feed")));
            let follows = self.graph.relationships(user, &[], &sources).await.expect("rel").1;
            for (s, f) in sources.iter().zip(follows) {
                if f && store.outbox_mode(s, id).await.expect("mode") == Some(DeliveryMode::Push) {
                    out.insert(id);
                }
            }
        }
        out
    }

    /// Asserts every live inbox holds exactly what the rules say.
    pub async fn check_inboxes(&self, ops: &[Op]) {
        for user in 1..=USERS {
            let Some(page) = self.inbox.page(user, None, 1000).await.expect("page") else {
                continue;
            };
            let have: BTreeSet<u64> = page.ids.iter().copied().filter(|id| *id >= page.floor).collect();
            let want: BTreeSet<u64> = self
                .expected(user)
                .await
                .into_iter()
                .filter(|id| *id >= page.floor)
                .collect();
            assert_eq!(have, want, "user {user} (floor {}) after {ops:?}", page.floor);
        }
    }
}

impl Harness {
    /// A timeline service over this model.
    pub fn timeline(&self) -> timeline::Timeline {
        timeline::Timeline::new(
            Arc::new(feed_all_in_one::InProcessSources::new(
                self.graph.clone(),
                self.publisher.clone(),
                self.inbox.clone(),
            )),
            self.inbox.clone(),
            timeline::TimelineRules::default(),
        )
    }

    /// The pull model: every visible item of everyone `user` follows, minus
    /// muted and blocked authors, plus their own, newest first.
    pub async fn expected_timeline(&self, user: u64) -> Vec<u64> {
        let following: BTreeSet<FeedRef> = self
            .graph
            .list_following(user, None, 1000)
            .await
            .expect("following")
            .0
            .into_iter()
            .collect();
        let mut out = Vec::new();
        for a in self
            .publisher
            .store()
            .get(&self.published)
            .await
            .expect("get")
            .into_iter()
            .flatten()
        {
            if a.status == ActivityStatus::Deleted as i32 {
                continue;
            }
            if a.actor == user {
                out.push(a.id);
                continue;
            }
            let mut sources = vec![FeedRef::user(a.actor)];
            sources.extend(a.to.iter().map(|t| FeedRef::parse(t).expect("feed")));
            if !sources.iter().any(|s| following.contains(s)) {
                continue;
            }
            let rel = self.graph.relationships(user, &[a.actor], &[]).await.expect("rel").0[0];
            if rel.blocking || rel.blocked_by || rel.muting {
                continue;
            }
            let follows_actor = following.contains(&FeedRef::user(a.actor));
            if feed_core::visibility::can_see(&a, Some(user), || follows_actor) {
                out.push(a.id);
            }
        }
        out.sort_unstable_by(|a, b| b.cmp(a));
        out
    }
}
