//! Replicas agree: a write through one replica is seen by the next read
//! through another, and a notification sent through one notify replica
//! reaches a Watch held on the other.

use std::time::Duration;

use feed_e2e::internal;
use feed_e2e::split::{Role, Split, Topology};
use feed_proto::followgraph::v1 as fg;
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use feed_proto::notify::v1 as nt;
use feed_proto::notify::v1::notify_service_client::NotifyServiceClient;
use feed_proto::publish::v1 as pb;
use feed_proto::publish::v1::publish_service_client::PublishServiceClient;
use feed_proto::timeline::v1 as tl;
use feed_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
use feed_server::config::ClientsConfig;
use tokio_stream::StreamExt;

use crate::Clients;

async fn home(split: &Split, replica: usize, user: u64) -> Vec<u64> {
    TimelineServiceClient::new(split.channel(Role::Timeline, replica))
        .get_timeline(internal(tl::GetTimelineRequest {
            user_id: user,
            limit: 50,
            cursor: String::new(),
        }))
        .await
        .expect("timeline")
        .into_inner()
        .items
        .iter()
        .filter_map(|i| i.activity.as_ref().map(|a| a.id))
        .collect()
}

async fn post(split: &Split, replica: usize, actor: u64, n: u32) -> u64 {
    PublishServiceClient::new(split.channel(Role::Publish, replica % split.count(Role::Publish)))
        .publish(internal(pb::PublishRequest {
            activity: Some(pb::NewActivity {
                actor,
                verb: "post".into(),
                object: format!("o{n}"),
                foreign_id: format!("ryw{actor}-{n}"),
                ..pb::NewActivity::default()
            }),
            publish_at_ms: 0,
        }))
        .await
        .expect("publish")
        .into_inner()
        .activity_id
}

/// Every gRPC hop here, the services' between themselves and the test's,
/// is over mutual TLS (`Split::start_with_tls`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_over_mutual_tls_writes_through_one_replica_are_read_through_another_and_watch_crosses_notify_replicas() {
    // A small fanout budget for the flood at the end (the steps before stay under it).
    let split = Split::start_with_tls(
        Topology::default_for_store(),
        &[("FEED__FANOUT__ACTOR_BUDGET_PER_MINUTE", "20")],
    )
    .await;
    callers_without_the_platforms_certificate_are_refused(&split).await;
    let mut c = Clients::any(&split);
    let (reader, author) = (1u64, 2u64);
    // The reader's inbox is live, then the follow goes through the last
    // follow-graph replica.
    home(&split, 0, reader).await;
    let last_graph = split.count(Role::FollowGraph) - 1;
    FollowGraphServiceClient::new(split.channel(Role::FollowGraph, last_graph))
        .follow(internal(fg::FollowRequest {
            follower_id: reader,
            feed: format!("user:{author}"),
        }))
        .await
        .expect("follow");
    c.settled().await;

    // With the fanout workers frozen, nothing reaches an inbox: reads must
    // merge the pending work, whichever replicas wrote and read.
    split.pause(Role::FanoutWorker);
    for n in 0..4u32 {
        let writer = n as usize;
        let id = post(&split, writer, author, n).await;
        let own = post(&split, writer + 1, reader, n).await;
        for r in 0..split.count(Role::Timeline) {
            let seen = home(&split, r, reader).await;
            assert!(
                seen.contains(&id) && seen.contains(&own),
                "post {id} and own {own} (written via publish[{}]) missing via timeline[{r}]: {seen:?}",
                writer % split.count(Role::Publish)
            );
        }
        // A delete through the other publish replica hides it at once.
        PublishServiceClient::new(split.channel(Role::Publish, (writer + 1) % split.count(Role::Publish)))
            .delete_activity(internal(pb::DeleteActivityRequest {
                r#ref: Some(pb::ActivityRef {
                    r#ref: Some(pb::activity_ref::Ref::Id(id)),
                }),
            }))
            .await
            .expect("delete");
        for r in 0..split.count(Role::Timeline) {
            assert!(
                !home(&split, r, reader).await.contains(&id),
                "deleted {id} shown via timeline[{r}]"
            );
        }
    }
    split.resume(Role::FanoutWorker);
    c.settled().await;

    // A Watch on the last notify replica sees a message sent through the first.
    let last_notify = split.count(Role::Notify) - 1;
    if last_notify == 0 {
        eprintln!("one notify replica (embedded store): the cross-replica Watch needs FEED__SCYLLA__NODES");
        assert!(
            std::env::var_os("FEED_REQUIRE_CQL").is_none(),
            "FEED_REQUIRE_CQL is set but the split deployment ran without a CQL node"
        );
    }
    let mut watch = NotifyServiceClient::new(split.channel(Role::Notify, last_notify))
        .watch(internal(nt::WatchRequest {
            user_id: reader,
            resume_after: String::new(),
        }))
        .await
        .expect("watch")
        .into_inner();
    let sent = NotifyServiceClient::new(split.channel(Role::Notify, 0))
        .send_message(internal(nt::SendMessageRequest {
            event_id: "split-watch-1".into(),
            sender: author,
            recipient: reader,
            content: "across replicas".into(),
        }))
        .await
        .expect("send")
        .into_inner()
        .notification_id;
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(ev) = watch.next().await {
            let ev = ev.expect("watch event");
            if let Some(nt::watch_event::Event::Notification(n)) = ev.event {
                return n.id;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("the message reaches the other replica's Watch");
    assert_eq!(got, sent);

    a_flood_waits_behind_ordinary_work(&split, &mut c).await;
    split.stop().await;
}

/// A plaintext call, and a TLS call without a client certificate, to a
/// replica serving mutual TLS fail; with the certificate it answers.
async fn callers_without_the_platforms_certificate_are_refused(split: &Split) {
    let pki = split.tls().expect("TLS");
    let addr = split.addr(Role::Publish, 0);
    let lag = |channel| async move {
        PublishServiceClient::new(channel)
            .get_fanout_lag(internal(pb::GetFanoutLagRequest {}))
            .await
    };
    let plain = feed_server::client::balanced(&format!("http://{addr}")).expect("channel");
    assert!(lag(plain).await.is_err(), "a plaintext call was answered");
    let anonymous = feed_server::client::Dial::from_config(&ClientsConfig {
        tls_ca: pki.ca(),
        ..ClientsConfig::default()
    })
    .expect("dial")
    .channel(&format!("https://{addr}"))
    .expect("channel");
    assert!(
        lag(anonymous).await.is_err(),
        "a call without a client certificate was answered"
    );
    lag(split.channel(Role::Publish, 0))
        .await
        .expect("a call with the certificate");
}

/// One actor floods (300 posts, past their fanout budget of 20 a minute)
/// while the fanout workers are stopped; then an ordinary author posts
/// once. Once the workers run, the ordinary post reaches its follower's
/// inbox while most of the flood is still waiting: the flood's jobs travel
/// in the bulk lane. In one FIFO the ordinary post came after all 300.
async fn a_flood_waits_behind_ordinary_work(split: &Split, c: &mut Clients) {
    let (flooder, fan, author, reader) = (50u64, 51u64, 52u64, 53u64);
    for (follower, feed) in [(fan, flooder), (reader, author)] {
        home(split, 0, follower).await;
        c.graph
            .follow(internal(fg::FollowRequest {
                follower_id: follower,
                feed: format!("user:{feed}"),
            }))
            .await
            .expect("follow");
    }
    c.settled().await;
    let mut redis = feed_redis::client(&split.redis.url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    split.pause(Role::FanoutWorker);
    let publish = c.publish.clone();
    futures::StreamExt::for_each_concurrent(futures::stream::iter(0..300u32), 16, |n| {
        let mut p = publish.clone();
        async move {
            p.publish(internal(pb::PublishRequest {
                activity: Some(pb::NewActivity {
                    actor: flooder,
                    verb: "post".into(),
                    object: format!("flood{n}"),
                    foreign_id: format!("flood-{n}"),
                    ..pb::NewActivity::default()
                }),
                publish_at_ms: 0,
            }))
            .await
            .expect("a flood is accepted, not refused");
        }
    })
    .await;
    let ordinary = post(split, 0, author, 99).await;
    let (fast, bulk): (u64, u64) = redis::pipe()
        .xlen("feed:jobs")
        .xlen("feed:jobs:bulk")
        .query_async(&mut redis)
        .await
        .expect("xlen");
    // Each post past the budget: its fanout job and its event job.
    assert!(
        bulk >= 2 * 250,
        "the flood past its budget is in the bulk lane: {bulk} entries"
    );
    assert!(fast > 0);
    split.resume(Role::FanoutWorker);
    let member = ordinary.to_be_bytes();
    let flood_delivered = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (landed, fan_inbox): (Option<f64>, u64) = redis::pipe()
                .zscore(feed_inbox::redis_store::inbox_key(reader), &member[..])
                .zcard(feed_inbox::redis_store::inbox_key(fan))
                .query_async(&mut redis)
                .await
                .expect("inboxes");
            if landed.is_some() {
                // Less the live mark.
                return fan_inbox.saturating_sub(1);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the ordinary post reaches its follower's inbox");
    eprintln!("the ordinary post landed after {flood_delivered} of the flood's 300 posts");
    assert!(
        flood_delivered < 150,
        "the ordinary post waited for {flood_delivered} of the flood's 300 posts"
    );
    c.settled().await;
}

/// An activity of about the largest size publish accepts: the fields that
/// make its size (allow and deny lists, `extra`, object, target) at their
/// caps. No `to` feeds or mentions: they add a few hundred bytes but a
/// fanout job per feed and a remind per mention, which is not what this
/// test measures.
fn maximum_size_activity(actor: u64, reader: u64, n: u32) -> pb::NewActivity {
    let mut allow: Vec<u64> = (1..1000).map(|i| u64::MAX / 4 - i).collect();
    allow.push(reader);
    pb::NewActivity {
        actor,
        verb: "post".into(),
        object: "\u{1D11E}".repeat(256),
        target: "\u{1D11E}".repeat(256),
        foreign_id: format!("max-{n}-{}", "f".repeat(100)),
        visibility: feed_proto::common::v1::Visibility::AllowList as i32,
        allow_user_ids: allow,
        deny_user_ids: (1..=1000).map(|i| u64::MAX / 2 - i).collect(),
        extra: format!("{{\"x\":\"{}\"}}", "y".repeat(8 * 1024 - 10)).into_bytes(),
        ..pb::NewActivity::default()
    }
}

/// 150 maximum-size activities in one feed (about 31 KB each; 135 of them
/// passed tonic's default 4 MiB): every page of 100 reads, in
/// the home timeline and the feed itself (hydration is chunked under the
/// message limit every server and client sets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_pages_of_maximum_size_activities_are_served() {
    let split = Split::start(&[]).await;
    let mut c = Clients::any(&split);
    let (reader, author) = (7u64, 8u64);
    home(&split, 0, reader).await;
    c.graph
        .follow(internal(fg::FollowRequest {
            follower_id: reader,
            feed: format!("user:{author}"),
        }))
        .await
        .expect("follow");
    c.settled().await;
    for n in 0..150 {
        c.publish
            .publish(internal(pb::PublishRequest {
                activity: Some(maximum_size_activity(author, reader, n)),
                publish_at_ms: 0,
            }))
            .await
            .expect("a maximum-size activity is accepted");
    }
    // No waiting for the fanout: reads merge what is still pending.
    let big = 32 * 1024 * 1024;
    let mut timeline = TimelineServiceClient::new(split.any(Role::Timeline)).max_decoding_message_size(big);
    let page = timeline
        .get_timeline(internal(tl::GetTimelineRequest {
            user_id: reader,
            limit: 100,
            cursor: String::new(),
        }))
        .await
        .expect("a home page of 100 maximum-size activities")
        .into_inner();
    assert_eq!(page.items.len(), 100);
    let rest = timeline
        .get_timeline(internal(tl::GetTimelineRequest {
            user_id: reader,
            limit: 100,
            cursor: page.next_cursor,
        }))
        .await
        .expect("the next page")
        .into_inner();
    assert_eq!(rest.items.len(), 50);
    let feed = timeline
        .get_feed(internal(tl::GetFeedRequest {
            feed: format!("user:{author}"),
            viewer_id: reader,
            limit: 100,
            cursor: String::new(),
        }))
        .await
        .expect("a feed page of 100 maximum-size activities")
        .into_inner();
    assert_eq!(feed.activities.len(), 100);
    split.stop().await;
}
