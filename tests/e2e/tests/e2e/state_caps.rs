//! What one user can pile up is capped: blocks, mutes, scheduled items,
//! subscriptions and configured actions. One past a cap is
//! RESOURCE_EXHAUSTED naming the field; the same change again, and a new
//! one after making room, still work.

use feed_core::{Clock, SystemClock};
use feed_e2e::{TestApp, internal};
use feed_proto::followgraph::v1 as fg;
use feed_proto::notify::v1 as nt;
use feed_proto::publish::v1 as pb;
use tonic::Code;

fn exhausted(r: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let e = r.expect_err(field);
    assert_eq!(e.code(), Code::ResourceExhausted, "{field}: {e:?}");
    assert!(e.message().contains(field), "{field}: {}", e.message());
}

#[tokio::test]
async fn one_past_each_per_user_cap_is_resource_exhausted_naming_its_field() {
    let mut app = TestApp::start(|cfg| {
        cfg.follow_graph.max_blocks = 2;
        cfg.follow_graph.max_mutes = 2;
        cfg.publish.max_scheduled_per_actor = 2;
        cfg.notify.max_subscriptions_per_user = 2;
    })
    .await;
    let block = |target| {
        internal(fg::BlockRequest {
            user_id: 1,
            target_user_id: target,
        })
    };
    app.graph.block(block(2)).await.expect("block 2");
    app.graph.block(block(3)).await.expect("block 3");
    exhausted(app.graph.block(block(4)).await, "target_user_id");
    app.graph.block(block(3)).await.expect("the same block again");
    app.graph
        .unblock(internal(fg::UnblockRequest {
            user_id: 1,
            target_user_id: 3,
        }))
        .await
        .expect("unblock");
    app.graph.block(block(4)).await.expect("room again");

    let mute = |target| {
        internal(fg::MuteRequest {
            user_id: 1,
            target_user_id: target,
        })
    };
    app.graph.mute(mute(5)).await.expect("mute 5");
    app.graph.mute(mute(6)).await.expect("mute 6");
    exhausted(app.graph.mute(mute(7)).await, "target_user_id");

    let later = SystemClock.now_ms() as i64 + 86_400_000;
    let schedule = |n: u32| {
        internal(pb::PublishRequest {
            activity: Some(pb::NewActivity {
                actor: 1,
                verb: "post".into(),
                object: format!("post:{n}"),
                foreign_id: format!("later-{n}"),
                ..Default::default()
            }),
            publish_at_ms: later,
        })
    };
    app.publish.publish(schedule(1)).await.expect("schedule 1");
    app.publish.publish(schedule(2)).await.expect("schedule 2");
    exhausted(app.publish.publish(schedule(3)).await, "publish_at_ms");

    let subscribe = |object: &str| {
        internal(nt::SubscribeRequest {
            subscription: Some(nt::Subscription {
                user_id: 1,
                object_id: object.into(),
                object_type: "photo".into(),
                reason: "follow_object".into(),
                created_at_ms: 0,
            }),
        })
    };
    app.notify.subscribe(subscribe("a")).await.expect("subscribe a");
    app.notify.subscribe(subscribe("b")).await.expect("subscribe b");
    exhausted(app.notify.subscribe(subscribe("c")).await, "subscription");
    app.notify
        .subscribe(subscribe("b"))
        .await
        .expect("the same subscription again");

    let configure = |names: std::ops::Range<u32>| {
        internal(nt::UpdateSubscriptionConfigRequest {
            user_id: 1,
            actions: names.map(|n| (format!("act{n}"), true)).collect(),
            policy: None,
        })
    };
    app.notify
        .update_subscription_config(configure(0..100))
        .await
        .expect("100 actions");
    exhausted(
        app.notify.update_subscription_config(configure(100..101)).await,
        "actions",
    );
    app.stop().await.expect("stop");
}
