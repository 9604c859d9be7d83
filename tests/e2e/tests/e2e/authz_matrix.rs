//! Every RPC × every way of calling it without the right to: the expected
//! code each time. The RPCs come from the descriptor set the servers'
//! reflection serves, so an RPC added without a row in [`ACCESS`] fails
//! the test instead of going unchecked.

use std::collections::{BTreeMap, BTreeSet};

use tonic::Code;

use feed_e2e::raw::{Descriptors, Headers, Rpc, call};
use feed_e2e::{BFF_TOKEN, INTERNAL_TOKEN, TestApp};

/// Who may call an RPC.
#[derive(Debug, Clone, Copy)]
enum Access {
    /// Internal tokens only: a bff token gets PERMISSION_DENIED.
    Internal,
    /// A bff token only for its own user, named by this field path.
    OwnUser(&'static str),
    /// Any authenticated caller.
    Open,
}

/// Every RPC of the platform and who may call it.
const ACCESS: &[(&str, Access)] = &[
    (
        "feed.followgraph.v1.FollowGraphService/Follow",
        Access::OwnUser("follower_id"),
    ),
    (
        "feed.followgraph.v1.FollowGraphService/Unfollow",
        Access::OwnUser("follower_id"),
    ),
    (
        "feed.followgraph.v1.FollowGraphService/Block",
        Access::OwnUser("user_id"),
    ),
    (
        "feed.followgraph.v1.FollowGraphService/Unblock",
        Access::OwnUser("user_id"),
    ),
    (
        "feed.followgraph.v1.FollowGraphService/Mute",
        Access::OwnUser("user_id"),
    ),
    (
        "feed.followgraph.v1.FollowGraphService/Unmute",
        Access::OwnUser("user_id"),
    ),
    (
        "feed.followgraph.v1.FollowGraphService/GetRelationships",
        Access::OwnUser("user_id"),
    ),
    ("feed.followgraph.v1.FollowGraphService/ListFollowers", Access::Open),
    ("feed.followgraph.v1.FollowGraphService/ListFollowing", Access::Open),
    ("feed.followgraph.v1.FollowGraphService/GetCounts", Access::Open),
    (
        "feed.followgraph.v1.FollowGraphService/StreamFollowers",
        Access::Internal,
    ),
    (
        "feed.followgraph.v1.FollowGraphService/ListFollowerShards",
        Access::Internal,
    ),
    ("feed.followgraph.v1.FollowGraphService/PageFollowers", Access::Internal),
    (
        "feed.followgraph.v1.FollowGraphService/GetEdgeVersions",
        Access::Internal,
    ),
    (
        "feed.followgraph.v1.FollowGraphService/GetGraphVersions",
        Access::Internal,
    ),
    (
        "feed.followgraph.v1.FollowGraphService/ListEdgeChanges",
        Access::Internal,
    ),
    ("feed.followgraph.v1.FollowGraphService/SetMembership", Access::Internal),
    ("feed.followgraph.v1.FollowGraphService/ListMembers", Access::Internal),
    (
        "feed.publish.v1.PublishService/Publish",
        Access::OwnUser("activity.actor"),
    ),
    (
        "feed.publish.v1.PublishService/UpdateActivity",
        Access::OwnUser("ref.foreign.actor"),
    ),
    (
        "feed.publish.v1.PublishService/DeleteActivity",
        Access::OwnUser("ref.foreign.actor"),
    ),
    (
        "feed.publish.v1.PublishService/GetActivities",
        Access::OwnUser("viewer_id"),
    ),
    ("feed.publish.v1.PublishService/ListScheduled", Access::OwnUser("actor")),
    (
        "feed.publish.v1.PublishService/CancelScheduled",
        Access::OwnUser("actor"),
    ),
    ("feed.publish.v1.PublishService/RebuildInbox", Access::Internal),
    ("feed.publish.v1.PublishService/RerunFanout", Access::Internal),
    ("feed.publish.v1.PublishService/ListDeadLetters", Access::Internal),
    ("feed.publish.v1.PublishService/ReplayDeadLetters", Access::Internal),
    ("feed.publish.v1.PublishService/GetFanoutLag", Access::Internal),
    ("feed.publish.v1.PublishService/GetJob", Access::Internal),
    ("feed.publish.v1.PublishService/CompleteJob", Access::Internal),
    ("feed.publish.v1.PublishService/FailJob", Access::Internal),
    ("feed.publish.v1.PublishService/ListOutbox", Access::Internal),
    ("feed.publish.v1.PublishService/ReadOutboxes", Access::Internal),
    ("feed.publish.v1.PublishService/GetPendingWork", Access::Internal),
    ("feed.publish.v1.PublishService/ReadHome", Access::Internal),
    ("feed.publish.v1.PublishService/ReadHomes", Access::Internal),
    (
        "feed.timeline.v1.TimelineService/GetTimeline",
        Access::OwnUser("user_id"),
    ),
    ("feed.timeline.v1.TimelineService/GetFeed", Access::OwnUser("viewer_id")),
    ("feed.notify.v1.NotifyService/CreateAnnounce", Access::Internal),
    ("feed.notify.v1.NotifyService/CreateRemind", Access::Internal),
    ("feed.notify.v1.NotifyService/SendMessage", Access::OwnUser("sender")),
    (
        "feed.notify.v1.NotifyService/Subscribe",
        Access::OwnUser("subscription.user_id"),
    ),
    ("feed.notify.v1.NotifyService/Unsubscribe", Access::OwnUser("user_id")),
    (
        "feed.notify.v1.NotifyService/ListSubscriptions",
        Access::OwnUser("user_id"),
    ),
    (
        "feed.notify.v1.NotifyService/GetSubscriptionConfig",
        Access::OwnUser("user_id"),
    ),
    (
        "feed.notify.v1.NotifyService/UpdateSubscriptionConfig",
        Access::OwnUser("user_id"),
    ),
    (
        "feed.notify.v1.NotifyService/ListNotifications",
        Access::OwnUser("user_id"),
    ),
    (
        "feed.notify.v1.NotifyService/GetUnreadCounts",
        Access::OwnUser("user_id"),
    ),
    ("feed.notify.v1.NotifyService/MarkRead", Access::OwnUser("user_id")),
    ("feed.notify.v1.NotifyService/MarkSeen", Access::OwnUser("user_id")),
    ("feed.notify.v1.NotifyService/Watch", Access::OwnUser("user_id")),
    ("feed.notify.v1.NotifyService/RegisterUser", Access::Internal),
];

/// The user a bff caller acts as, and the one it must not act for.
const ME: u64 = 7;
const OTHER: u64 = 8;

/// One way of calling: the metadata sent.
#[derive(Debug, Clone)]
struct Identity {
    what: &'static str,
    headers: Headers,
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

fn user(id: &str) -> (&'static str, String) {
    ("x-feed-user-id", id.to_owned())
}

/// The calls every RPC refuses with UNAUTHENTICATED, whatever it does.
fn unauthenticated() -> Vec<Identity> {
    let bff_as = |what, id: &str| Identity {
        what,
        headers: vec![bearer(BFF_TOKEN), user(id)],
    };
    vec![
        Identity {
            what: "no token",
            headers: vec![],
        },
        Identity {
            what: "an unknown token",
            headers: vec![bearer("not-a-token")],
        },
        Identity {
            what: "a token not sent as Bearer",
            headers: vec![("authorization", format!("Basic {BFF_TOKEN}"))],
        },
        Identity {
            what: "a bff token without a user",
            headers: vec![bearer(BFF_TOKEN)],
        },
        bff_as("a bff token as user 0", "0"),
        bff_as("a bff token as user -1", "-1"),
        bff_as("a bff token as user ' 7'", " 7"),
        bff_as("a bff token as user 2^64", "18446744073709551616"),
        bff_as("a bff token as user 2^63 (past the largest id)", "9223372036854775808"),
        Identity {
            what: "a bff token naming two users",
            headers: vec![bearer(BFF_TOKEN), user("7"), user("8")],
        },
    ]
}

/// Every RPC the descriptor set has, each way it may not be called: the
/// code is UNAUTHENTICATED without a valid identity, PERMISSION_DENIED for
/// a bff token on an internal RPC or acting for another user, and neither
/// for the callers who may.
#[tokio::test]
async fn every_rpc_refuses_every_caller_without_the_right_with_the_expected_code() {
    // Unlimited: user 7 makes more calls here than a quota's burst.
    let app = TestApp::start(|cfg| {
        cfg.quotas.reads_per_sec = 0.0;
        cfg.quotas.writes_per_sec = 0.0;
    })
    .await;
    let channel = app.platform.channel.clone();
    let described = Descriptors::of_platform();
    let rpcs = &described.rpcs;
    let access: BTreeMap<&str, Access> = ACCESS.iter().copied().collect();
    let served: BTreeSet<&str> = rpcs.iter().map(|r| r.path.as_str()).collect();
    let unlisted: Vec<&str> = served.iter().copied().filter(|p| !access.contains_key(p)).collect();
    assert!(unlisted.is_empty(), "RPCs without a row in ACCESS: {unlisted:?}");
    let stale: Vec<&str> = access.keys().copied().filter(|p| !served.contains(p)).collect();
    assert!(stale.is_empty(), "rows in ACCESS for RPCs that do not exist: {stale:?}");

    let mut wrong = Vec::new();
    let mut check = |rpc: &Rpc, who: &str, got: Result<(), tonic::Status>, ok: &dyn Fn(Code) -> bool, want: &str| {
        let code = got.as_ref().err().map_or(Code::Ok, |s| s.code());
        if !ok(code) {
            wrong.push(format!(
                "{} by {who}: {code:?} ({}), want {want}",
                rpc.path,
                got.err().map(|s| s.message().to_owned()).unwrap_or_default()
            ));
        }
    };
    for rpc in rpcs {
        let empty = Vec::new();
        for who in unauthenticated() {
            let got = call(&channel, rpc, empty.clone(), &who.headers).await;
            check(rpc, who.what, got, &|c| c == Code::Unauthenticated, "Unauthenticated");
        }
        let me = Identity {
            what: "a bff token for user 7",
            headers: vec![bearer(BFF_TOKEN), user(&ME.to_string())],
        };
        let service = Identity {
            what: "an internal token",
            headers: vec![bearer(INTERNAL_TOKEN)],
        };
        let allowed = |c: Code| c != Code::Unauthenticated && c != Code::PermissionDenied;
        match access[rpc.path.as_str()] {
            Access::Internal => {
                let got = call(&channel, rpc, empty.clone(), &me.headers).await;
                check(rpc, me.what, got, &|c| c == Code::PermissionDenied, "PermissionDenied");
                let got = call(&channel, rpc, empty.clone(), &service.headers).await;
                check(
                    rpc,
                    service.what,
                    got,
                    &allowed,
                    "neither Unauthenticated nor PermissionDenied",
                );
            }
            Access::OwnUser(field) => {
                let other = described.with_field(&rpc.input, field, OTHER);
                let got = call(&channel, rpc, other.clone(), &me.headers).await;
                check(
                    rpc,
                    "a bff token for user 7 acting for user 8",
                    got,
                    &|c| c == Code::PermissionDenied,
                    "PermissionDenied",
                );
                let own = described.with_field(&rpc.input, field, ME);
                let got = call(&channel, rpc, own, &me.headers).await;
                check(
                    rpc,
                    "a bff token for user 7 acting for itself",
                    got,
                    &allowed,
                    "neither Unauthenticated nor PermissionDenied",
                );
                let got = call(&channel, rpc, other, &service.headers).await;
                check(
                    rpc,
                    "an internal token acting for user 8",
                    got,
                    &allowed,
                    "neither Unauthenticated nor PermissionDenied",
                );
            }
            Access::Open => {
                let got = call(&channel, rpc, empty.clone(), &me.headers).await;
                check(
                    rpc,
                    me.what,
                    got,
                    &allowed,
                    "neither Unauthenticated nor PermissionDenied",
                );
            }
        }
    }
    assert!(wrong.is_empty(), "{} wrong answers:\n{}", wrong.len(), wrong.join("\n"));
    app.stop().await.expect("stop");
}
