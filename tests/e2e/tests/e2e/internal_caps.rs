//! Every internal client call, asked for more than its callee takes in one
//! request, against the real callee over gRPC: an unchunked batch is an
//! INVALID_ARGUMENT that only shows up for heavy users (a purge for an
//! inbox with items from more than 100 sources, a reader following more
//! feeds than publish reads per call).

use std::sync::Arc;

use feed_clients::FollowGraphClient;
use feed_core::FeedRef;
use feed_e2e::{INTERNAL_TOKEN, TestApp, internal};
use feed_proto::followgraph::v1 as fg;
use feed_proto::publish::v1 as pb;
use timeline::{GrpcSources, Sources, Timeline, TimelineRules};

/// Past follow-graph's GetRelationships / GetCounts cap (100).
const PAST_BATCH: u64 = 250;
/// Past publish's feeds per ReadHome (1000) and follow-graph's
/// ListFollowing page (1000).
const MANY_FEEDS: u64 = 1_200;

async fn follow_tags(app: &TestApp, user: u64, n: u64) {
    let follows: Vec<u64> = (0..n).collect();
    for chunk in follows.chunks(64) {
        futures::future::join_all(chunk.iter().map(|i| {
            let mut graph = app.graph.clone();
            async move {
                graph
                    .follow(internal(fg::FollowRequest {
                        follower_id: user,
                        feed: format!("tag:t{i}"),
                    }))
                    .await
                    .expect("follow")
            }
        }))
        .await;
    }
}

#[tokio::test]
async fn follow_graph_client_calls_past_the_callees_caps_are_chunked() {
    let app = TestApp::start(|_| {}).await;
    let client = FollowGraphClient::new(app.platform.channel.clone(), INTERNAL_TOKEN).expect("client");
    let feeds: Vec<FeedRef> = (2..2 + PAST_BATCH).map(FeedRef::user).collect();
    let targets: Vec<u64> = (2..2 + PAST_BATCH).collect();

    assert_eq!(client.feed_counts(&feeds).await.expect("GetCounts").len(), feeds.len());
    let relations = client
        .relationships(1, &targets)
        .await
        .expect("GetRelationships by user");
    assert_eq!(relations.len(), targets.len());
    assert!(relations.iter().zip(&targets).all(|(r, t)| r.target_user_id == *t));
    assert_eq!(
        client.follows(1, &feeds).await.expect("GetRelationships by feed").len(),
        feeds.len()
    );
    let edges: Vec<(u64, FeedRef)> = (1..=2_500).map(|u| (u, FeedRef::user(1))).collect();
    assert_eq!(
        client.edge_states(&edges).await.expect("GetEdgeVersions").len(),
        edges.len()
    );

    // Graph versions asked at once, more than one call takes.
    let asks = (1..=1_500u64).map(|u| {
        let client = client.clone();
        async move { client.graph_version(u).await }
    });
    let versions = futures::future::join_all(asks).await;
    assert!(
        versions.iter().all(Result::is_ok),
        "{:?}",
        versions.iter().find(|v| v.is_err())
    );

    follow_tags(&app, 1, MANY_FEEDS).await;
    assert_eq!(
        client.following(1).await.expect("ListFollowing pages").len(),
        MANY_FEEDS as usize
    );
    assert!(client.graph_version(1).await.expect("version").version > 0);
}

/// The split timeline's sources against publish: a reader following more
/// feeds than ReadHome takes still reads (the timeline covers at most
/// `feed_clients::PUBLISH_MAX_FEEDS` per page, whatever it is configured
/// to), and hydration past GetActivities' cap goes in chunks.
#[tokio::test]
async fn a_split_timeline_reads_for_a_user_following_more_feeds_than_publish_takes_per_call() {
    let mut app = TestApp::start(|_| {}).await;
    let channel = app.platform.channel.clone();
    let sources = Arc::new(GrpcSources::new(channel.clone(), channel, INTERNAL_TOKEN).expect("sources"));
    let inbox = Arc::new(
        feed_inbox::RedisInbox::connect(&app.redis.url(), feed_inbox::InboxLimits::default())
            .await
            .expect("inbox"),
    );
    let cfg = feed_server::config::TimelineConfig {
        max_feeds_per_read: 5_000,
        ..Default::default()
    };
    let timeline = Timeline::new(sources.clone(), inbox, TimelineRules::from_config(&cfg));

    follow_tags(&app, 1, MANY_FEEDS).await;
    let mut graph = app.graph.clone();
    graph
        .follow(internal(fg::FollowRequest {
            follower_id: 1,
            feed: "user:9".into(),
        }))
        .await
        .expect("follow user:9");
    let mut publish = app.publish.clone();
    let mut ids = Vec::new();
    for n in 0..3 {
        let r = publish
            .publish(internal(pb::PublishRequest {
                activity: Some(pb::NewActivity {
                    actor: 9,
                    verb: "post".into(),
                    object: format!("post:{n}"),
                    foreign_id: format!("caps-{n}"),
                    ..pb::NewActivity::default()
                }),
                publish_at_ms: 0,
            }))
            .await
            .expect("publish")
            .into_inner();
        ids.push(r.activity_id);
    }
    app.settled().await;
    let page = timeline.home(1, 20, None).await.expect("home read over ReadHome");
    let mut shown: Vec<u64> = page.items.iter().map(|i| i.activity.id).collect();
    shown.sort_unstable();
    let mut want = ids.clone();
    want.sort_unstable();
    assert_eq!(shown, want, "user:9's posts, pushed to the inbox, on the page");

    let mut asked: Vec<u64> = (1..=450).collect();
    asked.extend(&ids);
    let hydrated = sources.hydrate(&asked).await.expect("GetActivities in chunks");
    let mut got: Vec<u64> = hydrated.iter().map(|a| a.id).collect();
    got.sort_unstable();
    assert_eq!(got, want, "unknown ids left out, known ones all hydrated");
}

/// `ReadHomes` answers each round on its own (a bad round is an error in
/// its place, the others are read) and refuses a call past its caps.
#[tokio::test]
async fn read_homes_answers_each_round_on_its_own_and_refuses_a_call_past_its_caps() {
    use feed_inbox::home::{MAX_HYDRATE_PER_CALL, MAX_ROUNDS_PER_CALL};
    let app = TestApp::start(|_| {}).await;
    let mut publish = app.publish.clone();
    let round = |user_id: u64, hydrate: u32| pb::ReadHomeRequest {
        user_id,
        feeds: vec!["user:9".into()],
        limit: 20,
        hydrate,
        missing_as_empty: true,
        ..pb::ReadHomeRequest::default()
    };
    let results = publish
        .read_homes(internal(pb::ReadHomesRequest {
            rounds: vec![round(1, 20), round(0, 20), round(2, 20)],
        }))
        .await
        .expect("ReadHomes")
        .into_inner()
        .results;
    assert_eq!(results.len(), 3);
    for (i, r) in results.iter().enumerate() {
        match (&r.result, i) {
            (Some(pb::read_home_result::Result::Round(_)), 0 | 2) => {}
            (Some(pb::read_home_result::Result::Error(e)), 1) => {
                assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{e:?}");
                assert!(e.message.contains("user_id"), "names the field: {e:?}");
            }
            other => panic!("round {i}: {other:?}"),
        }
    }

    let too_many = (0..=MAX_ROUNDS_PER_CALL as u64).map(|u| round(u + 1, 1)).collect();
    let half = (MAX_HYDRATE_PER_CALL / 2 + 1) as u32;
    for rounds in [too_many, vec![round(1, half), round(2, half)]] {
        let e = publish
            .read_homes(internal(pb::ReadHomesRequest { rounds }))
            .await
            .expect_err("past the caps");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("rounds"), "names the field: {}", e.message());
    }
}
