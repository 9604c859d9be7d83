//! The timeline property over the split deployment: after every step of a
//! random scenario (the same steps as `e2e::timeline_property`, sent over
//! gRPC to random replicas), the concatenated pages of every user's home
//! timeline, read through random timeline replicas, equal the pull model
//! read back from follow-graph and publish. Jobs run in the real fanout
//! workers, which stay frozen (SIGSTOP) except when a step lets them run a
//! moment or drain, so checks land while fanout, backfill and purge are
//! still pending, in whatever order the workers took them. A graph change is allowed the edge-log tail's moment
//! (publish turns follow-graph's log into jobs every 200 ms, README
//! "Timelines"); every other step must show at once.

use std::time::Duration;

use feed_e2e::internal;
use feed_e2e::model::{Feed, Op, USERS, op};
use feed_e2e::split::{Role, Split};
use feed_inbox::redis_store::{floor_key, inbox_key};
use feed_proto::common::v1::{ActivityStatus, Visibility};
use feed_proto::followgraph::v1 as fg;
use feed_proto::publish::v1 as pb;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::Clients;

/// One generated scenario on its own users, tags and groups.
struct Case<'a> {
    split: &'a Split,
    c: Clients,
    redis: String,
    base: u64,
    tag: String,
    published: Vec<u64>,
    sent: Vec<pb::NewActivity>,
}

impl Case<'_> {
    fn user(&self, u: u64) -> u64 {
        self.base + u
    }

    async fn membership(&mut self, user: u64, feed: Feed, member: bool) {
        self.c
            .graph
            .set_membership(internal(fg::SetMembershipRequest {
                feed: self.feed(feed),
                user_id: self.user(user),
                member,
            }))
            .await
            .expect("membership");
    }

    fn feed(&self, f: Feed) -> String {
        match f {
            Feed::User(u) => format!("user:{}", self.user(u)),
            Feed::Tag(t) => format!("tag:{}t{t}", self.tag),
            Feed::Group(g) => format!("group:{}g{g}", self.tag),
        }
    }

    /// Applies one step; true when it changed the follow graph.
    async fn apply(&mut self, op: &Op) -> bool {
        match op {
            Op::Publish {
                actor,
                tag,
                group,
                private,
            } => {
                let n = self.sent.len() + 1;
                let mut to: Vec<String> = tag.iter().map(|t| self.feed(Feed::Tag(*t))).collect();
                to.extend(group.iter().map(|g| self.feed(Feed::Group(*g))));
                let new = pb::NewActivity {
                    actor: self.user(*actor),
                    verb: "post".into(),
                    object: format!("o{n}"),
                    foreign_id: format!("{}f{n}", self.tag),
                    to,
                    visibility: if *private {
                        Visibility::Private
                    } else {
                        Visibility::Public
                    } as i32,
                    ..pb::NewActivity::default()
                };
                match self
                    .c
                    .publish
                    .publish(internal(pb::PublishRequest {
                        activity: Some(new.clone()),
                        publish_at_ms: 0,
                    }))
                    .await
                {
                    Ok(r) => {
                        self.published.push(r.into_inner().activity_id);
                        self.sent.push(new);
                    }
                    Err(e) => assert!(
                        group.is_some() && e.code() == tonic::Code::PermissionDenied,
                        "publish refused: {e}"
                    ),
                }
                false
            }
            Op::Retry { nth } => {
                if self.sent.is_empty() {
                    return false;
                }
                let at = nth % self.sent.len();
                let r = self
                    .c
                    .publish
                    .publish(internal(pb::PublishRequest {
                        activity: Some(self.sent[at].clone()),
                        publish_at_ms: 0,
                    }))
                    .await
                    .expect("an identical retry is never refused")
                    .into_inner();
                assert_eq!((r.activity_id, r.duplicate), (self.published[at], true));
                false
            }
            Op::Delete { nth } | Op::Widen { nth } => {
                if self.published.is_empty() {
                    return false;
                }
                let id = self.published[nth % self.published.len()];
                let reference = Some(pb::ActivityRef {
                    r#ref: Some(pb::activity_ref::Ref::Id(id)),
                });
                if matches!(op, Op::Delete { .. }) {
                    self.c
                        .publish
                        .delete_activity(internal(pb::DeleteActivityRequest { r#ref: reference }))
                        .await
                        .expect("delete");
                } else if self.c.activities(&[id]).await[0].status == ActivityStatus::Active as i32 {
                    self.c
                        .publish
                        .update_activity(internal(pb::UpdateActivityRequest {
                            r#ref: reference,
                            set_fields: vec!["visibility".into()],
                            unset_fields: vec![],
                            values: Some(pb::NewActivity {
                                visibility: Visibility::Public as i32,
                                ..pb::NewActivity::default()
                            }),
                        }))
                        .await
                        .expect("widen");
                }
                false
            }
            Op::Follow { user, feed } => {
                // Self-follows and follows across a block are refused: fine.
                let _ = self
                    .c
                    .graph
                    .follow(internal(fg::FollowRequest {
                        follower_id: self.user(*user),
                        feed: self.feed(*feed),
                    }))
                    .await;
                // Joining a group (the app) is a follow and membership.
                if let Feed::Group(_) = feed {
                    self.membership(*user, *feed, true).await;
                }
                true
            }
            Op::Unfollow { user, feed } => {
                self.c
                    .graph
                    .unfollow(internal(fg::UnfollowRequest {
                        follower_id: self.user(*user),
                        feed: self.feed(*feed),
                    }))
                    .await
                    .expect("unfollow");
                if let Feed::Group(_) = feed {
                    self.membership(*user, *feed, false).await;
                }
                true
            }
            Op::Mute { user, target, on } => {
                let (user_id, target_user_id) = (self.user(*user), self.user(*target));
                let _ = if *on {
                    self.c
                        .graph
                        .mute(internal(fg::MuteRequest {
                            user_id,
                            target_user_id,
                        }))
                        .await
                        .map(|_| ())
                } else {
                    self.c
                        .graph
                        .unmute(internal(fg::UnmuteRequest {
                            user_id,
                            target_user_id,
                        }))
                        .await
                        .map(|_| ())
                };
                true
            }
            Op::Block { user, target } => {
                let _ = self
                    .c
                    .graph
                    .block(internal(fg::BlockRequest {
                        user_id: self.user(*user),
                        target_user_id: self.user(*target),
                    }))
                    .await;
                true
            }
            Op::Unblock { user, target } => {
                let _ = self
                    .c
                    .graph
                    .unblock(internal(fg::UnblockRequest {
                        user_id: self.user(*user),
                        target_user_id: self.user(*target),
                    }))
                    .await;
                true
            }
            Op::Rebuild { user } => {
                // The user's inbox is lost (eviction, a flush): the next read rebuilds it.
                let client = redis::Client::open(self.redis.as_str()).expect("redis url");
                let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
                let u = self.user(*user);
                let _: () = redis::cmd("DEL")
                    .arg(inbox_key(u))
                    .arg(floor_key(u))
                    .query_async(&mut conn)
                    .await
                    .expect("del");
                false
            }
            Op::Ingest => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                false
            }
            Op::RunJobs { count, .. } => {
                // The workers run a moment: some jobs finish, others stay pending.
                self.split.resume(Role::FanoutWorker);
                tokio::time::sleep(Duration::from_millis(10 * *count as u64)).await;
                self.split.pause(Role::FanoutWorker);
                false
            }
            Op::Drain => {
                self.split.resume(Role::FanoutWorker);
                self.c.settled().await;
                self.split.pause(Role::FanoutWorker);
                false
            }
        }
    }

    /// Every user's paged timeline against the pull model; the first
    /// mismatch, if any.
    async fn mismatch(&mut self, page: u32) -> Option<String> {
        let activities = self.c.activities(&self.published).await;
        for u in 1..=USERS {
            let user = self.user(u);
            let got = self.c.timeline_ids(user, page).await.expect("timeline");
            let want = self.c.pull_model(user, &activities).await;
            if got != want {
                return Some(format!("user {u}: timeline {got:?}, pull model {want:?}"));
            }
        }
        None
    }

    async fn check(&mut self, page: u32, graph_changed: bool, ops: &[Op]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(if graph_changed { 10 } else { 0 });
        loop {
            let Some(why) = self.mismatch(page).await else { return };
            assert!(tokio::time::Instant::now() < deadline, "{why} after {ops:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[test]
fn split_paged_timelines_equal_the_pull_model_after_every_step() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The model's thresholds: celebrity at 3 followers (back below 2),
    // inboxes of 6, so feeds cross modes and inboxes trim. The workers are
    // stopped between steps, so a call of theirs can outlive its deadline
    // and the job fail: a failed job comes back after one reclaim period,
    // then 2, 4 and 8 (`publish::fanout::retry_due`). At the default 30 s
    // period two such failures outwait the 60 s `settled` gives a case.
    let split = rt.block_on(Split::start(&[
        ("FEED__FOLLOW_GRAPH__CELEBRITY_THRESHOLD", "3"),
        ("FEED__FOLLOW_GRAPH__CELEBRITY_HYSTERESIS", "0.34"),
        ("FEED__INBOX__CAP", "6"),
        ("FEED__FANOUT__RECLAIM_IDLE_MS", "2000"),
    ]));
    let cases = if feed_e2e::split::cql_nodes().is_some() { 6 } else { 12 };
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..Config::default()
    });
    let case_no = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&(prop::collection::vec(op(), 10..40), 1u32..5), |(ops, page)| {
        let case_no = case_no.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        rt.block_on(async {
            let mut case = Case {
                split: &split,
                c: Clients::any(&split),
                redis: split.redis.url(),
                base: case_no * 100,
                tag: format!("c{case_no}"),
                published: vec![],
                sent: vec![],
            };
            // Users 1-4 are active (live inboxes); 5 and 6 are cold.
            for u in 1..=4 {
                case.c
                    .publish
                    .rebuild_inbox(internal(pb::RebuildInboxRequest { user_id: case.user(u) }))
                    .await
                    .expect("rebuild");
            }
            // Jobs wait for the workers, which run only when a step says so.
            split.pause(Role::FanoutWorker);
            for (step, op) in ops.iter().enumerate() {
                let graph_changed = case.apply(op).await;
                case.check(page, graph_changed, &ops[..=step]).await;
            }
            split.resume(Role::FanoutWorker);
            case.c.settled().await;
            case.check(page, false, &ops).await;
        });
        Ok(())
    });
    rt.block_on(split.stop());
    if let Err(e) = result {
        panic!("{e}");
    }
}
