//! Per-user rate limits: a bff user past its bucket gets RESOURCE_EXHAUSTED
//! with a RetryInfo saying when to retry, while other users, the same
//! user's other class of calls and internal callers are still served.

use std::time::Duration;

use feed_e2e::{TestApp, bff, internal};
use feed_proto::followgraph::v1 as fg;
use feed_proto::notify::v1 as nt;
use tonic::Code;

#[tokio::test]
async fn a_user_past_their_quota_is_told_when_to_retry_and_nobody_else_is_held_up() {
    let mut app = TestApp::start(|cfg| {
        cfg.quotas.reads_per_sec = 1.0;
        cfg.quotas.read_burst = 3.0;
        cfg.quotas.writes_per_sec = 1.0;
        cfg.quotas.write_burst = 2.0;
    })
    .await;
    let counts = |user| bff(nt::GetUnreadCountsRequest { user_id: user }, user);
    for n in 0..3 {
        app.notify
            .get_unread_counts(counts(5))
            .await
            .unwrap_or_else(|e| panic!("read {n} within the burst: {e:?}"));
    }
    let refused = app
        .notify
        .get_unread_counts(counts(5))
        .await
        .expect_err("the fourth read at once");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let wait = feed_server::quotas::retry_delay(&refused).expect("RetryInfo in the details");
    assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");

    // Another user, the same user's writes, and the platform's own calls.
    app.notify.get_unread_counts(counts(6)).await.expect("user 6 is served");
    app.graph
        .follow(bff(
            fg::FollowRequest {
                follower_id: 5,
                feed: "user:9".into(),
            },
            5,
        ))
        .await
        .expect("user 5's writes have their own bucket");
    for _ in 0..20 {
        app.notify
            .get_unread_counts(internal(nt::GetUnreadCountsRequest { user_id: 5 }))
            .await
            .expect("internal callers are not limited");
    }

    // After the wait it said, user 5 reads again.
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    app.notify.get_unread_counts(counts(5)).await.expect("refilled");
    app.stop().await.expect("stop");
}
