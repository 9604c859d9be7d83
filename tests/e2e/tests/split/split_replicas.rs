//! Replicas agree: a write through one replica is seen by the next read
//! through another, and a notification sent through one notify replica
//! reaches a Watch held on the other.

use std::time::Duration;

use feed_e2e::internal;
use feed_e2e::split::{Role, Split};
use feed_proto::followgraph::v1 as fg;
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use feed_proto::notify::v1 as nt;
use feed_proto::notify::v1::notify_service_client::NotifyServiceClient;
use feed_proto::publish::v1 as pb;
use feed_proto::publish::v1::publish_service_client::PublishServiceClient;
use feed_proto::timeline::v1 as tl;
use feed_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_writes_through_one_replica_are_read_through_another_and_watch_crosses_notify_replicas() {
    let split = Split::start(&[]).await;
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
    split.stop().await;
}
