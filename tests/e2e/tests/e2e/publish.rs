//! publish and fanout end to end: real gRPC, a real redis-server holding the
//! inboxes and the job stream, in-process fanout workers.

use std::time::Duration;

use feed_e2e::{TestApp, bff, internal};
use feed_inbox::{InboxLimits, InboxStore, RedisInbox};
use feed_proto::common::v1::{DeliveryMode, Visibility};
use feed_proto::followgraph::v1 as fg;
use feed_proto::publish::v1 as pb;
use tonic::Code;

/// The area's helpers over the shared [`TestApp`], with the inboxes read directly.
struct Env {
    app: TestApp,
    inbox: RedisInbox,
}

impl std::ops::Deref for Env {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

impl std::ops::DerefMut for Env {
    fn deref_mut(&mut self) -> &mut TestApp {
        &mut self.app
    }
}

impl Env {
    async fn stop(self) -> anyhow::Result<()> {
        self.app.stop().await
    }
}

async fn env_with(tune: impl FnOnce(&mut feed_server::FeedConfig)) -> Env {
    let app = TestApp::start(|cfg| {
        cfg.publish.sweep_interval_ms = 50;
        tune(cfg);
    })
    .await;
    let inbox = RedisInbox::connect(&app.redis.url(), InboxLimits::default())
        .await
        .expect("inbox");
    Env { app, inbox }
}

async fn env() -> Env {
    env_with(|_| {}).await
}

impl Env {
    async fn unfollow(&mut self, follower: u64, feed: &str) {
        self.graph
            .unfollow(internal(fg::UnfollowRequest {
                follower_id: follower,
                feed: feed.into(),
            }))
            .await
            .expect("unfollow");
    }

    async fn publish(&mut self, actor: u64, foreign_id: &str) -> pb::PublishResponse {
        self.publish
            .publish(internal(pb::PublishRequest {
                activity: Some(post(actor, foreign_id)),
                publish_at_ms: 0,
            }))
            .await
            .expect("publish")
            .into_inner()
    }

    /// Waits until `user`'s inbox holds exactly `want` (fanout is asynchronous).
    async fn inbox_becomes(&self, user: u64, want: &[u64]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ids = self.inbox.page(user, None, 1000).await.expect("page").map(|p| p.ids);
            if ids.as_deref() == Some(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "inbox {user}: {ids:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The mode the response reports for each feed written to.
fn modes(p: &pb::PublishResponse) -> Vec<(String, DeliveryMode)> {
    p.deliveries
        .iter()
        .map(|d| (d.feed.clone(), DeliveryMode::try_from(d.mode).expect("mode")))
        .collect()
}

fn post(actor: u64, foreign_id: &str) -> pb::NewActivity {
    pb::NewActivity {
        actor,
        verb: "post".into(),
        object: format!("post:{foreign_id}"),
        foreign_id: foreign_id.into(),
        ..pb::NewActivity::default()
    }
}

#[tokio::test]
async fn publish_pushes_to_live_inboxes_and_never_creates_one() {
    let mut e = env().await;
    e.follow(2, "user:1").await;
    e.follow(3, "user:1").await;
    e.inbox.rebuild(2, &[], 0, None).await.expect("user 2 is active");
    let p = e.publish(1, "a").await;
    assert_eq!(modes(&p), vec![("user:1".to_owned(), DeliveryMode::Push)]);
    e.inbox_becomes(2, &[p.activity_id]).await;
    e.settled().await;
    assert!(
        !e.inbox.is_live(3).await.expect("live"),
        "cold user 3 gets nothing pushed"
    );
    assert!(!e.inbox.is_live(1).await.expect("live"));
    e.stop().await.expect("stop");
}

#[tokio::test]
async fn republishing_a_foreign_id_returns_the_first_id_and_a_changed_payload_conflicts() {
    let mut e = env().await;
    let first = e.publish(1, "dup").await;
    let again = e.publish(1, "dup").await;
    assert_eq!(again.activity_id, first.activity_id);
    assert!(again.duplicate && !first.duplicate);
    let mut changed = post(1, "dup");
    changed.object = "post:other".into();
    let err = e
        .publish
        .publish(internal(pb::PublishRequest {
            activity: Some(changed),
            publish_at_ms: 0,
        }))
        .await
        .expect_err("conflict");
    assert_eq!(err.code(), Code::AlreadyExists);
    e.stop().await.expect("stop");
}

#[tokio::test]
async fn bad_input_is_refused_by_field_and_stores_nothing() {
    let mut e = env().await;
    let cases: Vec<(pb::NewActivity, &str)> = vec![
        (
            pb::NewActivity {
                verb: String::new(),
                ..post(1, "x")
            },
            "activity.verb",
        ),
        (
            pb::NewActivity {
                to: vec!["planet:mars".into()],
                ..post(1, "x")
            },
            "activity.to[0]",
        ),
        (
            pb::NewActivity {
                extra: vec![b' '; 9000],
                ..post(1, "x")
            },
            "activity.extra",
        ),
        (
            pb::NewActivity {
                foreign_id: "f".repeat(200),
                ..post(1, "x")
            },
            "activity.foreign_id",
        ),
    ];
    for (bad, field) in cases {
        let err = e
            .publish
            .publish(internal(pb::PublishRequest {
                activity: Some(bad),
                publish_at_ms: 0,
            }))
            .await
            .expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    // The refused calls claimed nothing: "x" publishes fresh.
    assert!(!e.publish(1, "x").await.duplicate);
    e.stop().await.expect("stop");
}

#[tokio::test]
async fn callers_may_publish_only_where_they_are_allowed() {
    let mut e = env().await;
    let err = e
        .publish
        .publish(bff(
            pb::PublishRequest {
                activity: Some(post(7, "p")),
                publish_at_ms: 0,
            },
            8,
        ))
        .await
        .expect_err("as another user");
    assert_eq!(err.code(), Code::PermissionDenied);
    for (to, why) in [("user:9", "another user's feed"), ("group:g1", "not a member")] {
        let err = e
            .publish
            .publish(internal(pb::PublishRequest {
                activity: Some(pb::NewActivity {
                    to: vec![to.into()],
                    ..post(7, to)
                }),
                publish_at_ms: 0,
            }))
            .await
            .expect_err(why);
        assert_eq!(err.code(), Code::PermissionDenied, "{why}");
    }
    // Following the group is not membership.
    e.follow(7, "group:g1").await;
    let err = e
        .publish
        .publish(internal(pb::PublishRequest {
            activity: Some(pb::NewActivity {
                to: vec!["group:g1".into()],
                ..post(7, "follower")
            }),
            publish_at_ms: 0,
        }))
        .await
        .expect_err("a follower who is not a member");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("activity.to[0]"), "{err:?}");
    e.set_member(7, "group:g1", true).await;
    let ok = e
        .publish
        .publish(internal(pb::PublishRequest {
            activity: Some(pb::NewActivity {
                to: vec!["group:g1".into(), "tag:rust".into()],
                ..post(7, "member")
            }),
            publish_at_ms: 0,
        }))
        .await
        .expect("a member may post to the group");
    assert!(ok.into_inner().activity_id > 0);
    e.stop().await.expect("stop");
}

#[tokio::test]
async fn celebrity_items_are_pulled_not_pushed() {
    let mut e = env_with(|cfg| cfg.follow_graph.celebrity_threshold = 3).await;
    for u in 2..5 {
        e.follow(u, "user:1").await;
        e.inbox.rebuild(u, &[], 0, None).await.expect("live");
    }
    let p = e.publish(1, "celeb").await;
    assert_eq!(modes(&p), vec![("user:1".to_owned(), DeliveryMode::Pull)]);
    e.settled().await;
    for u in 2..5 {
        assert_eq!(
            e.inbox.page(u, None, 10).await.expect("page").expect("live").ids,
            Vec::<u64>::new()
        );
    }
    e.stop().await.expect("stop");
}

#[tokio::test]
async fn delete_hides_at_once_and_purges_inboxes() {
    let mut e = env().await;
    e.follow(2, "user:1").await;
    e.inbox.rebuild(2, &[], 0, None).await.expect("live");
    let keep = e.publish(1, "keep").await.activity_id;
    let gone = e.publish(1, "gone").await.activity_id;
    e.inbox_becomes(2, &[gone, keep]).await;
    let del = e
        .publish
        .delete_activity(internal(pb::DeleteActivityRequest {
            r#ref: Some(pb::ActivityRef {
                r#ref: Some(pb::activity_ref::Ref::Id(gone)),
            }),
        }))
        .await
        .expect("delete")
        .into_inner();
    assert!(del.changed);
    let got = e
        .publish
        .get_activities(internal(pb::GetActivitiesRequest {
            ids: vec![keep, gone],
            include_deleted: false,
            viewer_id: 0,
        }))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.activities.len(), 1);
    assert_eq!(got.missing_ids, vec![gone], "hidden at once");
    e.inbox_becomes(2, &[keep]).await;
    e.stop().await.expect("stop");
}

#[tokio::test]
async fn private_items_reach_followers_once_their_visibility_widens() {
    let mut e = env().await;
    e.follow(2, "user:1").await;
    e.inbox.rebuild(2, &[], 0, None).await.expect("live");
    let p = e
        .publish
        .publish(internal(pb::PublishRequest {
            activity: Some(pb::NewActivity {
                visibility: Visibility::Private as i32,
                ..post(1, "secret")
            }),
            publish_at_ms: 0,
        }))
        .await
        .expect("publish")
        .into_inner();
    e.settled().await;
    e.inbox_becomes(2, &[]).await;
    e.publish
        .update_activity(internal(pb::UpdateActivityRequest {
            r#ref: Some(pb::ActivityRef {
                r#ref: Some(pb::activity_ref::Ref::Foreign(pb::ForeignRef {
                    actor: 1,
                    foreign_id: "secret".into(),
                })),
            }),
            set_fields: vec!["visibility".into()],
            unset_fields: vec![],
            values: Some(pb::NewActivity {
                visibility: Visibility::Public as i32,
                ..pb::NewActivity::default()
            }),
        }))
        .await
        .expect("update");
    e.inbox_becomes(2, &[p.activity_id]).await;
    e.stop().await.expect("stop");
}

#[tokio::test]
async fn scheduled_items_get_their_id_at_release_exactly_once() {
    let mut e = env().await;
    e.follow(2, "user:1").await;
    e.inbox.rebuild(2, &[], 0, None).await.expect("live");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as i64;
    let s = e
        .publish
        .publish(internal(pb::PublishRequest {
            activity: Some(post(1, "later")),
            publish_at_ms: now + 400,
        }))
        .await
        .expect("schedule")
        .into_inner();
    assert_eq!(s.activity_id, 0);
    assert!(!s.schedule_id.is_empty());
    let listed = e
        .publish
        .list_scheduled(internal(pb::ListScheduledRequest {
            actor: 1,
            page_size: 10,
            page_token: String::new(),
        }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.scheduled.len(), 1);
    // Released by the sweeper; then publishing it again is a duplicate of the released id.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let released = loop {
        let ids = e.inbox.page(2, None, 10).await.expect("page").expect("live").ids;
        if let Some(id) = ids.first() {
            break *id;
        }
        assert!(tokio::time::Instant::now() < deadline, "not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        feed_core::id::id_time_ms(released) as i64 >= now + 400,
        "the id is minted at release"
    );
    let again = e.publish(1, "later").await;
    assert!(again.duplicate);
    assert_eq!(again.activity_id, released);
    e.stop().await.expect("stop");
}

#[tokio::test]
async fn jobs_lost_in_a_redis_flush_are_redriven_by_the_sweeper() {
    // No in-process workers: jobs wait in the stream until we flush it.
    let mut e = env_with(|cfg| {
        cfg.fanout.workers = 0;
        cfg.publish.stale_after_ms = 100;
    })
    .await;
    for u in [2, 3] {
        e.follow(u, "user:1").await;
    }
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(e.publish(1, &format!("f{n}")).await.activity_id);
    }
    let mut conn = redis::Client::open(e.redis.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("flush");
    // Users come back with empty, complete-from-now inboxes (as after a rebuild
    // that found nothing yet): only fanout can fill them.
    for u in [2, 3] {
        e.inbox.rebuild(u, &[], 0, None).await.expect("live");
    }
    // A worker starts after the flush; only the sweeper can give it the lost jobs.
    let token = feed_e2e::INTERNAL_TOKEN;
    let worker = publish::FanoutWorker::new(
        std::sync::Arc::new(publish::fanout::GrpcLedger::new(e.platform.channel.clone(), token).expect("ledger")),
        std::sync::Arc::new(
            publish::RedisFanoutQueue::connect(&e.redis.url(), "feed:jobs", "fanout")
                .await
                .expect("queue"),
        ),
        // Activity events go where the platform's notify reads them.
        publish::open_event_queue(&{
            let mut cfg = feed_server::FeedConfig::default();
            cfg.redis.url = e.redis.url();
            cfg
        })
        .await
        .expect("event queue"),
        std::sync::Arc::new(feed_clients::FollowGraphClient::new(e.platform.channel.clone(), token).expect("graph")),
        std::sync::Arc::new(
            RedisInbox::connect(&e.redis.url(), InboxLimits::default())
                .await
                .expect("inbox"),
        ),
        publish::WorkerConfig::default(),
    );
    let stop = feed_server::Shutdown::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    let mut want = ids.clone();
    want.reverse();
    for u in [2, 3] {
        e.inbox_becomes(u, &want).await;
    }
    e.settled().await;
    stop.trigger();
    task.await.expect("worker");
    e.stop().await.expect("stop");
}

#[tokio::test]
async fn follow_backfills_and_unfollow_or_block_purges_live_inboxes() {
    let mut e = env().await;
    e.follow(3, "tag:rust").await;
    let a = e.publish(1, "a").await.activity_id;
    let tagged = e
        .publish
        .publish(internal(pb::PublishRequest {
            activity: Some(pb::NewActivity {
                to: vec!["tag:rust".into()],
                ..post(1, "tagged")
            }),
            publish_at_ms: 0,
        }))
        .await
        .expect("publish")
        .into_inner()
        .activity_id;
    e.inbox.rebuild(2, &[], 0, None).await.expect("live");
    e.follow(2, "user:1").await;
    e.inbox_becomes(2, &[tagged, a]).await;

    // Unfollow purges; an item another followed feed brings stays.
    e.follow(2, "tag:rust").await;
    e.unfollow(2, "user:1").await;
    e.inbox_becomes(2, &[tagged]).await;

    // A block removes the follow both ways and purges.
    e.inbox.rebuild(3, &[], 0, None).await.expect("live");
    e.follow(3, "user:1").await;
    e.inbox_becomes(3, &[tagged, a]).await;
    e.unfollow(3, "tag:rust").await;
    e.graph
        .block(internal(fg::BlockRequest {
            user_id: 1,
            target_user_id: 3,
        }))
        .await
        .expect("block");
    e.inbox_becomes(3, &[]).await;
    e.settled().await;
    e.stop().await.expect("stop");
}

#[tokio::test]
async fn admin_rpcs_rebuild_rerun_and_report_and_refuse_bff_tokens() {
    let mut e = env().await;
    e.follow(2, "user:1").await;
    let a = e.publish(1, "a").await.activity_id;
    let b = e.publish(1, "b").await.activity_id;
    e.settled().await;
    assert!(!e.inbox.is_live(2).await.expect("live"), "cold before the rebuild");
    let rebuilt = e
        .publish
        .rebuild_inbox(internal(pb::RebuildInboxRequest { user_id: 2 }))
        .await
        .expect("rebuild")
        .into_inner();
    assert_eq!(rebuilt.entries, 2);
    e.inbox_becomes(2, &[b, a]).await;

    e.inbox.remove(2, &[a]).await.expect("lose one");
    let rerun = e
        .publish
        .rerun_fanout(internal(pb::RerunFanoutRequest { activity_id: a }))
        .await
        .expect("rerun")
        .into_inner();
    assert!(rerun.job_id.contains(&a.to_string()));
    e.inbox_becomes(2, &[b, a]).await;

    let dead = e
        .publish
        .list_dead_letters(internal(pb::ListDeadLettersRequest {
            page_size: 10,
            page_token: String::new(),
        }))
        .await
        .expect("dead letters")
        .into_inner();
    assert!(dead.dead_letters.is_empty());
    e.settled().await;

    let err = e
        .publish
        .rebuild_inbox(bff(pb::RebuildInboxRequest { user_id: 2 }, 2))
        .await
        .expect_err("admin only");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = e
        .publish
        .get_fanout_lag(bff(pb::GetFanoutLagRequest {}, 2))
        .await
        .expect_err("admin only");
    assert_eq!(err.code(), Code::PermissionDenied);
    e.stop().await.expect("stop");
}

#[tokio::test]
async fn a_cancelled_scheduled_item_is_never_released() {
    let mut e = env().await;
    e.follow(2, "user:1").await;
    e.inbox.rebuild(2, &[], 0, None).await.expect("live");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as i64;
    let s = e
        .publish
        .publish(internal(pb::PublishRequest {
            activity: Some(post(1, "never")),
            publish_at_ms: now + 300,
        }))
        .await
        .expect("schedule")
        .into_inner();
    let err = e
        .publish
        .cancel_scheduled(bff(
            pb::CancelScheduledRequest {
                actor: 1,
                schedule_id: s.schedule_id.clone(),
            },
            2,
        ))
        .await
        .expect_err("another user's schedule");
    assert_eq!(err.code(), Code::PermissionDenied);
    let cancelled = e
        .publish
        .cancel_scheduled(internal(pb::CancelScheduledRequest {
            actor: 1,
            schedule_id: s.schedule_id,
        }))
        .await
        .expect("cancel")
        .into_inner();
    assert!(cancelled.changed);
    tokio::time::sleep(Duration::from_millis(600)).await;
    e.settled().await;
    e.inbox_becomes(2, &[]).await;
    assert!(!e.publish(1, "never").await.duplicate, "it was never published");
    e.stop().await.expect("stop");
}

#[tokio::test]
async fn each_target_feed_reports_the_mode_its_followers_get() {
    // tag:big is a celebrity feed; user:1 is an ordinary one.
    let mut e = env_with(|cfg| cfg.follow_graph.celebrity_threshold = 2).await;
    e.follow(2, "tag:big").await;
    e.follow(3, "tag:big").await;
    e.follow(2, "tag:small").await;
    let to = |fid: &str| pb::PublishRequest {
        activity: Some(pb::NewActivity {
            to: vec!["tag:big".into(), "tag:small".into()],
            ..post(1, fid)
        }),
        publish_at_ms: 0,
    };
    let p = e
        .publish
        .publish(internal(to("mixed")))
        .await
        .expect("publish")
        .into_inner();
    let want = vec![
        ("user:1".to_owned(), DeliveryMode::Push),
        ("tag:big".to_owned(), DeliveryMode::Pull),
        ("tag:small".to_owned(), DeliveryMode::Push),
    ];
    assert_eq!(modes(&p), want);
    // A retry reports the modes fixed at the first publish.
    e.follow(4, "tag:small").await;
    e.follow(5, "tag:small").await;
    let again = e
        .publish
        .publish(internal(to("mixed")))
        .await
        .expect("retry")
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(modes(&again), want);
    e.stop().await.expect("stop");
}

#[tokio::test]
async fn an_identical_retry_returns_the_first_id_after_the_author_left_the_group() {
    let mut e = env().await;
    e.set_member(7, "group:1", true).await;
    let req = || pb::PublishRequest {
        activity: Some(pb::NewActivity {
            to: vec!["group:1".into()],
            ..post(7, "retry-1")
        }),
        publish_at_ms: 0,
    };
    let first = e.publish.publish(internal(req())).await.expect("publish").into_inner();
    let again = e.publish.publish(internal(req())).await.expect("retry").into_inner();
    assert_eq!((again.activity_id, again.duplicate), (first.activity_id, true));
    e.set_member(7, "group:1", false).await;
    let retry = e
        .publish
        .publish(internal(req()))
        .await
        .expect("a retry is answered from its dedup record, not authorized again")
        .into_inner();
    assert_eq!((retry.activity_id, retry.duplicate), (first.activity_id, true));
    // A new item into the group is a new write: it needs membership.
    let mut other = req();
    if let Some(a) = other.activity.as_mut() {
        a.foreign_id = "retry-2".into();
    }
    let err = e
        .publish
        .publish(internal(other))
        .await
        .expect_err("not a member any more");
    assert_eq!(err.code(), Code::PermissionDenied);
    // So does a changed payload under the old foreign id: it is not a retry.
    let mut changed = req();
    if let Some(a) = changed.activity.as_mut() {
        a.object = "post:changed".into();
    }
    let err = e.publish.publish(internal(changed)).await.expect_err("changed payload");
    assert_eq!(err.code(), Code::PermissionDenied);
    e.stop().await.expect("stop");
}

#[tokio::test]
async fn an_identical_retry_after_update_or_delete_changes_nothing() {
    let mut e = env().await;
    let first = e.publish(1, "kept").await;
    let by_id = |id: u64| {
        Some(pb::ActivityRef {
            r#ref: Some(pb::activity_ref::Ref::Id(id)),
        })
    };
    e.publish
        .update_activity(internal(pb::UpdateActivityRequest {
            r#ref: by_id(first.activity_id),
            set_fields: vec!["object".into()],
            values: Some(pb::NewActivity {
                object: "post:edited".into(),
                ..pb::NewActivity::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("update");
    let again = e.publish(1, "kept").await;
    assert_eq!((again.activity_id, again.duplicate), (first.activity_id, true));
    let get = |id: u64| pb::GetActivitiesRequest {
        ids: vec![id],
        include_deleted: true,
        viewer_id: 0,
    };
    let stored = e
        .publish
        .get_activities(internal(get(first.activity_id)))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        stored.activities[0].object, "post:edited",
        "the retry did not undo the update"
    );
    e.publish
        .delete_activity(internal(pb::DeleteActivityRequest {
            r#ref: by_id(first.activity_id),
        }))
        .await
        .expect("delete");
    let again = e.publish(1, "kept").await;
    assert_eq!((again.activity_id, again.duplicate), (first.activity_id, true));
    let stored = e
        .publish
        .get_activities(internal(get(first.activity_id)))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        stored.activities[0].status,
        feed_proto::common::v1::ActivityStatus::Deleted as i32,
        "a deleted post stays deleted"
    );
    e.stop().await.expect("stop");
}

#[tokio::test]
async fn get_activities_hides_a_blocked_or_blocking_authors_posts_from_an_end_user() {
    let mut e = env().await;
    let by_blocker = e.publish(50, "blocker-post").await.activity_id;
    let by_blocked = e.publish(51, "blocked-post").await.activity_id;
    let by_other = e.publish(52, "other-post").await.activity_id;
    e.graph
        .block(internal(fg::BlockRequest {
            user_id: 50,
            target_user_id: 51,
        }))
        .await
        .expect("block");
    let ids = vec![by_blocker, by_blocked, by_other];
    let get = |user: u64| {
        bff(
            pb::GetActivitiesRequest {
                ids: ids.clone(),
                include_deleted: false,
                viewer_id: 0,
            },
            user,
        )
    };
    let seen = |r: pb::GetActivitiesResponse| (r.activities.iter().map(|a| a.id).collect::<Vec<_>>(), r.missing_ids);
    let blocked = e.publish.get_activities(get(51)).await.expect("as 51").into_inner();
    assert_eq!(
        seen(blocked),
        (vec![by_blocked, by_other], vec![by_blocker]),
        "the blocked user does not get the blocker's post"
    );
    let blocker = e.publish.get_activities(get(50)).await.expect("as 50").into_inner();
    assert_eq!(
        seen(blocker),
        (vec![by_blocker, by_other], vec![by_blocked]),
        "nor the blocker the blocked user's"
    );
    let bystander = e.publish.get_activities(get(53)).await.expect("as 53").into_inner();
    assert_eq!(seen(bystander).0, ids, "a third user sees all three");

    // A service asking on a user's behalf (notify, before a subscription)
    // is answered as that user is; a bff caller may name only its own user.
    let for_user = |viewer_id: u64| pb::GetActivitiesRequest {
        ids: ids.clone(),
        include_deleted: false,
        viewer_id,
    };
    let on_behalf = e
        .publish
        .get_activities(internal(for_user(51)))
        .await
        .expect("for 51")
        .into_inner();
    assert_eq!(seen(on_behalf), (vec![by_blocked, by_other], vec![by_blocker]));
    let err = e
        .publish
        .get_activities(bff(for_user(52), 51))
        .await
        .expect_err("51 asking as 52");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    e.stop().await.expect("stop");
}

/// CompleteJob records the sub-jobs a worker spawned: a malformed one (an
/// empty id once tripped an assertion in the storage library: a panic, the
/// caller's stream reset) is refused by field, and none of the list is
/// written.
#[tokio::test]
async fn complete_job_refuses_malformed_sub_jobs_by_field_and_records_none() {
    use feed_proto::events::v1::{FanoutJob, Job, job};
    let mut e = env().await;
    e.settled().await;
    let fanout = |job_id: &str, feed: &str| Job {
        job_id: job_id.into(),
        kind: Some(job::Kind::Fanout(FanoutJob {
            activity_id: 7,
            feed: feed.into(),
            shard: Some(0),
            actor: 1,
        })),
        ..Job::default()
    };
    let cases = [
        (
            vec![fanout("fan/7/user:1/0", "user:1"), fanout("", "user:1")],
            "spawned[1].job_id",
        ),
        (vec![fanout("fan/7/x/0", "planet:mars")], "spawned[0].fanout.feed"),
        (
            vec![Job {
                job_id: "j".into(),
                ..Job::default()
            }],
            "spawned[0].kind",
        ),
    ];
    for (spawned, field) in cases {
        let err = e
            .publish
            .complete_job(internal(pb::CompleteJobRequest {
                job_id: "fan/7/user:1".into(),
                spawned,
            }))
            .await
            .expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let lag = e
        .publish
        .get_fanout_lag(internal(pb::GetFanoutLagRequest {}))
        .await
        .expect("lag")
        .into_inner();
    assert_eq!(lag.pending_jobs, 0, "no sub-job of a refused list was recorded");
    e.stop().await.expect("stop");
}

/// Membership is checked when a scheduled item is released, not only when
/// it was scheduled: an actor who left the group since posts there no more
/// (the item is dropped, not retried for ever).
#[tokio::test]
async fn a_scheduled_post_into_a_group_its_author_left_is_not_released() {
    let mut e = env().await;
    e.set_member(7, "group:sched", true).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis() as i64;
    let schedule = |n: &str, at: i64| pb::PublishRequest {
        activity: Some(pb::NewActivity {
            to: vec!["group:sched".into()],
            ..post(7, n)
        }),
        publish_at_ms: at,
    };
    e.publish
        .publish(internal(schedule("left", now + 300)))
        .await
        .expect("scheduled as a member");
    e.set_member(7, "group:sched", false).await;
    // A second actor's item due later shows the releaser has run past it.
    e.set_member(8, "group:sched", true).await;
    let marker = e
        .publish
        .publish(internal(pb::PublishRequest {
            activity: Some(pb::NewActivity {
                to: vec!["group:sched".into()],
                ..post(8, "marker")
            }),
            publish_at_ms: now + 600,
        }))
        .await
        .expect("scheduled")
        .into_inner();
    assert!(!marker.schedule_id.is_empty());
    let listed = |actor| pb::ListScheduledRequest {
        actor,
        page_size: 10,
        page_token: String::new(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = e
            .publish
            .list_scheduled(internal(listed(7)))
            .await
            .expect("list")
            .into_inner();
        let other = e
            .publish
            .list_scheduled(internal(listed(8)))
            .await
            .expect("list")
            .into_inner();
        if left.scheduled.is_empty() && other.scheduled.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not released: {left:?} {other:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = e
        .timeline
        .get_feed(internal(feed_proto::timeline::v1::GetFeedRequest {
            feed: "group:sched".into(),
            limit: 10,
            ..Default::default()
        }))
        .await
        .expect("group feed")
        .into_inner();
    let actors: Vec<u64> = page.activities.iter().map(|a| a.actor).collect();
    assert_eq!(actors, [8], "only the member's scheduled post reached the group");
    e.stop().await.expect("stop");
}
