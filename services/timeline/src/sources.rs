//! What the timeline reads from the other services, and the gRPC clients.

use std::sync::Arc;

use async_trait::async_trait;
use feed_clients::{Batched, FollowGraphClient};
use feed_core::{ApiError, FeedRef, UserId};
use feed_inbox::home::{MAX_HYDRATE_PER_CALL, MAX_ROUNDS_PER_CALL};
use feed_proto::SharedActivity;
use feed_proto::common::v1::DeliveryMode;
// Publish's answers carry activities the timeline passes on undecoded.
use feed_proto::wire::publish::v1 as pb;
use feed_proto::wire::publish::v1::publish_service_client::PublishServiceClient;
use tonic::transport::Channel;

use crate::graph_cache::GraphCache;

pub use feed_inbox::home::{Entry, Hit, Round, RoundRequest};

/// Activities asked per GetActivities call: 200 maximum-size activities
/// stay far under the message limit (`feed_server::MAX_MESSAGE_BYTES`).
const HYDRATE_CHUNK: usize = 200;

/// How a reader relates to an actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReaderRelation {
    /// Either blocks the other.
    pub blocked: bool,
    /// The reader mutes the actor.
    pub muted: bool,
}

/// Everything the timeline reads from follow-graph and publish.
#[async_trait]
pub trait Sources: Send + Sync + 'static {
    /// Every feed the user follows.
    async fn following(&self, user: UserId) -> Result<Vec<FeedRef>, ApiError>;
    /// The follow list held for `user`, without asking, with the graph
    /// token it is held under (`feed_inbox::graph_token`): exact only if a
    /// round then reads the same token ([`Round::graph_token`]). None when
    /// nothing is held that way (in process the graph is always asked).
    fn held_following(&self, _user: UserId) -> Option<(Vec<FeedRef>, u64)> {
        None
    }
    /// How `user` relates to each actor, in order.
    async fn relations(&self, user: UserId, actors: &[UserId]) -> Result<Vec<ReaderRelation>, ApiError>;
    /// Outbox entries below `before` across feeds, newest first, at most
    /// `limit` distinct ids; true when a feed may hold more.
    async fn read_outboxes(
        &self,
        feeds: &[FeedRef],
        before: Option<u64>,
        limit: usize,
        pull_only: bool,
    ) -> Result<(Vec<Entry>, bool), ApiError>;
    /// One round of a home read (`feed_inbox::home`): pending work, then
    /// the inbox page, the outboxes and the newest candidates hydrated.
    async fn gather(&self, req: RoundRequest<'_>) -> Result<Round, ApiError>;
    /// Active activities by id (deleted and unknown ones left out), shared
    /// with the store's cache or passed through as publish sent them: the
    /// response encodes them from there.
    async fn hydrate(&self, ids: &[u64]) -> Result<Vec<SharedActivity>, ApiError>;
    /// Rebuilds the user's inbox from the followed feeds' outboxes.
    async fn rebuild(&self, user: UserId) -> Result<(), ApiError>;
}

/// The gRPC clients, with an internal token.
#[derive(Clone)]
pub struct GrpcSources {
    graph: FollowGraphClient,
    graphs: Arc<GraphCache>,
    publish: PublishServiceClient<Channel>,
    auth: feed_server::auth::ServiceToken,
    /// Every publish call here is a read or an idempotent rebuild: one
    /// refused or reset (a replica restarting) is asked again.
    retry: Arc<feed_server::RetryBudget>,
    /// Rounds asked while a `ReadHomes` call is in flight go together in
    /// the next one.
    rounds: Batched<pb::ReadHomeRequest, pb::ReadHomeResponse>,
}

/// `ReadHomes` calls in flight unless configured: enough to keep two
/// publish replicas' threads busy, few enough that under load the rounds
/// that wait go together (at 64 reads in flight, ~16 per call).
const DEFAULT_ROUND_CALLS: usize = 4;

/// How many waiting rounds the next `ReadHomes` call takes: within
/// publish's caps on rounds and on activities hydrated per call.
fn rounds_per_call(waiting: &mut dyn Iterator<Item = &pb::ReadHomeRequest>) -> usize {
    let mut hydrate = 0;
    waiting
        .take(MAX_ROUNDS_PER_CALL)
        .take_while(|r| {
            hydrate += r.hydrate as usize;
            hydrate <= MAX_HYDRATE_PER_CALL
        })
        .count()
}

fn from_peer(service: &str) -> impl Fn(tonic::Status) -> ApiError + '_ {
    move |s| ApiError::from_peer(service, &s)
}

impl GrpcSources {
    /// Clients on the two channels.
    pub fn new(follow_graph: Channel, publish: Channel, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            graph: FollowGraphClient::new(follow_graph, token)?,
            graphs: Arc::default(),
            publish: PublishServiceClient::new(publish)
                .max_decoding_message_size(feed_server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(feed_server::MAX_MESSAGE_BYTES),
            auth: feed_server::auth::ServiceToken::new(token)?,
            retry: Arc::new(feed_server::RetryBudget::new("publish")),
            rounds: Batched::new(DEFAULT_ROUND_CALLS, rounds_per_call),
        })
    }

    /// At most `calls` `ReadHomes` calls in flight at once
    /// (`timeline.publish_calls_in_flight`).
    pub fn with_round_calls(mut self, calls: usize) -> Self {
        self.rounds = Batched::new(calls, rounds_per_call);
        self
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        self.auth.request(msg)
    }

    /// One `ReadHomes` call: each round's answer, or its error as publish
    /// named it.
    async fn read_homes(
        &self,
        rounds: Vec<pb::ReadHomeRequest>,
    ) -> Result<Vec<Result<pb::ReadHomeResponse, ApiError>>, ApiError> {
        let r = self
            .retry
            .idempotent(|| {
                let mut c = self.publish.clone();
                let r = self.req(pb::ReadHomesRequest { rounds: rounds.clone() });
                async move { c.read_homes(r).await }
            })
            .await
            .map_err(from_peer("publish"))?
            .into_inner();
        Ok(r.results
            .into_iter()
            .map(|r| match r.result {
                Some(pb::read_home_result::Result::Round(round)) => Ok(round),
                Some(pb::read_home_result::Result::Error(e)) => Err(ApiError::from_peer(
                    "publish",
                    &tonic::Status::new(tonic::Code::from_i32(e.code), e.message),
                )),
                None => Err(ApiError::Internal("publish answered a round with nothing".into())),
            })
            .collect())
    }
}

#[async_trait]
impl Sources for GrpcSources {
    async fn following(&self, user: UserId) -> Result<Vec<FeedRef>, ApiError> {
        // One small call while the reader's graph is unchanged.
        let v = self.graph.graph_version(user).await?;
        if let Some(g) = self.graphs.get(user, v.version) {
            // Issued before that version was read: the list held for the
            // version is exact while the token is.
            g.hold_under(v.token);
            return Ok(g.following.clone());
        }
        let following = self.graph.following(user).await?;
        Ok(self.graphs.put(user, v.version, v.token, following).following.clone())
    }

    fn held_following(&self, user: UserId) -> Option<(Vec<FeedRef>, u64)> {
        let g = self.graphs.current(user)?;
        let token = g.token()?;
        Some((g.following.clone(), token))
    }

    async fn relations(&self, user: UserId, actors: &[UserId]) -> Result<Vec<ReaderRelation>, ApiError> {
        // The graph `following` just held for this reader: its version
        // covers their blocks (both ways) and mutes.
        let held = self.graphs.current(user);
        if let Some(known) = held.as_ref().and_then(|g| g.relations(actors)) {
            return Ok(known);
        }
        let relations: Vec<ReaderRelation> = self
            .graph
            .relationships(user, actors)
            .await?
            .into_iter()
            .map(|r| ReaderRelation {
                blocked: r.blocking || r.blocked_by,
                muted: r.muting,
            })
            .collect();
        if let Some(g) = held {
            g.learn(actors, &relations);
        }
        Ok(relations)
    }

    async fn read_outboxes(
        &self,
        feeds: &[FeedRef],
        before: Option<u64>,
        limit: usize,
        pull_only: bool,
    ) -> Result<(Vec<Entry>, bool), ApiError> {
        if feeds.is_empty() {
            return Ok((vec![], false));
        }
        let r = self
            .retry
            .idempotent(|| {
                let mut c = self.publish.clone();
                let r = self.req(pb::ReadOutboxesRequest {
                    feeds: feeds.iter().map(|f| f.to_string()).collect(),
                    before_id: before.unwrap_or(0),
                    limit: limit.min(1000) as u32,
                    pull_only,
                });
                async move { c.read_outboxes(r).await }
            })
            .await
            .map_err(from_peer("publish"))?
            .into_inner();
        let entries = r
            .entries
            .into_iter()
            .filter_map(|e| {
                Some(Entry {
                    id: e.id,
                    feed: FeedRef::parse(&e.feed).ok()?,
                    mode: DeliveryMode::try_from(e.mode).unwrap_or(DeliveryMode::Push),
                })
            })
            .collect();
        Ok((entries, r.has_more))
    }

    async fn gather(&self, req: RoundRequest<'_>) -> Result<Round, ApiError> {
        let round = pb::ReadHomeRequest {
            user_id: req.user,
            feeds: req.feeds.iter().map(|f| f.to_string()).collect(),
            before_id: req.before.unwrap_or(0),
            limit: req.batch.min(1000) as u32,
            hydrate: req.hydrate.min(500) as u32,
            missing_as_empty: req.missing_as_empty,
        };
        let this = self.clone();
        let r = self
            .rounds
            .call(round, move |rounds| {
                let this = this.clone();
                async move { this.read_homes(rounds).await }
            })
            .await?;
        let own = FeedRef::user(req.user);
        let hits = r
            .hits
            .into_iter()
            .map(|h| {
                let feed = match h.feed_index as usize {
                    0 if h.feed.is_empty() => None,
                    0 => Some(
                        FeedRef::parse(&h.feed)
                            .map_err(|e| ApiError::Internal(format!("publish returned feed {:?}: {e}", h.feed)))?,
                    ),
                    i if i <= req.feeds.len() => Some(req.feeds[i - 1].clone()),
                    i if i == req.feeds.len() + 1 => Some(own.clone()),
                    i => return Err(ApiError::Internal(format!("publish returned feed index {i}"))),
                };
                let mode = DeliveryMode::try_from(h.mode).unwrap_or(DeliveryMode::Push);
                Ok(Hit {
                    id: h.id,
                    feed: feed.map(|f| (f, mode)),
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(Round {
            live: r.inbox_live,
            hits,
            bound: (r.bound_id != 0).then_some(r.bound_id),
            hydrated: r.hydrated as usize,
            activities: r.activities,
            degraded: r.degraded,
            graph_token: (r.graph_token != 0).then_some(r.graph_token),
        })
    }

    async fn hydrate(&self, ids: &[u64]) -> Result<Vec<SharedActivity>, ApiError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(HYDRATE_CHUNK) {
            let r = self
                .retry
                .idempotent(|| {
                    let mut c = self.publish.clone();
                    let r = self.req(pb::GetActivitiesRequest {
                        ids: chunk.to_vec(),
                        include_deleted: false,
                        viewer_id: 0,
                    });
                    async move { c.get_activities(r).await }
                })
                .await
                .map_err(from_peer("publish"))?
                .into_inner();
            out.extend(r.activities);
        }
        Ok(out)
    }

    async fn rebuild(&self, user: UserId) -> Result<(), ApiError> {
        self.retry
            .idempotent(|| {
                let mut c = self.publish.clone();
                let r = self.req(pb::RebuildInboxRequest { user_id: user });
                async move { c.rebuild_inbox(r).await }
            })
            .await
            .map_err(from_peer("publish"))?;
        Ok(())
    }
}
