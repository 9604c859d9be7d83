//! timeline: home timelines (push inboxes + pulled celebrity feeds +
//! outboxes below the inbox floor) and single-feed pages, filtered at read.

pub mod graph_cache;
pub mod grpc;
pub mod rules;
pub mod service;
pub mod sources;

use std::sync::Arc;

use feed_inbox::InboxStore;
use feed_proto::wire::timeline::v1::timeline_service_server::TimelineServiceServer;
use feed_server::app::require;
use feed_server::{Authenticator, FeedConfig, ServiceSet};

pub use rules::TimelineRules;
pub use service::Timeline;
pub use sources::{GrpcSources, Sources};

/// The gRPC name of this service.
pub const SERVICE_NAME: &str = "feed.timeline.v1.TimelineService";

/// Adds TimelineService, its health name and readiness check to `set`.
pub fn register(set: &mut ServiceSet, timeline: Timeline, inbox: Arc<dyn InboxStore>, auth: &Authenticator) {
    set.routes.add_service(
        auth.guard(
            TimelineServiceServer::new(grpc::TimelineGrpc::new(timeline))
                .max_decoding_message_size(feed_server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(feed_server::MAX_MESSAGE_BYTES),
        ),
    );
    set.names.push(SERVICE_NAME);
    set.readiness.push(Arc::new(move || {
        let inbox = inbox.clone();
        Box::pin(async move {
            inbox
                .is_live(0)
                .await
                .map(|_| ())
                .map_err(|e| format!("inbox Redis: {e}"))
        })
    }));
}

/// Builds TimelineService on `sources` and `inbox` into `set`, with the
/// rules of the configuration's `timeline` section.
pub fn build(
    cfg: &FeedConfig,
    sources: Arc<dyn Sources>,
    inbox: Arc<dyn InboxStore>,
    auth: &Authenticator,
    set: &mut ServiceSet,
) {
    let timeline = Timeline::new(sources, inbox.clone(), TimelineRules::from_config(&cfg.timeline));
    register(set, timeline, inbox, auth);
}

/// The timeline binary: reads follow-graph and publish over gRPC, inboxes from Redis.
pub struct App;

impl feed_server::Application for App {
    const NAME: &'static str = "timeline";
    const DEFAULT_PORTS: (u16, u16) = (50063, 9093);
    const HEALTH_NAMES: &'static [&'static str] = &[SERVICE_NAME];

    fn check(cfg: &FeedConfig) -> anyhow::Result<()> {
        require("redis.url", &cfg.redis.url)?;
        require("clients.follow_graph_url", &cfg.clients.follow_graph_url)?;
        require("clients.publish_url", &cfg.clients.publish_url)?;
        require("clients.token", &cfg.clients.token)
    }

    async fn build(cfg: &FeedConfig, ctx: &feed_server::BuildContext) -> anyhow::Result<Option<ServiceSet>> {
        let graph = feed_server::client::peer(&cfg.clients, &cfg.clients.follow_graph_url)?;
        let publish = feed_server::client::peer(&cfg.clients, &cfg.clients.publish_url)?;
        let sources = GrpcSources::new(graph.clone(), publish.clone(), &cfg.clients.token)?
            .with_round_calls(cfg.timeline.publish_calls_in_flight);
        let limits = feed_inbox::InboxLimits::from_settings(cfg.inbox.cap, cfg.inbox.ttl_secs, cfg.redis.cluster);
        let inbox: Arc<dyn InboxStore> = Arc::new(feed_inbox::RedisInbox::connect(&cfg.redis.url, limits).await?);
        let mut set = ServiceSet::default();
        build(cfg, Arc::new(sources), inbox, &ctx.auth, &mut set);
        set.readiness.push(feed_server::client::peer_ready(
            "follow-graph",
            graph,
            feed_clients::FOLLOW_GRAPH_SERVICE,
        ));
        set.readiness.push(feed_server::client::peer_ready(
            "publish",
            publish,
            feed_clients::PUBLISH_SERVICE,
        ));
        Ok(Some(set))
    }
}
