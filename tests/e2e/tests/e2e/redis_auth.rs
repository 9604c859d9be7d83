//! A Redis that requires a password (`requirepass`, or an ACL user) is
//! reached through the URL's credentials, `redis://[user]:password@host:port`:
//! inboxes, job streams, leases and live logs all work through it, and a
//! wrong password stops the platform at start with a reason that names
//! Redis, never the password.

use std::time::Duration;

use feed_e2e::{Platform, internal};
use feed_proto::followgraph::v1 as fg;
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use feed_proto::publish::v1 as pb;
use feed_proto::publish::v1::publish_service_client::PublishServiceClient;
use feed_proto::timeline::v1 as tl;
use feed_proto::timeline::v1::timeline_service_client::TimelineServiceClient;

const PASSWORD: &str = "s3cret-redis-pass";

#[tokio::test]
async fn the_platform_runs_on_a_redis_that_requires_a_password_and_a_wrong_one_is_refused_unprinted() {
    let redis = feed_testkit::RedisServer::start_with(&["--requirepass", PASSWORD]).expect("redis-server");
    let port = redis.port();

    let wrong = Platform::start_with(|cfg| cfg.redis.url = format!("redis://:not-the-password@127.0.0.1:{port}")).await;
    let err = format!("{:#}", wrong.err().expect("a wrong password stops the start"));
    assert!(err.to_lowercase().contains("redis") || err.contains("auth"), "{err}");
    assert!(!err.contains("not-the-password"), "the password was printed: {err}");

    let platform = Platform::start_with(|cfg| cfg.redis.url = format!("redis://:{PASSWORD}@127.0.0.1:{port}"))
        .await
        .expect("starts with the password");
    let channel = platform.channel.clone();
    let mut graph = FollowGraphServiceClient::new(channel.clone());
    let mut publish = PublishServiceClient::new(channel.clone());
    let mut timeline = TimelineServiceClient::new(channel);
    graph
        .follow(internal(fg::FollowRequest {
            follower_id: 1,
            feed: "user:2".into(),
        }))
        .await
        .expect("follow");
    let first = timeline
        .get_timeline(internal(tl::GetTimelineRequest {
            user_id: 1,
            limit: 10,
            cursor: String::new(),
        }))
        .await
        .expect("a first read makes the inbox live");
    assert!(first.into_inner().items.is_empty());
    let posted = publish
        .publish(internal(pb::PublishRequest {
            activity: Some(pb::NewActivity {
                actor: 2,
                verb: "post".into(),
                object: "post:1".into(),
                foreign_id: "p1".into(),
                ..Default::default()
            }),
            publish_at_ms: 0,
        }))
        .await
        .expect("publish")
        .into_inner()
        .activity_id;
    // Pushed into the inbox by a fanout worker reading the job stream.
    let client = redis::Client::open(format!("redis://:{PASSWORD}@127.0.0.1:{port}")).expect("url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("authenticated connection");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
            .arg(feed_inbox::redis_store::inbox_key(1))
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .expect("zrange");
        if !members.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the post never reached the inbox in Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let page = timeline
        .get_timeline(internal(tl::GetTimelineRequest {
            user_id: 1,
            limit: 10,
            cursor: String::new(),
        }))
        .await
        .expect("read")
        .into_inner();
    let ids: Vec<u64> = page
        .items
        .iter()
        .filter_map(|i| i.activity.as_ref().map(|a| a.id))
        .collect();
    assert_eq!(ids, [posted]);
    platform.stop().await.expect("stop");
}
