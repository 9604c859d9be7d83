//! Home timelines end to end: real gRPC, a real redis-server for inboxes.

use std::time::Duration;

use feed_e2e::{TestApp, bff, internal};
use feed_proto::common::v1::DeliveryMode;
use feed_proto::followgraph::v1 as fg;
use feed_proto::publish::v1 as pb;
use feed_proto::timeline::v1 as tl;
use tonic::Code;

feed_e2e::area_env!();

async fn env_with(tune: impl FnOnce(&mut feed_server::FeedConfig)) -> Env {
    Env(TestApp::start(tune).await)
}

impl Env {
    async fn post(&mut self, actor: u64, fid: &str, to: &[&str]) -> u64 {
        self.publish
            .publish(internal(pb::PublishRequest {
                activity: Some(pb::NewActivity {
                    actor,
                    verb: "post".into(),
                    object: format!("post:{fid}"),
                    foreign_id: fid.into(),
                    to: to.iter().map(|s| s.to_string()).collect(),
                    ..pb::NewActivity::default()
                }),
                publish_at_ms: 0,
            }))
            .await
            .expect("publish")
            .into_inner()
            .activity_id
    }

    async fn page(&mut self, user: u64, limit: u32, cursor: &str) -> tl::GetTimelineResponse {
        self.timeline
            .get_timeline(bff(
                tl::GetTimelineRequest {
                    user_id: user,
                    limit,
                    cursor: cursor.into(),
                },
                user,
            ))
            .await
            .expect("timeline")
            .into_inner()
    }

    async fn ids(&mut self, user: u64) -> Vec<u64> {
        self.page(user, 100, "")
            .await
            .items
            .iter()
            .map(|i| i.activity.as_ref().expect("a").id)
            .collect()
    }
}

#[tokio::test]
async fn a_post_shows_in_its_authors_timeline_right_after_publish() {
    let mut e = env_with(|_| {}).await;
    let id = e.post(1, "mine", &[]).await;
    let page = e.page(1, 10, "").await;
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].activity.as_ref().expect("a").id, id);
    assert_eq!(page.items[0].source_feed, "user:1");
    e.0.stop().await.expect("stop");
}

#[tokio::test]
async fn a_cold_users_first_read_rebuilds_and_is_complete() {
    let mut e = env_with(|_| {}).await;
    e.follow(2, "user:1").await;
    e.follow(2, "tag:rust").await;
    let a = e.post(1, "a", &[]).await;
    let b = e.post(3, "b", &["tag:rust"]).await;
    e.settled().await;
    let want = vec![(b, "tag:rust".to_owned()), (a, "user:1".to_owned())];
    let page = e.page(2, 10, "").await;
    assert!(page.rebuilt, "the first read says it found no inbox");
    let got = |page: &tl::GetTimelineResponse| -> Vec<(u64, String)> {
        page.items
            .iter()
            .map(|i| (i.activity.as_ref().expect("a").id, i.source_feed.clone()))
            .collect()
    };
    assert_eq!(got(&page), want);
    // The rebuild runs behind the first read; every page until and after
    // it lands is the same.
    let mut reads = 0;
    loop {
        let page = e.page(2, 10, "").await;
        assert_eq!(got(&page), want, "read {reads}, rebuilt: {}", page.rebuilt);
        if !page.rebuilt {
            break;
        }
        reads += 1;
        assert!(reads < 500, "the inbox was never rebuilt");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    e.0.stop().await.expect("stop");
}

#[tokio::test]
async fn a_celebrity_post_reaches_hot_and_cold_followers_exactly_once() {
    let mut e = env_with(|cfg| cfg.follow_graph.celebrity_threshold = 2).await;
    e.follow(2, "user:1").await;
    e.follow(3, "user:1").await;
    // User 2 is hot (has read before), user 3 is cold.
    e.page(2, 10, "").await;
    let id = e.post(1, "celeb", &[]).await;
    e.settled().await;
    for user in [2, 3] {
        let page = e.page(user, 10, "").await;
        let ids: Vec<u64> = page.items.iter().map(|i| i.activity.as_ref().expect("a").id).collect();
        assert_eq!(ids, vec![id], "user {user}");
        assert_eq!(page.items[0].delivery_mode, DeliveryMode::Pull as i32);
    }
    e.0.stop().await.expect("stop");
}

#[tokio::test]
async fn unfollow_hides_items_before_the_purge_job_runs() {
    // No workers: the purge job never runs, only read-time filtering acts.
    let mut e = env_with(|cfg| cfg.fanout.workers = 0).await;
    e.follow(2, "user:1").await;
    e.page(2, 10, "").await;
    let id = e.post(1, "p", &[]).await;
    // Without workers nothing is pushed; an admin rebuild unions the item in.
    e.publish
        .rebuild_inbox(internal(pb::RebuildInboxRequest { user_id: 2 }))
        .await
        .expect("rebuild");
    assert_eq!(e.ids(2).await, vec![id]);
    e.graph
        .unfollow(internal(fg::UnfollowRequest {
            follower_id: 2,
            feed: "user:1".into(),
        }))
        .await
        .expect("unfollow");
    assert!(e.ids(2).await.is_empty());
    e.0.stop().await.expect("stop");
}

#[tokio::test]
async fn blocked_and_muted_authors_are_hidden_and_deleted_items_vanish() {
    let mut e = env_with(|_| {}).await;
    for feed in ["user:1", "user:3", "user:4"] {
        e.follow(2, feed).await;
    }
    e.page(2, 10, "").await;
    let a = e.post(1, "a", &[]).await;
    let b = e.post(3, "b", &[]).await;
    let c = e.post(4, "c", &[]).await;
    e.settled().await;
    assert_eq!(e.ids(2).await, vec![c, b, a]);
    e.graph
        .mute(internal(fg::MuteRequest {
            user_id: 2,
            target_user_id: 3,
        }))
        .await
        .expect("mute");
    e.graph
        .block(internal(fg::BlockRequest {
            user_id: 4,
            target_user_id: 2,
        }))
        .await
        .expect("block");
    e.publish
        .delete_activity(internal(pb::DeleteActivityRequest {
            r#ref: Some(pb::ActivityRef {
                r#ref: Some(pb::activity_ref::Ref::Id(a)),
            }),
        }))
        .await
        .expect("delete");
    assert!(
        e.ids(2).await.is_empty(),
        "muted, blocked and deleted are all hidden at once"
    );
    e.0.stop().await.expect("stop");
}

#[tokio::test]
async fn paging_past_the_inbox_cap_continues_from_the_outboxes_without_repeats() {
    let mut e = env_with(|cfg| cfg.inbox.cap = 5).await;
    e.follow(2, "user:1").await;
    e.follow(2, "user:3").await;
    e.page(2, 10, "").await;
    let mut posted = Vec::new();
    for n in 0..13 {
        let actor = if n % 3 == 0 { 3 } else { 1 };
        posted.push(e.post(actor, &format!("p{n}"), &[]).await);
    }
    e.settled().await;
    posted.reverse();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = e.page(2, 4, &cursor).await;
        seen.extend(page.items.iter().map(|i| i.activity.as_ref().expect("a").id));
        // New items arriving at the head never shift the pages below.
        if seen.len() == 4 {
            e.post(1, "late", &[]).await;
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(seen, posted);
    e.0.stop().await.expect("stop");
}

#[tokio::test]
async fn reading_another_users_timeline_with_a_bff_token_is_denied() {
    let mut e = env_with(|_| {}).await;
    let err = e
        .timeline
        .get_timeline(bff(
            tl::GetTimelineRequest {
                user_id: 2,
                limit: 10,
                cursor: String::new(),
            },
            3,
        ))
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = e
        .timeline
        .get_timeline(bff(
            tl::GetTimelineRequest {
                user_id: 3,
                limit: 1000,
                cursor: "garbage!".into(),
            },
            3,
        ))
        .await
        .expect_err("bad input");
    assert_eq!(err.code(), Code::InvalidArgument);
    e.0.stop().await.expect("stop");
}

#[tokio::test]
async fn a_feed_page_shows_what_its_viewer_may_see() {
    let mut e = env_with(|_| {}).await;
    let public = e.post(1, "pub", &["tag:rust"]).await;
    e.publish
        .publish(internal(pb::PublishRequest {
            activity: Some(pb::NewActivity {
                actor: 1,
                verb: "post".into(),
                object: "post:f".into(),
                foreign_id: "followers-only".into(),
                to: vec!["tag:rust".into()],
                visibility: feed_proto::common::v1::Visibility::Followers as i32,
                ..pb::NewActivity::default()
            }),
            publish_at_ms: 0,
        }))
        .await
        .expect("publish");
    let page = e
        .timeline
        .get_feed(bff(
            tl::GetFeedRequest {
                feed: "tag:rust".into(),
                viewer_id: 5,
                limit: 10,
                cursor: String::new(),
            },
            5,
        ))
        .await
        .expect("feed")
        .into_inner();
    let ids: Vec<u64> = page.activities.iter().map(|a| a.id).collect();
    assert_eq!(ids, vec![public], "a non-follower does not see followers-only items");
    e.0.stop().await.expect("stop");
}

impl Env {
    async fn block(&mut self, user: u64, target: u64, on: bool) {
        let req = fg::BlockRequest {
            user_id: user,
            target_user_id: target,
        };
        if on {
            self.graph.block(internal(req)).await.expect("block");
        } else {
            let req = fg::UnblockRequest {
                user_id: user,
                target_user_id: target,
            };
            self.graph.unblock(internal(req)).await.expect("unblock");
        }
    }

    async fn mute(&mut self, user: u64, target: u64, on: bool) {
        if on {
            let req = fg::MuteRequest {
                user_id: user,
                target_user_id: target,
            };
            self.graph.mute(internal(req)).await.expect("mute");
        } else {
            let req = fg::UnmuteRequest {
                user_id: user,
                target_user_id: target,
            };
            self.graph.unmute(internal(req)).await.expect("unmute");
        }
    }

    /// Waits for the edge log to become jobs and every job to finish, then
    /// reads: what a reader sees once nothing is pending.
    async fn ids_when_idle(&mut self, user: u64) -> Vec<u64> {
        // The edge log is turned into jobs every 200 ms.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.settled().await;
        self.ids(user).await
    }

    async fn feed(&mut self, feed: &str, viewer: u64) -> Vec<u64> {
        let req = tl::GetFeedRequest {
            feed: feed.into(),
            viewer_id: viewer,
            limit: 50,
            cursor: String::new(),
        };
        let req = if viewer == 0 { internal(req) } else { bff(req, viewer) };
        let page = self.timeline.get_feed(req).await.expect("feed").into_inner();
        page.activities.iter().map(|a| a.id).collect()
    }
}

#[tokio::test]
async fn lifting_a_block_either_way_brings_back_items_that_came_through_a_tag() {
    let mut e = env_with(|_| {}).await;
    e.follow(10, "tag:x").await;
    e.page(10, 10, "").await;
    let mut posts: Vec<u64> = Vec::new();
    for n in 0..3 {
        posts.push(e.post(11, &format!("x{n}"), &["tag:x"]).await);
    }
    posts.reverse();
    assert_eq!(e.ids_when_idle(10).await, posts);
    for (blocker, blocked) in [(10, 11), (11, 10)] {
        e.block(blocker, blocked, true).await;
        assert!(e.ids(10).await.is_empty(), "hidden while {blocker} blocks {blocked}");
        e.block(blocker, blocked, false).await;
        assert_eq!(
            e.ids_when_idle(10).await,
            posts,
            "back once {blocker} unblocks {blocked}, with no job pending"
        );
    }
    e.0.stop().await.expect("stop");
}

#[tokio::test]
async fn lifting_a_mute_brings_back_items_that_came_through_a_group() {
    let mut e = env_with(|_| {}).await;
    e.follow(10, "group:g").await;
    e.follow(11, "group:g").await;
    e.set_member(11, "group:g", true).await;
    e.page(10, 10, "").await;
    let a = e.post(11, "g0", &["group:g"]).await;
    let b = e.post(11, "g1", &["group:g"]).await;
    assert_eq!(e.ids_when_idle(10).await, vec![b, a]);
    e.mute(10, 11, true).await;
    assert!(e.ids_when_idle(10).await.is_empty(), "hidden while muted");
    e.mute(10, 11, false).await;
    assert_eq!(e.ids_when_idle(10).await, vec![b, a], "back once unmuted");
    e.0.stop().await.expect("stop");
}

#[tokio::test]
async fn feed_pages_hide_muted_authors_except_on_their_profile_and_deny_lists_from_anonymous_readers() {
    let mut e = env_with(|_| {}).await;
    let open = e.post(11, "open", &["tag:y"]).await;
    let denied = e
        .publish
        .publish(internal(pb::PublishRequest {
            activity: Some(pb::NewActivity {
                actor: 12,
                verb: "post".into(),
                object: "post:deny".into(),
                foreign_id: "deny".into(),
                to: vec!["tag:y".into()],
                visibility: feed_proto::common::v1::Visibility::DenyList as i32,
                deny_user_ids: vec![13],
                ..pb::NewActivity::default()
            }),
            publish_at_ms: 0,
        }))
        .await
        .expect("publish")
        .into_inner()
        .activity_id;
    assert_eq!(e.feed("tag:y", 10).await, vec![denied, open]);
    assert_eq!(e.feed("tag:y", 13).await, vec![open], "the denied user");
    assert_eq!(e.feed("tag:y", 0).await, vec![open], "anonymous: public items only");
    e.mute(10, 11, true).await;
    assert_eq!(e.feed("tag:y", 10).await, vec![denied], "muted in a tag feed");
    assert_eq!(
        e.feed("user:11", 10).await,
        vec![open],
        "the muted user's profile stays readable"
    );
    e.block(10, 12, true).await;
    assert!(e.feed("user:12", 10).await.is_empty(), "a block hides even the profile");
    e.0.stop().await.expect("stop");
}
