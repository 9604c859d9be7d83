//! The gRPC adapter of PublishService.

use std::sync::Arc;

use feed_core::{ApiError, FeedRef, PageToken, validate};
use feed_inbox::InboxStore;
use feed_proto::common::v1::Activity;
// Served with activities as `SharedActivity`: encoded straight from the
// store's cache, not deep-copied into each response first.
use feed_proto::wire::publish::v1 as pb;
use feed_proto::wire::publish::v1::publish_service_server::PublishService;
use feed_server::{Caller, auth::Role};
use tonic::{Request, Response, Status};

use crate::publisher::{Publisher, Reader};

const SCHEDULED_TOKEN: u8 = 0x11;
const DEAD_TOKEN: u8 = 0x12;
use feed_inbox::home::{MAX_HYDRATE_PER_CALL as MAX_HOME_HYDRATE, MAX_ROUNDS_PER_CALL as MAX_HOME_ROUNDS};

/// The `feeds` of a timeline read: at most 1000, each named in errors.
fn feeds_field(raw: &[String]) -> Result<Vec<FeedRef>, ApiError> {
    validate::batch_len("feeds", raw, feed_clients::PUBLISH_MAX_FEEDS)?;
    raw.iter()
        .enumerate()
        .map(|(i, f)| FeedRef::parse_nth("feeds", i, f))
        .collect()
}

/// The sub-jobs a worker records with CompleteJob: each one a job the
/// workers can run (an id, a kind, its feed and ids well formed), checked
/// before any is written, so a malformed list writes nothing.
fn spawned_jobs(jobs: &[feed_proto::events::v1::Job]) -> Result<(), ApiError> {
    use feed_proto::events::v1::job::Kind;
    validate::batch_len("spawned", jobs, 100_000)?;
    for (i, j) in jobs.iter().enumerate() {
        let field = |name: &str| format!("spawned[{i}].{name}");
        job_id(&field("job_id"), &j.job_id)?;
        match &j.kind {
            Some(Kind::Fanout(f)) => {
                required(&field("fanout.activity_id"), f.activity_id)?;
                FeedRef::parse_field(&field("fanout.feed"), &f.feed)?;
            }
            Some(Kind::Purge(p)) => {
                required(&field("purge.activity_id"), p.activity_id)?;
                FeedRef::parse_field(&field("purge.feed"), &p.feed)?;
            }
            Some(Kind::Edge(e)) => {
                validate::user_id(&field("edge.follower_id"), e.follower_id)?;
                FeedRef::parse_field(&field("edge.feed"), &e.feed)?;
            }
            Some(Kind::Event(e)) => job_id(&field("event.event_id"), &e.event_id)?,
            None => return Err(ApiError::invalid(field("kind"), "required")),
        }
    }
    Ok(())
}

/// A job id (an event's id is its job's): what workers and notify name a
/// job by, never empty.
fn job_id(field: &str, id: &str) -> Result<(), ApiError> {
    validate::text(field, id, 512, false)
}

fn required(field: &str, id: u64) -> Result<(), ApiError> {
    if id == 0 {
        return Err(ApiError::invalid(field, "required"));
    }
    Ok(())
}

/// The tonic service over [`Publisher`].
#[derive(Clone)]
pub struct PublishGrpc {
    publisher: Publisher,
    inbox: Arc<dyn InboxStore>,
}

impl PublishGrpc {
    /// One home round (`ReadHome`, and each of `ReadHomes`).
    async fn home_round(&self, r: &pb::ReadHomeRequest) -> Result<pb::ReadHomeResponse, ApiError> {
        let user = validate::user_id("user_id", r.user_id)?;
        let feeds = feeds_field(&r.feeds)?;
        let batch = validate::page_size("limit", r.limit, 100, 1000)?;
        if r.hydrate > 500 {
            return Err(ApiError::invalid("hydrate", "must be at most 500"));
        }
        let round = feed_inbox::home::gather(
            &self.publisher,
            self.inbox.as_ref(),
            feed_inbox::home::RoundRequest {
                user,
                feeds: &feeds,
                before: (r.before_id != 0).then_some(r.before_id),
                batch,
                hydrate: r.hydrate as usize,
                missing_as_empty: r.missing_as_empty,
            },
        )
        .await?;
        // Most hits come through the asked feeds or the reader's own: named
        // by position, not by a string each (`HomeHit::feed_index`).
        let own = FeedRef::user(user);
        let index_of = |feed: &FeedRef| {
            if *feed == own {
                Some(feeds.len() + 1)
            } else {
                feeds.binary_search(feed).ok().map(|i| i + 1)
            }
        };
        Ok(pb::ReadHomeResponse {
            inbox_live: round.live,
            hits: round
                .hits
                .into_iter()
                .map(|h| match h.feed {
                    Some((feed, mode)) => match index_of(&feed) {
                        Some(i) => pb::HomeHit {
                            id: h.id,
                            mode: mode as i32,
                            feed_index: i as u32,
                            ..pb::HomeHit::default()
                        },
                        None => pb::HomeHit {
                            id: h.id,
                            feed: feed.to_string(),
                            mode: mode as i32,
                            feed_index: 0,
                        },
                    },
                    None => pb::HomeHit {
                        id: h.id,
                        ..pb::HomeHit::default()
                    },
                })
                .collect(),
            bound_id: round.bound.unwrap_or(0),
            hydrated: round.hydrated as u32,
            activities: round.activities,
            degraded: round.degraded,
            graph_token: round.graph_token.unwrap_or(0),
        })
    }

    /// Wraps the domain service; `inbox` is where RebuildInbox writes.
    pub fn new(publisher: Publisher, inbox: Arc<dyn InboxStore>) -> Self {
        Self { publisher, inbox }
    }

    async fn resolve(&self, caller: &Caller, r: Option<&pb::ActivityRef>) -> Result<Activity, ApiError> {
        let a = match r.and_then(|r| r.r#ref.as_ref()) {
            Some(pb::activity_ref::Ref::Id(id)) => self.publisher.resolve(Some(*id), None).await?,
            Some(pb::activity_ref::Ref::Foreign(f)) => {
                validate::user_id("ref.foreign.actor", f.actor)?;
                caller.act_as("ref.foreign.actor", f.actor)?;
                self.publisher.resolve(None, Some((f.actor, &f.foreign_id))).await?
            }
            None => return Err(ApiError::invalid("ref", "set id or foreign")),
        };
        caller.act_as("ref", a.actor)?;
        Ok(a)
    }
}

fn token_str(field: &str, tag: u8, raw: &str) -> Result<String, ApiError> {
    Ok(match PageToken::decode(field, tag, raw)? {
        Some(b) => String::from_utf8(b).map_err(|_| ApiError::invalid(field, "malformed token"))?,
        None => String::new(),
    })
}

#[tonic::async_trait]
impl PublishService for PublishGrpc {
    async fn publish(&self, req: Request<pb::PublishRequest>) -> Result<Response<pb::PublishResponse>, Status> {
        let caller = Caller::of(&req)?;
        let r = req.into_inner();
        let new = r.activity.ok_or_else(|| ApiError::invalid("activity", "required"))?;
        validate::user_id("activity.actor", new.actor)?;
        caller.act_as("activity.actor", new.actor)?;
        let p = self.publisher.publish(new, r.publish_at_ms).await?;
        Ok(Response::new(pb::PublishResponse {
            activity_id: p.id,
            duplicate: p.duplicate,
            schedule_id: p.schedule_id.unwrap_or_default(),
            deliveries: p
                .deliveries
                .into_iter()
                .map(|(feed, mode)| pb::FeedDelivery {
                    feed: feed.to_string(),
                    mode: mode as i32,
                })
                .collect(),
        }))
    }

    async fn update_activity(
        &self,
        req: Request<pb::UpdateActivityRequest>,
    ) -> Result<Response<pb::UpdateActivityResponse>, Status> {
        let caller = Caller::of(&req)?;
        let r = req.into_inner();
        let a = self.resolve(&caller, r.r#ref.as_ref()).await?;
        let values = r.values.unwrap_or_default();
        let a = self
            .publisher
            .update(a, &r.set_fields, &r.unset_fields, &values)
            .await?;
        Ok(Response::new(pb::UpdateActivityResponse {
            activity: Some(a.into()),
        }))
    }

    async fn delete_activity(
        &self,
        req: Request<pb::DeleteActivityRequest>,
    ) -> Result<Response<pb::DeleteActivityResponse>, Status> {
        let caller = Caller::of(&req)?;
        let a = self.resolve(&caller, req.get_ref().r#ref.as_ref()).await?;
        let changed = self.publisher.delete(a).await?;
        Ok(Response::new(pb::DeleteActivityResponse { changed }))
    }

    async fn get_activities(
        &self,
        req: Request<pb::GetActivitiesRequest>,
    ) -> Result<Response<pb::GetActivitiesResponse>, Status> {
        let caller = Caller::of(&req)?;
        let r = req.get_ref();
        validate::batch_len("ids", &r.ids, 500)?;
        if r.include_deleted {
            caller.require_internal()?;
        }
        let reader = match (caller.role, r.viewer_id) {
            (Role::Internal, 0) => Reader::Internal,
            (Role::Internal, viewer) => Reader::User(Some(validate::user_id("viewer_id", viewer)?)),
            (_, 0) => Reader::User(caller.user_id),
            (_, viewer) => {
                caller.act_as("viewer_id", viewer)?;
                Reader::User(caller.user_id)
            }
        };
        let (activities, missing) = self.publisher.get_for(reader, &r.ids, r.include_deleted).await?;
        Ok(Response::new(pb::GetActivitiesResponse {
            activities: activities.into_iter().map(Into::into).collect(),
            missing_ids: missing,
        }))
    }

    async fn list_scheduled(
        &self,
        req: Request<pb::ListScheduledRequest>,
    ) -> Result<Response<pb::ListScheduledResponse>, Status> {
        let caller = Caller::of(&req)?;
        let r = req.get_ref();
        let actor = validate::user_id("actor", r.actor)?;
        caller.act_as("actor", actor)?;
        let limit = validate::page_size("page_size", r.page_size, 50, 500)?;
        let after = token_str("page_token", SCHEDULED_TOKEN, &r.page_token)?;
        let mut items = self.publisher.list_scheduled(actor, &after, limit + 1).await?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items
                .last()
                .map(|i| PageToken::encode(SCHEDULED_TOKEN, i.schedule_id.as_bytes()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListScheduledResponse {
            scheduled: items,
            next_page_token: next,
        }))
    }

    async fn cancel_scheduled(
        &self,
        req: Request<pb::CancelScheduledRequest>,
    ) -> Result<Response<pb::CancelScheduledResponse>, Status> {
        let caller = Caller::of(&req)?;
        let r = req.get_ref();
        let actor = validate::user_id("actor", r.actor)?;
        caller.act_as("actor", actor)?;
        validate::text("schedule_id", &r.schedule_id, 64, false)?;
        let changed = self.publisher.cancel_scheduled(actor, &r.schedule_id).await?;
        Ok(Response::new(pb::CancelScheduledResponse { changed }))
    }

    async fn rebuild_inbox(
        &self,
        req: Request<pb::RebuildInboxRequest>,
    ) -> Result<Response<pb::RebuildInboxResponse>, Status> {
        Caller::of(&req)?.require_internal()?;
        let user = validate::user_id("user_id", req.get_ref().user_id)?;
        let n = self.publisher.rebuild(self.inbox.as_ref(), user).await?;
        Ok(Response::new(pb::RebuildInboxResponse { entries: n as u32 }))
    }

    async fn rerun_fanout(
        &self,
        req: Request<pb::RerunFanoutRequest>,
    ) -> Result<Response<pb::RerunFanoutResponse>, Status> {
        Caller::of(&req)?.require_internal()?;
        let id = req.get_ref().activity_id;
        if id == 0 {
            return Err(ApiError::invalid("activity_id", "required").into());
        }
        let jobs = self.publisher.rerun_fanout(id).await?;
        Ok(Response::new(pb::RerunFanoutResponse { job_id: jobs.join(",") }))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        Caller::of(&req)?.require_internal()?;
        let r = req.get_ref();
        let limit = validate::page_size("page_size", r.page_size, 100, 1000)?;
        let after = token_str("page_token", DEAD_TOKEN, &r.page_token)?;
        let mut dead = self.publisher.dead_letters(&after, limit + 1).await?;
        let next = if dead.len() > limit {
            dead.truncate(limit);
            dead.last()
                .map(|d| PageToken::encode(DEAD_TOKEN, d.job.job_id.as_bytes()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: dead
                .into_iter()
                .map(|d| pb::DeadLetter {
                    kind: match &d.job.kind {
                        Some(feed_proto::events::v1::job::Kind::Fanout(_)) => "fanout",
                        Some(feed_proto::events::v1::job::Kind::Purge(_)) => "purge",
                        Some(feed_proto::events::v1::job::Kind::Edge(_)) => "edge",
                        Some(feed_proto::events::v1::job::Kind::Event(_)) => "event",
                        None => "unknown",
                    }
                    .into(),
                    job_id: d.job.job_id,
                    attempts: d.attempts,
                    last_error: d.error,
                    failed_at_ms: d.failed_ms,
                })
                .collect(),
            next_page_token: next,
        }))
    }

    async fn replay_dead_letters(
        &self,
        req: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        Caller::of(&req)?.require_internal()?;
        let ids = &req.get_ref().job_ids;
        validate::batch_len("job_ids", ids, 1000)?;
        for (i, id) in ids.iter().enumerate() {
            job_id(&format!("job_ids[{i}]"), id)?;
        }
        let n = self.publisher.replay_dead(ids).await?;
        Ok(Response::new(pb::ReplayDeadLettersResponse { replayed: n as u32 }))
    }

    async fn get_fanout_lag(
        &self,
        req: Request<pb::GetFanoutLagRequest>,
    ) -> Result<Response<pb::GetFanoutLagResponse>, Status> {
        Caller::of(&req)?.require_internal()?;
        let lag = self.publisher.lag().await?;
        Ok(Response::new(pb::GetFanoutLagResponse {
            pending_jobs: lag.pending_jobs,
            oldest_pending_age_ms: lag.oldest_pending_age_ms,
            dead_letters: lag.dead_letters,
        }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        Caller::of(&req)?.require_internal()?;
        let id = &req.get_ref().job_id;
        job_id("job_id", id)?;
        let loaded = self
            .publisher
            .load_job(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("job {id}")))?;
        Ok(Response::new(pb::GetJobResponse {
            job: Some(loaded.job),
            activity_deleted: loaded.activity_deleted,
            attempts: loaded.attempts,
        }))
    }

    async fn complete_job(
        &self,
        req: Request<pb::CompleteJobRequest>,
    ) -> Result<Response<pb::CompleteJobResponse>, Status> {
        Caller::of(&req)?.require_internal()?;
        let r = req.get_ref();
        job_id("job_id", &r.job_id)?;
        spawned_jobs(&r.spawned)?;
        self.publisher.complete_job(&r.job_id, &r.spawned).await?;
        Ok(Response::new(pb::CompleteJobResponse {}))
    }

    async fn list_outbox(
        &self,
        req: Request<pb::ListOutboxRequest>,
    ) -> Result<Response<pb::ListOutboxResponse>, Status> {
        Caller::of(&req)?.require_internal()?;
        let r = req.get_ref();
        let items = if r.ids.is_empty() {
            let feed = FeedRef::parse_field("feed", &r.feed)?;
            let limit = validate::page_size("limit", r.limit, 800, 10_000)?;
            self.publisher.outbox_items(&feed, limit).await?
        } else {
            validate::batch_len("ids", &r.ids, 10_000)?;
            self.publisher.items(&r.ids).await?
        };
        Ok(Response::new(pb::ListOutboxResponse { items }))
    }

    async fn read_outboxes(
        &self,
        req: Request<pb::ReadOutboxesRequest>,
    ) -> Result<Response<pb::ReadOutboxesResponse>, Status> {
        Caller::of(&req)?.require_internal()?;
        let r = req.get_ref();
        let feeds = feeds_field(&r.feeds)?;
        let limit = validate::page_size("limit", r.limit, 100, 1000)?;
        let before = (r.before_id != 0).then_some(r.before_id);
        let (entries, has_more) = self.publisher.read_outboxes(&feeds, before, limit, r.pull_only).await?;
        Ok(Response::new(pb::ReadOutboxesResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::OutboxEntry {
                    id: e.id,
                    feed: e.feed.to_string(),
                    mode: e.mode as i32,
                })
                .collect(),
            has_more,
        }))
    }

    async fn get_pending_work(
        &self,
        req: Request<pb::GetPendingWorkRequest>,
    ) -> Result<Response<pb::GetPendingWorkResponse>, Status> {
        Caller::of(&req)?.require_internal()?;
        let user = validate::user_id("user_id", req.get_ref().user_id)?;
        let w = self.publisher.pending_work(user).await?;
        Ok(Response::new(pb::GetPendingWorkResponse {
            fanout_from_id: w.fanout_from.unwrap_or(0),
            backfill_feeds: w.backfill_feeds.iter().map(|f| f.to_string()).collect(),
            stalled: w
                .stalled
                .iter()
                .map(|(f, from)| pb::StalledFanout {
                    feed: f.to_string(),
                    from_id: *from,
                })
                .collect(),
        }))
    }

    async fn read_home(&self, req: Request<pb::ReadHomeRequest>) -> Result<Response<pb::ReadHomeResponse>, Status> {
        Caller::of(&req)?.require_internal()?;
        Ok(Response::new(self.home_round(req.get_ref()).await?))
    }

    async fn read_homes(&self, req: Request<pb::ReadHomesRequest>) -> Result<Response<pb::ReadHomesResponse>, Status> {
        Caller::of(&req)?.require_internal()?;
        let rounds = &req.get_ref().rounds;
        if rounds.len() > MAX_HOME_ROUNDS {
            return Err(ApiError::invalid("rounds", format!("at most {MAX_HOME_ROUNDS}")).into());
        }
        if rounds.iter().map(|r| r.hydrate as usize).sum::<usize>() > MAX_HOME_HYDRATE {
            return Err(ApiError::invalid("rounds", format!("hydrate at most {MAX_HOME_HYDRATE} in all")).into());
        }
        // Each its own task: a call's rounds spread over the runtime's
        // threads, and their Redis reads share the connection's pipeline.
        let tasks: Vec<_> = req
            .into_inner()
            .rounds
            .into_iter()
            .map(|r| {
                let this = self.clone();
                tokio::spawn(async move { this.home_round(&r).await })
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for t in tasks {
            results.push(
                t.await
                    .unwrap_or_else(|e| Err(ApiError::Internal(format!("home round: {e}")))),
            );
        }
        Ok(Response::new(pb::ReadHomesResponse {
            results: results
                .into_iter()
                .map(|r| pb::ReadHomeResult {
                    result: Some(match r {
                        Ok(round) => pb::read_home_result::Result::Round(round),
                        Err(e) => {
                            let status = Status::from(e);
                            pb::read_home_result::Result::Error(pb::RoundError {
                                code: status.code() as i32,
                                message: status.message().to_string(),
                            })
                        }
                    }),
                })
                .collect(),
        }))
    }

    async fn fail_job(&self, req: Request<pb::FailJobRequest>) -> Result<Response<pb::FailJobResponse>, Status> {
        Caller::of(&req)?.require_internal()?;
        let r = req.get_ref();
        job_id("job_id", &r.job_id)?;
        let dead = self.publisher.fail_job(&r.job_id, &r.error, r.permanent).await?;
        Ok(Response::new(pb::FailJobResponse { dead_lettered: dead }))
    }
}
