//! follow-graph end to end: real gRPC against feedd's services.

use feed_e2e::{Platform, authed, bff, internal};
use feed_proto::followgraph::v1 as pb;
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use tokio_stream::StreamExt;
use tonic::Code;

type Client = FollowGraphServiceClient<tonic::transport::Channel>;

async fn start() -> (Platform, Client) {
    let p = Platform::start().await.expect("platform starts");
    let c = FollowGraphServiceClient::new(p.channel.clone());
    (p, c)
}

fn follow(follower_id: u64, feed: &str) -> pb::FollowRequest {
    pb::FollowRequest {
        follower_id,
        feed: feed.into(),
    }
}

#[tokio::test]
async fn follow_list_block_and_mute_work_through_grpc() {
    let (p, mut c) = start().await;
    let r = c
        .follow(internal(follow(1, "user:2")))
        .await
        .expect("follow")
        .into_inner();
    assert!(r.changed);
    let edge = r.edge.expect("edge");
    assert!(edge.following && edge.edge_version > 0);
    assert!(
        !c.follow(internal(follow(1, "user:2")))
            .await
            .expect("again")
            .into_inner()
            .changed
    );
    c.follow(internal(follow(1, "tag:rust"))).await.expect("follow tag");
    c.follow(internal(follow(3, "user:2"))).await.expect("follow");

    let followers = c
        .list_followers(internal(pb::ListFollowersRequest {
            feed: "user:2".into(),
            page_size: 10,
            page_token: String::new(),
        }))
        .await
        .expect("list followers")
        .into_inner();
    assert_eq!(followers.follower_ids, vec![1, 3]);
    assert!(followers.next_page_token.is_empty());

    let following = c
        .list_following(internal(pb::ListFollowingRequest {
            user_id: 1,
            page_size: 10,
            page_token: String::new(),
        }))
        .await
        .expect("list following")
        .into_inner();
    assert_eq!(following.feeds, vec!["tag:rust", "user:2"]);

    let muted = c
        .mute(internal(pb::MuteRequest {
            user_id: 3,
            target_user_id: 2,
        }))
        .await
        .expect("mute")
        .into_inner();
    assert!(
        muted.changed && muted.edge.expect("edge").following,
        "mute keeps the follow"
    );

    let blocked = c
        .block(internal(pb::BlockRequest {
            user_id: 2,
            target_user_id: 1,
        }))
        .await
        .expect("block")
        .into_inner();
    assert_eq!(blocked.removed.len(), 1);
    let err = c.follow(internal(follow(1, "user:2"))).await.expect_err("blocked");
    assert_eq!(err.code(), Code::FailedPrecondition);

    let rel = c
        .get_relationships(internal(pb::GetRelationshipsRequest {
            user_id: 3,
            target_user_ids: vec![2],
            feeds: vec!["tag:rust".into()],
        }))
        .await
        .expect("relationships")
        .into_inner();
    assert!(rel.relationships[0].following && rel.relationships[0].muting);
    assert!(!rel.feeds[0].following);

    let counts = c
        .get_counts(internal(pb::GetCountsRequest {
            feeds: vec!["user:2".into(), "tag:rust".into()],
            user_ids: vec![1],
        }))
        .await
        .expect("counts")
        .into_inner();
    assert_eq!(counts.feeds[0].followers, 1, "the block removed user 1's follow");
    assert_eq!(counts.feeds[1].followers, 1);
    assert_eq!(counts.users[0].following, 1);
    p.stop().await.expect("stop");
}

#[tokio::test]
async fn malformed_feed_is_invalid_argument_naming_the_field() {
    let (p, mut c) = start().await;
    for bad in ["no colon", "usr:1", "user:0", "tag:", "user:abc"] {
        let err = c.follow(internal(follow(1, bad))).await.expect_err(bad);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert!(err.message().contains("feed"), "{bad}: {}", err.message());
    }
    let err = c.follow(internal(follow(0, "user:2"))).await.expect_err("zero id");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("follower_id"));
    let err = c
        .list_followers(internal(pb::ListFollowersRequest {
            feed: "user:2".into(),
            page_size: 5000,
            page_token: String::new(),
        }))
        .await
        .expect_err("page too big");
    assert!(err.message().contains("page_size"));
    let err = c
        .list_followers(internal(pb::ListFollowersRequest {
            feed: "user:2".into(),
            page_size: 5,
            page_token: "garbage!".into(),
        }))
        .await
        .expect_err("bad token");
    assert!(err.message().contains("page_token"));
    let err = c
        .block(internal(pb::BlockRequest {
            user_id: 4,
            target_user_id: 4,
        }))
        .await
        .expect_err("self block");
    assert!(err.message().contains("target_user_id"));
    // Nothing was written by any refused call.
    let counts = c
        .get_counts(internal(pb::GetCountsRequest {
            feeds: vec![],
            user_ids: vec![1],
        }))
        .await
        .expect("counts")
        .into_inner();
    assert_eq!(counts.users[0].following, 0);
    p.stop().await.expect("stop");
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let (p, mut c) = start().await;
    let err = c
        .follow(tonic::Request::new(follow(1, "user:2")))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = c
        .follow(authed(follow(1, "user:2"), "wrong", None))
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = c
        .follow(authed(follow(1, "user:2"), feed_e2e::BFF_TOKEN, None))
        .await
        .expect_err("bff without user");
    assert_eq!(err.code(), Code::Unauthenticated);
    p.stop().await.expect("stop");
}

#[tokio::test]
async fn bff_token_may_act_only_as_its_user() {
    let (p, mut c) = start().await;
    assert!(
        c.follow(bff(follow(5, "user:6"), 5))
            .await
            .expect("own follow")
            .into_inner()
            .changed
    );
    let err = c.follow(bff(follow(7, "user:6"), 5)).await.expect_err("other user");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = c
        .mute(bff(
            pb::MuteRequest {
                user_id: 7,
                target_user_id: 6,
            },
            5,
        ))
        .await
        .expect_err("mute for other");
    assert_eq!(err.code(), Code::PermissionDenied);
    // Fanout-only calls need the internal role.
    let err = c
        .page_followers(bff(
            pb::PageFollowersRequest {
                feed: "user:6".into(),
                shard: 0,
                after_user_id: 0,
                limit: 10,
            },
            5,
        ))
        .await
        .expect_err("internal only");
    assert_eq!(err.code(), Code::PermissionDenied);
    p.stop().await.expect("stop");
}

#[tokio::test]
async fn followers_page_without_skips_or_repeats() {
    let (p, mut c) = start().await;
    for u in 10..35 {
        c.follow(internal(follow(u, "tag:paging"))).await.expect("follow");
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_followers(internal(pb::ListFollowersRequest {
                feed: "tag:paging".into(),
                page_size: 10,
                page_token: token.clone(),
            }))
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.follower_ids);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, (10..35).collect::<Vec<_>>());
    p.stop().await.expect("stop");
}

#[tokio::test]
async fn fanout_reads_followers_by_stream_and_by_shard_range() {
    let (p, mut c) = start().await;
    let big = (1u64 << 16) + 5;
    for u in [2u64, 3, 4, big] {
        c.follow(internal(follow(u, "user:1"))).await.expect("follow");
    }
    c.mute(internal(pb::MuteRequest {
        user_id: 3,
        target_user_id: 1,
    }))
    .await
    .expect("mute");

    let mut stream = c
        .stream_followers(internal(pb::StreamFollowersRequest {
            feed: "user:1".into(),
            batch_size: 2,
            after_user_id: 0,
        }))
        .await
        .expect("stream")
        .into_inner();
    let mut batches = Vec::new();
    while let Some(b) = stream.next().await {
        batches.push(b.expect("batch"));
    }
    assert_eq!(batches.len(), 2);
    let all: Vec<(u64, bool)> = batches
        .iter()
        .flat_map(|b| b.followers.iter().map(|f| (f.user_id, f.muted)))
        .collect();
    assert_eq!(all, vec![(2, false), (3, true), (4, false), (big, false)]);

    let shards = c
        .list_follower_shards(internal(pb::ListFollowerShardsRequest { feed: "user:1".into() }))
        .await
        .expect("shards")
        .into_inner();
    assert_eq!(shards.shards.iter().map(|s| s.shard).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(shards.total_followers, 4);
    let page = c
        .page_followers(internal(pb::PageFollowersRequest {
            feed: "user:1".into(),
            shard: 0,
            after_user_id: 2,
            limit: 1,
        }))
        .await
        .expect("page")
        .into_inner();
    assert_eq!(page.followers.iter().map(|f| f.user_id).collect::<Vec<_>>(), vec![3]);
    assert!(!page.done);

    let versions = c
        .get_edge_versions(internal(pb::GetEdgeVersionsRequest {
            edges: vec![pb::EdgeKey {
                follower_id: 3,
                feed: "user:1".into(),
            }],
        }))
        .await
        .expect("versions")
        .into_inner();
    assert_eq!(versions.edges[0].edge_version, 2, "follow then mute");
    p.stop().await.expect("stop");
}

/// The services' follow-graph client passes on what follow-graph says by its
/// code: a request error stays the caller's (never a retryable UNAVAILABLE),
/// follow-graph refusing the service's own token is INTERNAL (not the
/// caller's credentials), and only a follow-graph that does not answer is
/// UNAVAILABLE. (Every code: `feed_core::error`'s unit test.)
#[tokio::test]
async fn a_peers_answers_reach_the_caller_with_their_codes() {
    let platform = Platform::start().await.expect("platform");
    let feed = feed_core::FeedRef::user(1);
    let code = |e: feed_core::ApiError| tonic::Status::from(e).code();
    let internal_client =
        feed_clients::FollowGraphClient::new(platform.channel.clone(), feed_e2e::INTERNAL_TOKEN).expect("client");
    let bad = internal_client
        .page(&feed, 0, 0, 20_000)
        .await
        .expect_err("too large a page");
    assert_eq!(code(bad.clone()), Code::InvalidArgument, "{bad}");
    assert!(bad.to_string().contains("limit"), "names the field: {bad}");
    let bff_client =
        feed_clients::FollowGraphClient::new(platform.channel.clone(), feed_e2e::BFF_TOKEN).expect("client");
    let refused = bff_client.page(&feed, 0, 0, 10).await.expect_err("not a service token");
    assert_eq!(code(refused.clone()), Code::Internal, "{refused}");
    let channel = platform.channel.clone();
    platform.stop().await.expect("stop");
    let gone = feed_clients::FollowGraphClient::new(channel, feed_e2e::INTERNAL_TOKEN)
        .expect("client")
        .page(&feed, 0, 0, 10)
        .await
        .expect_err("follow-graph stopped");
    assert_eq!(code(gone.clone()), Code::Unavailable, "{gone}");
}

#[tokio::test]
async fn an_end_user_is_not_told_who_blocks_or_mutes_them() {
    let (_p, mut c) = start().await;
    c.block(internal(pb::BlockRequest {
        user_id: 40,
        target_user_id: 41,
    }))
    .await
    .expect("block");
    c.mute(internal(pb::MuteRequest {
        user_id: 42,
        target_user_id: 41,
    }))
    .await
    .expect("mute");
    let ask = || pb::GetRelationshipsRequest {
        user_id: 41,
        target_user_ids: vec![40, 42],
        feeds: vec![],
    };
    let told = |r: pb::GetRelationshipsResponse| {
        r.relationships
            .iter()
            .map(|x| (x.target_user_id, x.blocked_by, x.muted_by))
            .collect::<Vec<_>>()
    };
    let as_user = c.get_relationships(bff(ask(), 41)).await.expect("own relationships");
    assert_eq!(
        told(as_user.into_inner()),
        vec![(40, false, false), (42, false, false)],
        "user 41 learns nothing of 40's block or 42's mute"
    );
    let as_service = c.get_relationships(internal(ask())).await.expect("internal");
    assert_eq!(
        told(as_service.into_inner()),
        vec![(40, true, false), (42, false, true)],
        "services still see both, for read-time rules"
    );
    // The blocker and the muter see their own side.
    let blocker = c
        .get_relationships(bff(
            pb::GetRelationshipsRequest {
                user_id: 40,
                target_user_ids: vec![41],
                feeds: vec![],
            },
            40,
        ))
        .await
        .expect("blocker's own")
        .into_inner();
    assert!(blocker.relationships[0].blocking);
}
