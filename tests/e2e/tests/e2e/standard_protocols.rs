//! What a client that knows only the standard protocols sees: gRPC health
//! and server reflection (v1 and v1alpha), no token needed for either.

use feed_e2e::Platform;
use prost::Message;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::{v1, v1alpha};

const FOLLOW_GRAPH: &str = "feed.followgraph.v1.FollowGraphService";

#[tokio::test]
async fn health_reports_each_service_without_a_token() {
    let p = Platform::start().await.expect("platform");
    let mut health = HealthClient::new(p.channel.clone());
    for service in [
        "",
        FOLLOW_GRAPH,
        feed_server::serve::LIVENESS,
        notify::SERVICE_NAME,
        timeline::SERVICE_NAME,
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let err = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(err.code(), Code::NotFound);
    p.stop().await.expect("stop");
}

#[tokio::test]
async fn every_answer_carries_a_request_id_kept_from_the_caller_or_minted() {
    let p = Platform::start().await.expect("platform");
    let mut health = HealthClient::new(p.channel.clone());
    let check = || HealthCheckRequest { service: "".into() };
    let minted = |r: &tonic::metadata::MetadataMap| {
        r.get(feed_server::observe::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .expect("a request id")
    };
    let first = minted(health.check(check()).await.expect("check").metadata());
    let second = minted(health.check(check()).await.expect("check").metadata());
    let uuid = uuid::Uuid::parse_str(&first).expect("a minted id is a UUID");
    assert_eq!(uuid.get_version_num(), 7, "time-ordered");
    assert_ne!(first, second, "one per request");
    let mut req = tonic::Request::new(check());
    req.metadata_mut()
        .insert(feed_server::observe::REQUEST_ID, "trace-42".parse().expect("value"));
    assert_eq!(
        minted(health.check(req).await.expect("check").metadata()),
        "trace-42",
        "the caller's id is kept"
    );
    // An error answer carries it too.
    let err = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    uuid::Uuid::parse_str(&minted(err.metadata())).expect("minted on errors too");
    p.stop().await.expect("stop");
}

#[tokio::test]
async fn health_turns_not_serving_when_draining_starts() {
    let p = Platform::start().await.expect("platform");
    let mut health = HealthClient::new(p.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("first").expect("status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    p.shutdown().trigger();
    let next = watch.next().await.expect("update").expect("status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    p.stop().await.expect("drains and stops");
}

fn field_names(fd: &prost_types::FileDescriptorProto, message: &str) -> Vec<String> {
    fd.message_type
        .iter()
        .find(|m| m.name() == message)
        .map(|m| m.field.iter().map(|f| f.name().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn reflection_v1_lists_services_and_describes_the_contract() {
    let p = Platform::start().await.expect("platform");
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(p.channel.clone());
    let requests = tokio_stream::iter(vec![
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        },
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                FOLLOW_GRAPH.into(),
            )),
        },
    ]);
    let mut responses = client
        .server_reflection_info(requests)
        .await
        .expect("reflection")
        .into_inner();

    let listed = match responses.next().await.expect("one").expect("ok").message_response {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) => l,
        other => panic!("unexpected {other:?}"),
    };
    let names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&FOLLOW_GRAPH.to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");

    let files = match responses.next().await.expect("two").expect("ok").message_response {
        Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(f)) => f,
        other => panic!("unexpected {other:?}"),
    };
    let fds: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).expect("descriptor"))
        .collect();
    let fg = fds
        .iter()
        .find(|f| f.package() == "feed.followgraph.v1")
        .expect("followgraph file");
    assert_eq!(field_names(fg, "FollowRequest"), vec!["follower_id", "feed"]);
    assert_eq!(
        field_names(fg, "ListFollowersRequest"),
        vec!["feed", "page_size", "page_token"]
    );
    assert_eq!(
        field_names(fg, "ListFollowersResponse"),
        vec!["follower_ids", "next_page_token"]
    );
    assert_eq!(
        field_names(fg, "ListFollowingResponse"),
        vec!["feeds", "next_page_token"]
    );
    assert_eq!(field_names(fg, "BlockRequest"), vec!["user_id", "target_user_id"]);
    p.stop().await.expect("stop");
}

#[tokio::test]
async fn reflection_v1alpha_answers_older_clients() {
    let p = Platform::start().await.expect("platform");
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(p.channel.clone());
    let requests = tokio_stream::iter(vec![v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    }]);
    let mut responses = client
        .server_reflection_info(requests)
        .await
        .expect("reflection")
        .into_inner();
    match responses.next().await.expect("one").expect("ok").message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
            assert!(l.service.iter().any(|s| s.name == FOLLOW_GRAPH));
        }
        other => panic!("unexpected {other:?}"),
    }
    p.stop().await.expect("stop");
}
