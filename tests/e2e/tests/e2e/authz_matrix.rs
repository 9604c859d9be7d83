//! Every RPC × every way of calling it without the right to: the expected
//! code each time. The RPCs come from the descriptor set the servers'
//! reflection serves, so an RPC added without a row in [`ACCESS`] fails
//! the test instead of going unchecked.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

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

/// Request bodies as bytes: the matrix builds its messages from descriptors.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// One RPC as the descriptor set describes it.
struct Rpc {
    path: String,
    input: String,
    server_streaming: bool,
}

/// The descriptor set's messages by full name, and its RPCs.
fn describe() -> (BTreeMap<String, DescriptorProto>, Vec<Rpc>) {
    let set = FileDescriptorSet::decode(feed_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut messages = BTreeMap::new();
    let mut rpcs = Vec::new();
    for file in &set.file {
        let package = file.package();
        let mut stack: Vec<(String, &DescriptorProto)> = file
            .message_type
            .iter()
            .map(|m| (format!(".{package}.{}", m.name()), m))
            .collect();
        while let Some((name, m)) = stack.pop() {
            stack.extend(m.nested_type.iter().map(|n| (format!("{name}.{}", n.name()), n)));
            messages.insert(name, m.clone());
        }
        for service in &file.service {
            for method in &service.method {
                rpcs.push(Rpc {
                    path: format!("{package}.{}/{}", service.name(), method.name()),
                    input: method.input_type().to_owned(),
                    server_streaming: method.server_streaming(),
                });
            }
        }
    }
    (messages, rpcs)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A message of type `ty` with only the uint64 at `path` (dotted field
/// names through nested messages) set to `value`.
fn with_field(messages: &BTreeMap<String, DescriptorProto>, ty: &str, path: &str, value: u64) -> Vec<u8> {
    let m = messages.get(ty).unwrap_or_else(|| panic!("no message {ty}"));
    let (name, rest) = path.split_once('.').map_or((path, None), |(a, b)| (a, Some(b)));
    let field = m
        .field
        .iter()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| panic!("{ty} has no field {name}"));
    let number = u64::from(field.number() as u32);
    let mut out = Vec::new();
    match rest {
        None => {
            varint(number << 3, &mut out);
            varint(value, &mut out);
        }
        Some(rest) => {
            let inner = with_field(messages, field.type_name(), rest, value);
            varint((number << 3) | 2, &mut out);
            varint(inner.len() as u64, &mut out);
            out.extend(inner);
        }
    }
    out
}

/// One way of calling: the metadata sent.
#[derive(Debug, Clone)]
struct Identity {
    what: &'static str,
    headers: Vec<(&'static str, String)>,
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

async fn call(channel: &Channel, rpc: &Rpc, body: Vec<u8>, who: &Identity) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(body);
    req.set_timeout(std::time::Duration::from_secs(5));
    for (k, v) in &who.headers {
        req.metadata_mut().append(*k, v.parse().expect("ascii header"));
    }
    let path = PathAndQuery::from_str(&format!("/{}", rpc.path)).expect("path");
    if rpc.server_streaming {
        // A refusal comes before the stream opens; an opened one was allowed.
        grpc.server_streaming(req, path, Raw).await.map(|_| ())
    } else {
        grpc.unary(req, path, Raw).await.map(|_| ())
    }
}

/// Every RPC the descriptor set has, each way it may not be called: the
/// code is UNAUTHENTICATED without a valid identity, PERMISSION_DENIED for
/// a bff token on an internal RPC or acting for another user, and neither
/// for the callers who may.
#[tokio::test]
async fn every_rpc_refuses_every_caller_without_the_right_with_the_expected_code() {
    let app = TestApp::start(|_| {}).await;
    let channel = app.platform.channel.clone();
    let (messages, rpcs) = describe();
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
    for rpc in &rpcs {
        let empty = Vec::new();
        for who in unauthenticated() {
            let got = call(&channel, rpc, empty.clone(), &who).await;
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
                let got = call(&channel, rpc, empty.clone(), &me).await;
                check(rpc, me.what, got, &|c| c == Code::PermissionDenied, "PermissionDenied");
                let got = call(&channel, rpc, empty.clone(), &service).await;
                check(
                    rpc,
                    service.what,
                    got,
                    &allowed,
                    "neither Unauthenticated nor PermissionDenied",
                );
            }
            Access::OwnUser(field) => {
                let other = with_field(&messages, &rpc.input, field, OTHER);
                let got = call(&channel, rpc, other.clone(), &me).await;
                check(
                    rpc,
                    "a bff token for user 7 acting for user 8",
                    got,
                    &|c| c == Code::PermissionDenied,
                    "PermissionDenied",
                );
                let own = with_field(&messages, &rpc.input, field, ME);
                let got = call(&channel, rpc, own, &me).await;
                check(
                    rpc,
                    "a bff token for user 7 acting for itself",
                    got,
                    &allowed,
                    "neither Unauthenticated nor PermissionDenied",
                );
                let got = call(&channel, rpc, other, &service).await;
                check(
                    rpc,
                    "an internal token acting for user 8",
                    got,
                    &allowed,
                    "neither Unauthenticated nor PermissionDenied",
                );
            }
            Access::Open => {
                let got = call(&channel, rpc, empty.clone(), &me).await;
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
