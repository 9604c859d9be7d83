//! The operations runbook's promise: nothing durable lives only in Redis.
//! The whole platform runs on a real redis-server that is flushed mid-run;
//! afterwards timelines rebuild in full on read, notifications are all
//! still there, and new posts, likes and messages flow again. And while
//! Redis cannot be reached, Publish still answers once its write is
//! durable, timelines are read from the outboxes (flagged degraded), and
//! what Publish acknowledged reaches the inboxes after.

use std::time::{Duration, Instant};

use feed_e2e::{TestApp, internal};
use feed_proto::followgraph::v1 as fg;
use feed_proto::notify::v1 as nt;
use feed_proto::publish::v1 as pb;
use feed_proto::timeline::v1 as tl;
use tonic::Code;

feed_e2e::area_env!();

/// Retries while the platform reports UNAVAILABLE (right after the flush the
/// id lease is re-claimed), as a client following the retry policy would.
async fn retrying<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    for _ in 0..200 {
        match call().await {
            Ok(v) => return v,
            Err(s) if s.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(s) => panic!("call failed: {s:?}"),
        }
    }
    panic!("still unavailable after 10 s");
}

impl Env {
    async fn post(&mut self, actor: u64, verb: &str, object: &str) -> u64 {
        let publish = self.publish.clone();
        retrying(|| {
            let mut p = publish.clone();
            let object = object.to_owned();
            let verb = verb.to_owned();
            async move {
                p.publish(internal(pb::PublishRequest {
                    activity: Some(pb::NewActivity {
                        actor,
                        foreign_id: format!("{verb}-{object}"),
                        verb,
                        object,
                        ..Default::default()
                    }),
                    ..Default::default()
                }))
                .await
            }
        })
        .await
        .into_inner()
        .activity_id
    }

    async fn timeline(&mut self, user: u64) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self
                .timeline
                .get_timeline(internal(tl::GetTimelineRequest {
                    user_id: user,
                    limit: 50,
                    cursor: cursor.clone(),
                }))
                .await
                .expect("timeline")
                .into_inner();
            ids.extend(page.items.iter().filter_map(|i| i.activity.as_ref().map(|a| a.id)));
            if page.next_cursor.is_empty() {
                return ids;
            }
            cursor = page.next_cursor;
        }
    }

    /// The ids of `user`'s first page of 50, and whether it was degraded.
    async fn first_page(&mut self, user: u64) -> Result<(Vec<u64>, bool), tonic::Status> {
        let page = self
            .timeline
            .get_timeline(internal(tl::GetTimelineRequest {
                user_id: user,
                limit: 50,
                ..Default::default()
            }))
            .await?
            .into_inner();
        let ids = page
            .items
            .iter()
            .filter_map(|i| i.activity.as_ref().map(|a| a.id))
            .collect();
        Ok((ids, page.degraded))
    }

    async fn notes(&mut self, user: u64) -> Vec<nt::Notification> {
        self.notify
            .list_notifications(internal(nt::ListNotificationsRequest {
                user_id: user,
                limit: 100,
                ..Default::default()
            }))
            .await
            .expect("list")
            .into_inner()
            .notifications
    }

    async fn timeline_becomes(&mut self, user: u64, want: &[u64]) {
        for _ in 0..400 {
            if self.timeline(user).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("user {user}: timeline {:?}, want {want:?}", self.timeline(user).await);
    }

    async fn notes_reach(&mut self, user: u64, what: &str, done: impl Fn(&[nt::Notification]) -> bool) {
        for _ in 0..400 {
            if done(&self.notes(user).await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{what}: not reached: {:?}", self.notes(user).await);
    }

    async fn flush(&self) {
        let mut conn = redis::Client::open(self.redis.url())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("flush");
    }
}

#[tokio::test]
async fn flushing_redis_mid_run_loses_no_item_and_no_notification() {
    let mut e = Env(TestApp::start(|cfg| {
        // The sweeper re-drives jobs the flush took off the streams.
        cfg.publish.sweep_interval_ms = 200;
        cfg.publish.stale_after_ms = 500;
    })
    .await);
    for follower in [2, 3] {
        e.graph
            .follow(internal(fg::FollowRequest {
                follower_id: follower,
                feed: "user:1".into(),
            }))
            .await
            .expect("follow");
    }
    let first = e.post(1, "post", "photo:1").await;
    let second = e.post(1, "post", "photo:2").await;
    // A like is an activity too: it shows in its author's own timeline.
    let like3 = e.post(3, "like", &format!("activity:{first}")).await;
    e.notify
        .send_message(internal(nt::SendMessageRequest {
            event_id: "m-before".into(),
            sender: 3,
            recipient: 2,
            content: "before the flush".into(),
        }))
        .await
        .expect("message");
    e.timeline_becomes(2, &[second, first]).await;
    e.timeline_becomes(3, &[like3, second, first]).await;
    e.notes_reach(1, "the like reminds the author", |l| {
        l.iter().any(|n| n.action == "like")
    })
    .await;

    // Under memory pressure Redis evicts keys one by one: user 2's inbox set
    // goes while its floor stays, user 3's floor goes while its set stays.
    {
        use feed_inbox::redis_store::{floor_key, inbox_key};
        let mut conn = redis::Client::open(e.redis.url())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        for key in [inbox_key(2), floor_key(3)] {
            let n: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.expect("evict");
            assert_eq!(n, 1, "{key} existed");
        }
    }
    assert_eq!(e.timeline(2).await, vec![second, first], "after its set was evicted");
    assert_eq!(
        e.timeline(3).await,
        vec![like3, second, first],
        "after its floor was evicted"
    );

    e.flush().await;

    // Inboxes are gone: the next read rebuilds them from the durable outboxes.
    assert_eq!(e.timeline(2).await, vec![second, first], "after the flush");
    assert_eq!(e.timeline(3).await, vec![like3, second, first], "after the flush");
    // Notifications live in the durable store, not in Redis.
    let kept = e.notes(2).await;
    assert!(kept.iter().any(|n| n.content == "before the flush"), "{kept:?}");
    assert!(e.notes(1).await.iter().any(|n| n.action == "like"));
    // New work flows again: posts fan out, likes become reminds, messages arrive.
    let third = e.post(1, "post", "photo:3").await;
    let like2 = e.post(2, "like", &format!("activity:{first}")).await;
    e.timeline_becomes(2, &[like2, third, second, first]).await;
    e.timeline_becomes(3, &[third, like3, second, first]).await;
    e.notes_reach(1, "a like after the flush joins the group", |l| {
        l.iter().any(|n| n.action == "like" && n.actor_count == 2)
    })
    .await;
}

#[tokio::test]
async fn publish_and_reads_answer_while_redis_is_unreachable_and_nothing_acknowledged_is_lost() {
    let (app, proxy) = TestApp::start_behind_proxy(|cfg| {
        // The sweeper hands over the jobs the outage kept off the streams.
        cfg.publish.sweep_interval_ms = 200;
        cfg.publish.stale_after_ms = 500;
    })
    .await;
    let mut e = Env(app);
    e.graph
        .follow(internal(fg::FollowRequest {
            follower_id: 2,
            feed: "user:1".into(),
        }))
        .await
        .expect("follow");
    let mut acknowledged = vec![e.post(1, "post", "photo:0").await];
    e.timeline_becomes(2, &acknowledged).await;

    // Redis killed (connections cut, new ones closed), then Redis gone
    // silent behind open sockets.
    for (n, fault) in ["refused", "silent"].into_iter().enumerate() {
        match fault {
            "refused" => proxy.refuse(),
            _ => proxy.silence(),
        }
        let start = Instant::now();
        let id = e
            .publish
            .publish(internal(pb::PublishRequest {
                activity: Some(pb::NewActivity {
                    actor: 1,
                    verb: "post".into(),
                    object: format!("photo:{}", n + 1),
                    foreign_id: format!("outage-{n}"),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .unwrap_or_else(|s| panic!("Publish with Redis {fault}: {s:?}"))
            .into_inner()
            .activity_id;
        let took = start.elapsed();
        println!("Publish with Redis {fault}: OK in {took:?}");
        assert!(
            took < Duration::from_secs(3),
            "Publish with Redis {fault} took {took:?}"
        );
        acknowledged.insert(0, id);
        // Reads go on from the durable outboxes, flagged degraded, the new
        // post included (its fanout is pending work).
        let start = Instant::now();
        let (ids, degraded) = e
            .first_page(2)
            .await
            .unwrap_or_else(|s| panic!("GetTimeline with Redis {fault}: {s:?}"));
        println!("GetTimeline with Redis {fault}: degraded in {:?}", start.elapsed());
        assert!(degraded, "with Redis {fault}");
        assert_eq!(ids, acknowledged, "the degraded page with Redis {fault}");
        proxy.forward();
        // The first call on a connection the outage cut may fail
        // (UNAVAILABLE, retried as the retry policy says); then every
        // acknowledged post is there, each once.
        let mut last = None;
        for _ in 0..400 {
            match e.first_page(2).await {
                Ok((ids, _)) if ids == acknowledged => break,
                Ok((ids, _)) => last = Some(ids),
                Err(s) if s.code() == Code::Unavailable => {}
                Err(s) => panic!("timeline after Redis {fault}: {s:?}"),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(
            e.timeline(2).await,
            acknowledged,
            "after Redis {fault} (last read {last:?})"
        );
    }
}
