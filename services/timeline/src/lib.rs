//! timeline: home timelines (push inboxes + pulled celebrity feeds +
//! outboxes below the inbox floor) and single-feed pages, filtered at read.

pub mod grpc;
pub mod service;
pub mod sources;

use std::sync::Arc;

use feed_inbox::InboxStore;
use feed_proto::timeline::v1::timeline_service_server::TimelineServiceServer;
use feed_server::{Authenticator, ServiceSet};

pub use service::{Timeline, TimelineConfig};
pub use sources::{GrpcSources, Sources};

/// The gRPC name of this service.
pub const SERVICE_NAME: &str = "feed.timeline.v1.TimelineService";

/// Adds TimelineService, its health name and readiness check to `set`.
pub fn register(set: &mut ServiceSet, timeline: Timeline, inbox: Arc<dyn InboxStore>, auth: &Authenticator) {
    set.routes.add_service(TimelineServiceServer::with_interceptor(
        grpc::TimelineGrpc::new(timeline),
        auth.interceptor(),
    ));
    set.names.push(SERVICE_NAME);
    set.readiness.push(Arc::new(move || {
        let inbox = inbox.clone();
        Box::pin(async move { inbox.is_live(0).await.is_ok() })
    }));
}
