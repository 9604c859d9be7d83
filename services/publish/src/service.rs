//! Publish domain logic: accept activities, fix their delivery mode, record
//! them with their jobs, and serve job records to fanout workers.

use std::sync::Arc;

use feed_core::{ApiError, Clock, FeedRef, IdGenerator, UserId, id::min_id_at};
use feed_inbox::InboxStore;
use feed_proto::common::v1::{Activity, ActivityStatus, DeliveryMode, Visibility};
use feed_proto::events::v1::edge_change::Cause;
use feed_proto::events::v1::{
    ActivityEvent, EdgeChange, EdgeJob, EdgeJobKind, FanoutJob, Job, PurgeJob, activity_event, job,
};
use feed_proto::publish::v1::{NewActivity, OutboxItem, ScheduledActivity};
use prost::Message;

use crate::graph::Graph;
use crate::queue::JobQueue;
use crate::store::{ActivityStore, Claim, DeadJob, JobStats, OutboxEntry, StoreError};
use crate::validate::{self, Limits};

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            StoreError::Backend(m) => ApiError::Internal(m),
        }
    }
}

/// Publish settings.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    /// Input limits.
    pub limits: Limits,
    /// Failed attempts before a job is dead-lettered.
    pub max_attempts: u32,
    /// Inbox cap (rebuilds read this many ids per followed feed).
    pub inbox_cap: usize,
    /// Feed kinds an actor may target with `to` only if they follow the feed
    /// (membership stands in for "may post here" until a policy service exists).
    pub member_only_kinds: Vec<String>,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_attempts: 5,
            inbox_cap: 800,
            member_only_kinds: vec!["group".into(), "company".into()],
        }
    }
}

/// The outcome of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The activity id (0 when scheduled).
    pub id: u64,
    /// An earlier publish with the same (actor, foreign_id) already existed.
    pub duplicate: bool,
    /// Set when the item was scheduled.
    pub schedule_id: Option<String>,
    /// The mode of each feed written to, `user:<actor>` first (empty when scheduled).
    pub deliveries: Vec<(FeedRef, DeliveryMode)>,
}

/// What a fanout worker needs about a pending job.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedJob {
    /// The job.
    pub job: Job,
    /// Its activity is gone or deleted: fanout can stop.
    pub activity_deleted: bool,
    /// Failed attempts.
    pub attempts: u32,
}

/// The publish service.
#[derive(Clone)]
pub struct Publisher {
    store: Arc<dyn ActivityStore>,
    graph: Arc<dyn Graph>,
    queue: Arc<dyn JobQueue>,
    ids: IdGenerator,
    clock: Arc<dyn Clock>,
    cfg: Arc<PublishConfig>,
    /// Edge jobs made from the log's trailing window, by job id, with
    /// their positions (see [`Publisher::ingest_late_edges`]).
    ingested: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
}

/// Reads (50 ms apart) of an activity whose claim another call holds
/// before this one writes it itself.
const WRITER_WAIT_ROUNDS: usize = 10;

/// FNV-1a: a stable fingerprint of a payload (same bytes, same value, on
/// every replica and release), to tell a retry from a conflicting reuse.
fn fingerprint(a: &NewActivity) -> u64 {
    feed_core::keys::stable_hash(&a.encode_to_vec())
}

/// Deterministic job ids: a replay or a re-drive finds the same record.
pub fn fanout_job_id(activity: u64, feed: &str, shard: Option<u64>) -> String {
    match shard {
        None => format!("fan/{activity}/{feed}"),
        Some(s) => format!("fan/{activity}/{feed}/{s}"),
    }
}

/// The job (and event id) that hands an activity change to notify: one per
/// change, so a retried publish or re-driven job emits the same event id.
fn event_job(a: &Activity, change: activity_event::Change, now: i64) -> Job {
    let job_id = format!("event/{}/{}/{}", a.id, change as i32, a.updated_at_ms);
    Job {
        job_id: job_id.clone(),
        created_at_ms: now,
        kind: Some(job::Kind::Event(ActivityEvent {
            event_id: job_id,
            activity: Some(a.clone()),
            change: change as i32,
        })),
    }
}

/// Deterministic purge job ids (root and per shard), like [`fanout_job_id`].
pub fn purge_job_id(activity: u64, feed: &str, shard: Option<u64>) -> String {
    match shard {
        None => format!("purge/{activity}/{feed}"),
        Some(s) => format!("purge/{activity}/{feed}/{s}"),
    }
}

impl Publisher {
    /// A publisher over its dependencies.
    pub fn new(
        store: Arc<dyn ActivityStore>,
        graph: Arc<dyn Graph>,
        queue: Arc<dyn JobQueue>,
        ids: IdGenerator,
        clock: Arc<dyn Clock>,
        cfg: PublishConfig,
    ) -> Self {
        Self {
            store,
            graph,
            queue,
            ids,
            clock,
            cfg: Arc::new(cfg),
            ingested: Arc::default(),
        }
    }

    /// The store (readiness, sweeper).
    pub fn store(&self) -> &Arc<dyn ActivityStore> {
        &self.store
    }

    /// The queue (workers, sweeper).
    pub fn queue(&self) -> &Arc<dyn JobQueue> {
        &self.queue
    }

    fn now(&self) -> i64 {
        self.clock.now_ms() as i64
    }

    /// Checks `to` targets the actor may post to (Invariant 8): tags and
    /// objects are open; another user's feed is not (that is a mention);
    /// member-only kinds need the actor to follow the feed.
    async fn authorize_to(&self, actor: UserId, to: &[FeedRef]) -> Result<(), ApiError> {
        let mut member_checks = Vec::new();
        for (i, f) in to.iter().enumerate() {
            if f.kind() == "user" && f.user_id() != Some(actor) {
                return Err(ApiError::PermissionDenied(format!(
                    "activity.to[{i}]: cannot post into another user's feed; use mentions"
                )));
            }
            if self.cfg.member_only_kinds.iter().any(|k| k == f.kind()) {
                member_checks.push((i, f.clone()));
            }
        }
        if member_checks.is_empty() {
            return Ok(());
        }
        let feeds: Vec<FeedRef> = member_checks.iter().map(|(_, f)| f.clone()).collect();
        let member = self.graph.follows(actor, &feeds).await?;
        for ((i, f), ok) in member_checks.iter().zip(member) {
            if !ok {
                return Err(ApiError::PermissionDenied(format!(
                    "activity.to[{i}]: actor is not a member of {f}"
                )));
            }
        }
        Ok(())
    }

    /// Publishes now, or schedules when `publish_at_ms` is in the future.
    pub async fn publish(&self, new: NewActivity, publish_at_ms: i64) -> Result<Published, ApiError> {
        let to = validate::new_activity(&new, &self.cfg.limits)?;
        let scheduled = publish_at_ms > self.now();
        // An identical retry is answered from its dedup record before
        // authorization (Invariant 14): it is not a new write, and the
        // actor's rights may have changed since the first attempt.
        if !scheduled && let Some(done) = self.identical_retry(&new).await? {
            return Ok(done);
        }
        self.authorize_to(new.actor, &to).await?;
        if scheduled {
            return self.schedule(new, publish_at_ms).await;
        }
        self.publish_now(new, to).await
    }

    /// The first publish of this exact payload under its (actor,
    /// foreign_id), if it was written; None for anything else (a new id, a
    /// different payload, a claim whose writer died before writing).
    async fn identical_retry(&self, new: &NewActivity) -> Result<Option<Published>, ApiError> {
        let Some(held) = self.store.find_foreign(new.actor, &new.foreign_id).await? else {
            return Ok(None);
        };
        if held.fingerprint != fingerprint(new) {
            return Ok(None);
        }
        match self.store.get(&[held.id]).await?.pop().flatten() {
            Some(a) => Ok(Some(self.duplicate_of(&a).await?)),
            None => Ok(None),
        }
    }

    /// The answer to a publish that `a` already is.
    async fn duplicate_of(&self, a: &Activity) -> Result<Published, ApiError> {
        Ok(Published {
            id: a.id,
            duplicate: true,
            schedule_id: None,
            deliveries: self.deliveries(a).await?,
        })
    }

    /// The activity `id` once its claim's writer has written it. A claim
    /// held by another replica's call that is still writing is given a
    /// moment (a commit is one batch); after that its writer is taken for
    /// dead and this call writes the same rows.
    async fn written(&self, id: u64) -> Result<Option<Arc<Activity>>, ApiError> {
        for attempt in 0..WRITER_WAIT_ROUNDS {
            if let Some(a) = self.store.get(&[id]).await?.pop().flatten() {
                return Ok(Some(a));
            }
            if attempt + 1 < WRITER_WAIT_ROUNDS {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        Ok(None)
    }

    /// The mode each of the activity's feeds was written in.
    async fn deliveries(&self, a: &Activity) -> Result<Vec<(FeedRef, DeliveryMode)>, ApiError> {
        Ok(self
            .outbox_entries(a)
            .await?
            .into_iter()
            .map(|e| (e.feed, e.mode))
            .collect())
    }

    async fn schedule(&self, new: NewActivity, publish_at_ms: i64) -> Result<Published, ApiError> {
        // The id is minted at release (Invariant 7); the schedule id orders by creation.
        let schedule_id = uuid::Uuid::now_v7().simple().to_string();
        self.store
            .schedule(&ScheduledActivity {
                schedule_id: schedule_id.clone(),
                publish_at_ms,
                activity: Some(new),
            })
            .await?;
        Ok(Published {
            id: 0,
            duplicate: false,
            schedule_id: Some(schedule_id),
            deliveries: vec![],
        })
    }

    async fn publish_now(&self, new: NewActivity, to: Vec<FeedRef>) -> Result<Published, ApiError> {
        let fp = fingerprint(&new);
        let fresh = self.ids.next_id().map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let (id, existed) = match self.store.claim_foreign(new.actor, &new.foreign_id, fresh, fp).await? {
            Claim::Claimed => (fresh, false),
            Claim::Held { fingerprint, .. } if fingerprint != fp => {
                return Err(ApiError::AlreadyExists(format!(
                    "activity.foreign_id {:?} was already published with a different payload",
                    new.foreign_id
                )));
            }
            Claim::Held { id, .. } => (id, true),
        };
        if existed && let Some(a) = self.written(id).await? {
            return self.duplicate_of(&a).await;
        }
        // Claimed now, or claimed by an attempt that died before writing:
        // (re)write with this id. Only the call that made the claim answers
        // `duplicate: false`.
        let mut feeds = vec![FeedRef::user(new.actor)];
        feeds.extend(to.into_iter().filter(|f| f.user_id() != Some(new.actor)));
        let celebrity = self.graph.celebrity(&feeds).await?;
        let modes: Vec<DeliveryMode> = celebrity
            .iter()
            .map(|c| if *c { DeliveryMode::Pull } else { DeliveryMode::Push })
            .collect();
        let now = self.now();
        let activity = Activity {
            id,
            actor: new.actor,
            verb: new.verb,
            object: new.object,
            target: new.target,
            foreign_id: new.foreign_id,
            time_ms: if new.time_ms == 0 { now } else { new.time_ms },
            to: feeds.iter().skip(1).map(|f| f.to_string()).collect(),
            visibility: new.visibility,
            allow_user_ids: new.allow_user_ids,
            deny_user_ids: new.deny_user_ids,
            extra: new.extra,
            status: ActivityStatus::Active as i32,
            mentions: new.mentions,
            delivery_mode: modes[0] as i32,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let outbox: Vec<OutboxEntry> = feeds
            .iter()
            .zip(&modes)
            .map(|(f, m)| OutboxEntry {
                feed: f.clone(),
                id,
                mode: *m,
            })
            .collect();
        let mut jobs = self.fanout_jobs(&activity, &outbox);
        jobs.push(event_job(&activity, activity_event::Change::Created, now));
        self.store.commit_publish(&activity, &outbox, &jobs).await?;
        self.enqueue(&jobs).await;
        metrics::counter!("feed_publish_activities_total", "mode" => modes[0].as_str_name()).increment(1);
        Ok(Published {
            id,
            duplicate: existed,
            schedule_id: None,
            deliveries: feeds.into_iter().zip(modes).collect(),
        })
    }

    /// One root fanout job per push-mode feed. A private item is pushed to
    /// nobody: that fact cannot relax without an update, which re-fans out.
    fn fanout_jobs(&self, a: &Activity, outbox: &[OutboxEntry]) -> Vec<Job> {
        if a.visibility == Visibility::Private as i32 || a.status == ActivityStatus::Deleted as i32 {
            return vec![];
        }
        outbox
            .iter()
            .filter(|e| e.mode == DeliveryMode::Push)
            .map(|e| Job {
                job_id: fanout_job_id(a.id, &e.feed.to_string(), None),
                created_at_ms: self.now(),
                kind: Some(job::Kind::Fanout(FanoutJob {
                    activity_id: a.id,
                    feed: e.feed.to_string(),
                    shard: None,
                    actor: a.actor,
                })),
            })
            .collect()
    }

    /// Hands jobs to the queue. A failure is logged, not returned: the jobs
    /// are already durable and the sweeper re-drives them.
    async fn enqueue(&self, jobs: &[Job]) {
        if jobs.is_empty() {
            return;
        }
        if let Err(e) = self.queue.enqueue(jobs).await {
            tracing::warn!(error = %e, jobs = jobs.len(), "enqueue failed; the sweeper will re-drive");
        }
    }

    /// Resolves an activity reference to a stored activity.
    pub async fn resolve(&self, id: Option<u64>, foreign: Option<(UserId, &str)>) -> Result<Activity, ApiError> {
        let id = match (id, foreign) {
            (Some(id), _) if id != 0 => id,
            (_, Some((actor, fid))) => self
                .store
                .find_foreign(actor, fid)
                .await?
                .map(|held| held.id)
                .ok_or_else(|| ApiError::NotFound(format!("activity ({actor}, {fid:?})")))?,
            _ => {
                return Err(ApiError::invalid("ref", "set id or foreign (actor, foreign_id)"));
            }
        };
        self.store
            .get(&[id])
            .await?
            .pop()
            .flatten()
            .map(Arc::unwrap_or_clone)
            .ok_or_else(|| ApiError::NotFound(format!("activity {id}")))
    }

    /// Applies a partial update. Widening a private item's visibility fans it out.
    pub async fn update(
        &self,
        mut a: Activity,
        set: &[String],
        unset: &[String],
        values: &NewActivity,
    ) -> Result<Activity, ApiError> {
        if a.status == ActivityStatus::Deleted as i32 {
            return Err(ApiError::NotFound(format!("activity {} (deleted)", a.id)));
        }
        let was_private = a.visibility == Visibility::Private as i32;
        for f in set {
            match f.as_str() {
                "verb" => {
                    validate::verb_field(&values.verb)?;
                    a.verb = values.verb.clone();
                }
                "object" => {
                    feed_core::validate::text("values.object", &values.object, 256, false)?;
                    a.object = values.object.clone();
                }
                "target" => {
                    feed_core::validate::text("values.target", &values.target, 256, true)?;
                    a.target = values.target.clone();
                }
                "extra" => {
                    validate::extra(&values.extra, &self.cfg.limits)?;
                    a.extra = values.extra.clone();
                }
                "visibility" => {
                    a.visibility = validate::visibility(values)? as i32;
                }
                "allow_user_ids" => a.allow_user_ids = values.allow_user_ids.clone(),
                "deny_user_ids" => a.deny_user_ids = values.deny_user_ids.clone(),
                "time_ms" => a.time_ms = values.time_ms,
                other => {
                    return Err(ApiError::invalid(
                        "set_fields",
                        format!("unknown or immutable field {other:?}"),
                    ));
                }
            }
        }
        for f in unset {
            match f.as_str() {
                "target" => a.target.clear(),
                "extra" => a.extra.clear(),
                "allow_user_ids" => a.allow_user_ids.clear(),
                "deny_user_ids" => a.deny_user_ids.clear(),
                other => {
                    return Err(ApiError::invalid(
                        "unset_fields",
                        format!("field {other:?} cannot be unset"),
                    ));
                }
            }
        }
        for (field, ids) in [
            ("values.allow_user_ids", &a.allow_user_ids),
            ("values.deny_user_ids", &a.deny_user_ids),
        ] {
            feed_core::validate::batch_len(field, ids, self.cfg.limits.max_list)?;
        }
        a.updated_at_ms = self.now();
        let mut jobs = if was_private && a.visibility != Visibility::Private as i32 {
            // Nothing was pushed while private: push now, as a follow backfills.
            let outbox = self.outbox_entries(&a).await?;
            self.fanout_jobs(&a, &outbox)
        } else {
            vec![]
        };
        jobs.push(event_job(&a, activity_event::Change::Updated, self.now()));
        self.store.replace(&a, &jobs).await?;
        self.enqueue(&jobs).await;
        Ok(a)
    }

    /// The activity's outbox entries with the mode each was published in:
    /// a later fanout must not push through a feed whose followers pull it.
    async fn outbox_entries(&self, a: &Activity) -> Result<Vec<OutboxEntry>, ApiError> {
        let mut feeds = vec![FeedRef::user(a.actor)];
        feeds.extend(a.to.iter().filter_map(|t| FeedRef::parse(t).ok()));
        let mut out = Vec::with_capacity(feeds.len());
        for feed in feeds {
            if let Some(mode) = self.store.outbox_mode(&feed, a.id).await? {
                out.push(OutboxEntry { feed, id: a.id, mode });
            }
        }
        Ok(out)
    }

    /// Soft-deletes; an async purge removes the id from inboxes. False when already deleted.
    pub async fn delete(&self, mut a: Activity) -> Result<bool, ApiError> {
        if a.status == ActivityStatus::Deleted as i32 {
            return Ok(false);
        }
        a.status = ActivityStatus::Deleted as i32;
        a.updated_at_ms = self.now();
        let mut jobs: Vec<Job> = self
            .outbox_entries(&a)
            .await?
            .into_iter()
            .map(|e| Job {
                job_id: purge_job_id(a.id, &e.feed.to_string(), None),
                created_at_ms: self.now(),
                kind: Some(job::Kind::Purge(PurgeJob {
                    activity_id: a.id,
                    feed: e.feed.to_string(),
                    shard: None,
                })),
            })
            .collect();
        jobs.push(event_job(&a, activity_event::Change::Deleted, self.now()));
        self.store.replace(&a, &jobs).await?;
        self.enqueue(&jobs).await;
        Ok(true)
    }

    /// Activities by id in request order, and the ids not found; shared
    /// with the store's cache, so a reader copies only what it keeps.
    pub async fn get(&self, ids: &[u64], include_deleted: bool) -> Result<(Vec<Arc<Activity>>, Vec<u64>), ApiError> {
        let found = self.store.get(ids).await?;
        let mut out = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for (id, a) in ids.iter().zip(found) {
            match a {
                Some(a) if include_deleted || a.status != ActivityStatus::Deleted as i32 => out.push(a),
                _ => missing.push(*id),
            }
        }
        Ok((out, missing))
    }

    /// An actor's scheduled items.
    pub async fn list_scheduled(
        &self,
        actor: UserId,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ScheduledActivity>, ApiError> {
        Ok(self.store.list_scheduled(actor, after, limit).await?)
    }

    /// Cancels a scheduled item.
    pub async fn cancel_scheduled(&self, actor: UserId, schedule_id: &str) -> Result<bool, ApiError> {
        Ok(self.store.remove_scheduled(actor, schedule_id).await?)
    }

    /// Publishes every due scheduled item. Exactly once across replicas and
    /// restarts: the release is an ordinary publish deduplicated by
    /// (actor, foreign_id), and the schedule row goes only after it.
    pub async fn release_due(&self) -> Result<usize, ApiError> {
        let due = self.store.due_scheduled(self.now(), 100).await?;
        let mut released = 0;
        for item in due {
            let Some(new) = item.activity else { continue };
            let actor = new.actor;
            let to = match validate::new_activity(&new, &self.cfg.limits) {
                Ok(to) => to,
                Err(e) => {
                    tracing::warn!(schedule_id = %item.schedule_id, error = %e, "dropping invalid scheduled item");
                    self.store.remove_scheduled(actor, &item.schedule_id).await?;
                    continue;
                }
            };
            match self.publish_now(new, to).await {
                Ok(_) | Err(ApiError::AlreadyExists(_)) => {
                    self.store.remove_scheduled(actor, &item.schedule_id).await?;
                    released += 1;
                }
                Err(e) => {
                    tracing::warn!(schedule_id = %item.schedule_id, error = %e, "release failed; will retry")
                }
            }
        }
        Ok(released)
    }

    /// Re-drives jobs not changed for `stale_after_ms` (lost from the queue,
    /// or their worker died). Returns how many were re-enqueued.
    pub async fn sweep(&self, stale_after_ms: i64) -> Result<usize, ApiError> {
        let now = self.now();
        let stale = self.store.stale_jobs(now - stale_after_ms, now, 10_000).await?;
        self.enqueue(&stale).await;
        if let Err(e) = self.queue.trim().await {
            tracing::warn!(error = %e, "stream trim failed");
        }
        Ok(stale.len())
    }

    /// Runs the fanout of an activity again (admin). Returns the job ids.
    pub async fn rerun_fanout(&self, id: u64) -> Result<Vec<String>, ApiError> {
        let a = self.resolve(Some(id), None).await?;
        let jobs = self.fanout_jobs(&a, &self.outbox_entries(&a).await?);
        self.store.put_jobs(&jobs).await?;
        self.enqueue(&jobs).await;
        Ok(jobs.into_iter().map(|j| j.job_id).collect())
    }

    /// Dead-lettered jobs (admin).
    pub async fn dead_letters(&self, after: &str, limit: usize) -> Result<Vec<DeadJob>, ApiError> {
        Ok(self.store.dead_jobs(after, limit).await?)
    }

    /// Moves dead jobs back to the queue (admin).
    pub async fn replay_dead(&self, ids: &[String]) -> Result<usize, ApiError> {
        let jobs = self.store.revive_jobs(ids, self.now()).await?;
        self.enqueue(&jobs).await;
        Ok(jobs.len())
    }

    /// Pending and dead job counts (admin).
    pub async fn lag(&self) -> Result<JobStats, ApiError> {
        Ok(self.store.job_stats().await?)
    }

    /// A pending job for a worker; None once done.
    pub async fn load_job(&self, job_id: &str) -> Result<Option<LoadedJob>, ApiError> {
        let Some(state) = self.store.job(job_id).await? else {
            return Ok(None);
        };
        let activity_id = match &state.job.kind {
            Some(job::Kind::Fanout(f)) => Some(f.activity_id),
            _ => None,
        };
        let activity_deleted = match activity_id {
            Some(id) => !matches!(
                self.store.get(&[id]).await?.pop().flatten(),
                Some(a) if a.status != ActivityStatus::Deleted as i32
            ),
            None => false,
        };
        Ok(Some(LoadedJob {
            job: state.job,
            activity_deleted,
            attempts: state.attempts,
        }))
    }

    /// Marks a job done with the sub-jobs it spawned.
    pub async fn complete_job(&self, job_id: &str, spawned: &[Job]) -> Result<(), ApiError> {
        Ok(self.store.complete_job(job_id, spawned).await?)
    }

    /// Records a failed attempt; true when the job is now dead-lettered.
    pub async fn fail_job(&self, job_id: &str, error: &str) -> Result<bool, ApiError> {
        let dead = self
            .store
            .fail_job(job_id, error, self.cfg.max_attempts, self.now())
            .await?;
        if dead {
            metrics::counter!("feed_publish_dead_letters_total").increment(1);
            tracing::error!(job_id, error, "job dead-lettered");
        }
        Ok(dead)
    }

    /// Rebuilds a user's inbox from the push-mode outbox entries of the feeds
    /// they follow: marker first, bounded per feed, floor at what the read
    /// can guarantee (Invariant 1). Returns the number of ids written.
    pub async fn rebuild_inbox(
        &self,
        inbox: &dyn InboxStore,
        user: UserId,
        following: &[FeedRef],
    ) -> Result<usize, ApiError> {
        let cap = self.cfg.inbox_cap;
        // Ids minted up to a minute before the marker may still be in flight
        // through a slow publish; the provisional floor admits their pushes.
        let provisional = min_id_at(self.clock.now_ms().saturating_sub(60_000));
        let created = inbox
            .mark_live(user, provisional)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let mut floor = 0u64;
        let mut ids = Vec::new();
        for feed in following {
            let entries = self.store.outbox(feed, None, cap).await?;
            if entries.len() == cap
                && let Some(last) = entries.last()
            {
                // This feed may hold more below: complete only down to here.
                floor = floor.max(last.id);
            }
            ids.extend(entries.iter().filter(|e| e.mode == DeliveryMode::Push).map(|e| e.id));
        }
        let activities = self.store.get(&ids).await?;
        let mut ids: Vec<u64> = ids
            .into_iter()
            .zip(activities)
            .filter(|(_, a)| {
                a.as_ref().is_some_and(|a| {
                    a.visibility != Visibility::Private as i32
                        && a.status != ActivityStatus::Deleted as i32
                        && a.actor != user
                })
            })
            .map(|(id, _)| id)
            .filter(|id| *id >= floor)
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        if ids.len() > cap {
            ids.truncate(cap);
            floor = floor.max(*ids.last().unwrap_or(&0));
        }
        inbox
            .rebuild(user, &ids, floor, created.then_some(provisional))
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        metrics::counter!("feed_inbox_rebuilds_total").increment(1);
        Ok(ids.len())
    }
}

/// Deterministic id of an edge job: one per edge version.
pub fn edge_job_id(follower: UserId, feed: &str, version: u64) -> String {
    format!("edge/{follower}/{feed}/{version}")
}

fn edge_job_id_of(c: &EdgeChange) -> String {
    edge_job_id(c.follower_id, &c.feed, c.edge_version)
}

/// Edge log entries read per call.
const EDGE_PAGE: u32 = 1000;

impl Publisher {
    /// Turns new entries of follow-graph's edge change log into durable
    /// edge jobs (the cursor advances in the same write), then enqueues them:
    /// a backfill when the edge now exists, a purge when it does not.
    /// Returns the number of changes consumed.
    pub async fn ingest_edges(&self) -> Result<usize, ApiError> {
        let mut consumed = 0;
        loop {
            let cursor = self.store.edge_cursor().await?;
            let changes = self.graph.edge_changes(cursor, EDGE_PAGE).await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                return Ok(consumed);
            };
            let jobs = self.edge_jobs(&changes);
            self.store.record_edge_jobs(&jobs, last).await?;
            self.remember_ingested(&changes);
            self.enqueue(&jobs).await;
            consumed += changes.len();
            if changes.len() < EDGE_PAGE as usize {
                return Ok(consumed);
            }
        }
    }

    /// Re-reads the log's trailing window behind the cursor
    /// ([`feed_core::edge_log`]) and turns the changes committed there after
    /// the cursor passed them into jobs; what was already turned into a job
    /// is known by its deterministic job id. After a restart the window is
    /// taken once more (its jobs are idempotent). Returns the late changes.
    pub async fn ingest_late_edges(&self) -> Result<usize, ApiError> {
        let cursor = self.store.edge_cursor().await?;
        let mut after = feed_core::edge_log::window_start(cursor);
        let mut late = 0;
        loop {
            let changes = self.graph.edge_changes(after, EDGE_PAGE).await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                break;
            };
            let missed: Vec<EdgeChange> = {
                let seen = self.ingested.lock().unwrap_or_else(|p| p.into_inner());
                changes
                    .iter()
                    .filter(|c| c.seq <= cursor && !seen.contains_key(&edge_job_id_of(c)))
                    .cloned()
                    .collect()
            };
            if !missed.is_empty() {
                tracing::warn!(
                    changes = missed.len(),
                    "edge changes committed behind the cursor; ingesting them"
                );
                let jobs = self.edge_jobs(&missed);
                // The cursor stays: it already passed these.
                self.store.put_jobs(&jobs).await?;
                self.remember_ingested(&missed);
                self.enqueue(&jobs).await;
                late += missed.len();
            }
            if changes.len() < EDGE_PAGE as usize || last >= cursor {
                break;
            }
            after = last;
        }
        let floor = feed_core::edge_log::window_start(cursor);
        self.ingested
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, seq| *seq >= floor);
        Ok(late)
    }

    fn remember_ingested(&self, changes: &[EdgeChange]) {
        let mut seen = self.ingested.lock().unwrap_or_else(|p| p.into_inner());
        for c in changes {
            seen.insert(edge_job_id_of(c), c.seq);
        }
    }

    /// One job per change, for the edge's new state: a job of an older
    /// version is skipped (Invariant 4), so a change without one (a mute
    /// after an unfollow) would strand its purge. A lifted block or mute
    /// brings back the author's items through every followed feed
    /// (Invariant 5), which covers the backfill of user:<author> itself.
    fn edge_jobs(&self, changes: &[EdgeChange]) -> Vec<Job> {
        let now = self.now();
        changes
            .iter()
            .map(|c| {
                let relaxed = matches!(
                    Cause::try_from(c.cause).unwrap_or(Cause::Unspecified),
                    Cause::Unblock | Cause::Unmute
                );
                let kind = if relaxed {
                    EdgeJobKind::Relax
                } else if c.following {
                    EdgeJobKind::Backfill
                } else {
                    EdgeJobKind::Purge
                };
                Job {
                    job_id: edge_job_id_of(c),
                    created_at_ms: now,
                    kind: Some(job::Kind::Edge(EdgeJob {
                        kind: kind as i32,
                        follower_id: c.follower_id,
                        feed: c.feed.clone(),
                        edge_version: c.edge_version,
                    })),
                }
            })
            .collect()
    }

    /// A feed's newest outbox entries with what backfill and purge need.
    pub async fn outbox_items(&self, feed: &FeedRef, limit: usize) -> Result<Vec<OutboxItem>, ApiError> {
        let entries = self.store.outbox(feed, None, limit).await?;
        let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
        let mut items = self.items(&ids).await?;
        for (item, e) in items.iter_mut().zip(&entries) {
            item.mode = e.mode as i32;
        }
        Ok(items)
    }

    /// Activities by id with their push-mode sources; unknown ids left out.
    pub async fn items(&self, ids: &[u64]) -> Result<Vec<OutboxItem>, ApiError> {
        let activities = self.store.get(ids).await?;
        let mut out = Vec::with_capacity(ids.len());
        for a in activities.into_iter().flatten() {
            let mut push_sources = Vec::new();
            let mut sources = vec![FeedRef::user(a.actor)];
            sources.extend(a.to.iter().filter_map(|t| FeedRef::parse(t).ok()));
            for s in sources {
                if self.store.outbox_mode(&s, a.id).await? == Some(DeliveryMode::Push) {
                    push_sources.push(s.to_string());
                }
            }
            out.push(OutboxItem {
                id: a.id,
                actor: a.actor,
                to: a.to.clone(),
                mode: a.delivery_mode,
                private: a.visibility == Visibility::Private as i32,
                deleted: a.status == ActivityStatus::Deleted as i32,
                push_sources,
            });
        }
        Ok(out)
    }

    /// The inbox cap (backfills read this many entries per feed).
    pub fn inbox_cap(&self) -> usize {
        self.cfg.inbox_cap
    }
}

impl Publisher {
    /// The newest entries below `before` across `feeds`, merged newest
    /// first, at most `limit` distinct ids; true when a feed may hold more.
    pub async fn read_outboxes(
        &self,
        feeds: &[FeedRef],
        before: Option<u64>,
        limit: usize,
        pull_only: bool,
    ) -> Result<(Vec<OutboxEntry>, bool), ApiError> {
        if pull_only {
            // Bare ids: most of them fall below the page, and only those
            // kept become entries (a feed clone each).
            let (which, lists): (Vec<usize>, Vec<Vec<u64>>) =
                self.store.pulled_many(feeds, before, limit).await?.into_iter().unzip();
            let more = lists.iter().any(|l| l.len() >= limit);
            let (merged, cut) = merge_newest(lists, |id| *id, limit);
            let entries = merged
                .into_iter()
                .map(|(list, id)| OutboxEntry {
                    feed: feeds[which[list]].clone(),
                    id,
                    mode: DeliveryMode::Pull,
                })
                .collect();
            return Ok((entries, more || cut));
        }
        let mut lists = Vec::new();
        for feed in feeds {
            let entries = self.store.outbox(feed, before, limit).await?;
            if !entries.is_empty() {
                lists.push(entries);
            }
        }
        let more = lists.iter().any(|l| l.len() >= limit);
        let (merged, cut) = merge_newest(lists, |e| e.id, limit);
        Ok((merged.into_iter().map(|(_, e)| e).collect(), more || cut))
    }
}

/// Merges lists that are each newest first, with distinct ids, into one,
/// newest first, keeping every entry of the first `limit` distinct ids (an
/// id may come from several feeds), each with its list's index; true when
/// entries were left out. A heap
/// of the lists' heads: a page takes `limit` ids from dozens of lists of
/// `limit` each, and looks at little more than what it keeps.
fn merge_newest<T>(mut lists: Vec<Vec<T>>, id_of: impl Fn(&T) -> u64, limit: usize) -> (Vec<(usize, T)>, bool) {
    // One list: its first `limit` entries are the answer (the common read:
    // the reader's own outbox, a single celebrity).
    if lists.len() <= 1 {
        let list = lists.pop().unwrap_or_default();
        let cut = list.len() > limit;
        return (list.into_iter().take(limit).map(|e| (0, e)).collect(), cut);
    }
    let mut lists: Vec<_> = lists.into_iter().map(|l| l.into_iter().peekable()).collect();
    let mut heads: std::collections::BinaryHeap<(u64, usize)> = lists
        .iter_mut()
        .enumerate()
        .filter_map(|(i, l)| l.peek().map(|e| (id_of(e), i)))
        .collect();
    let mut merged = Vec::with_capacity(limit + lists.len());
    let mut distinct = 0;
    let mut last = None;
    while let Some((id, i)) = heads.pop() {
        if last != Some(id) {
            if distinct == limit {
                return (merged, true);
            }
            distinct += 1;
            last = Some(id);
        }
        merged.extend(lists[i].next().map(|e| (i, e)));
        if let Some(next) = lists[i].peek() {
            heads.push((id_of(next), i));
        }
    }
    (merged, false)
}

impl Publisher {
    /// Work not yet reflected in `user`'s inbox (see [`crate::store::PendingWork`]).
    pub async fn pending_work(&self, user: UserId) -> Result<crate::store::PendingWork, ApiError> {
        Ok(self.store.pending_work(user).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(feed: &str, ids: &[u64]) -> Vec<OutboxEntry> {
        let feed = FeedRef::parse(feed).expect("feed");
        ids.iter()
            .map(|id| OutboxEntry {
                feed: feed.clone(),
                id: *id,
                mode: DeliveryMode::Pull,
            })
            .collect()
    }

    #[test]
    fn merged_outboxes_keep_the_newest_distinct_ids_with_every_feed_of_each() {
        let (merged, cut) = merge_newest(
            vec![
                list("user:1", &[90, 50, 10]),
                list("user:2", &[95, 50, 40]),
                list("tag:a", &[60]),
            ],
            |e| e.id,
            4,
        );
        let got: Vec<(u64, String)> = merged.iter().map(|(_, e)| (e.id, e.feed.to_string())).collect();
        let want = [
            (95, "user:2"),
            (90, "user:1"),
            (60, "tag:a"),
            (50, "user:1"),
            (50, "user:2"),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((id, feed), (wid, wfeed)) in got.iter().zip(want) {
            assert_eq!(*id, wid);
            if *id != 50 {
                assert_eq!(feed, wfeed);
            }
        }
        assert!(cut, "ids 40 and 10 were left out");
        let (all, cut) = merge_newest(vec![list("user:1", &[3, 1]), list("user:2", &[2])], |e| e.id, 10);
        assert_eq!(all.iter().map(|(_, e)| e.id).collect::<Vec<_>>(), vec![3, 2, 1]);
        assert!(!cut);
        let (one, cut) = merge_newest(vec![list("user:1", &[9, 7, 5])], |e| e.id, 2);
        assert_eq!(one.iter().map(|(_, e)| e.id).collect::<Vec<_>>(), vec![9, 7]);
        assert!(cut, "id 5 was left out");
        let (one, cut) = merge_newest(vec![list("user:1", &[9, 7])], |e| e.id, 2);
        assert_eq!((one.len(), cut), (2, false));
        assert_eq!(merge_newest(Vec::<Vec<u64>>::new(), |e| *e, 2), (vec![], false));
    }

    #[test]
    fn merging_many_lists_keeps_what_sorting_them_all_keeps() {
        // 30 lists of overlapping ids: the heap merge against a full sort.
        let lists: Vec<Vec<(u64, usize)>> = (0..30)
            .map(|l| {
                let mut ids: Vec<u64> = (0..50u64).map(|k| (k * 7919 + l as u64 * 104_729) % 400).collect();
                ids.sort_unstable_by(|a, b| b.cmp(a));
                ids.dedup();
                ids.into_iter().map(|id| (id, l)).collect()
            })
            .collect();
        for limit in [1, 5, 40, 1000] {
            let mut all: Vec<(u64, usize)> = lists.iter().flatten().copied().collect();
            all.sort_unstable_by(|a, b| b.cmp(a));
            let mut distinct: Vec<u64> = all.iter().map(|e| e.0).collect();
            distinct.dedup();
            let cut = distinct.len() > limit;
            let floor = distinct[limit.min(distinct.len()) - 1];
            all.retain(|e| e.0 >= floor);
            let (got, got_cut) = merge_newest(lists.clone(), |e| e.0, limit);
            assert!(got.iter().all(|(list, e)| *list == e.1), "each entry names its list");
            let mut got: Vec<(u64, usize)> = got.into_iter().map(|(_, e)| e).collect();
            assert!(got.is_sorted_by(|a, b| a.0 >= b.0), "newest first");
            got.sort_unstable_by(|a, b| b.cmp(a));
            assert_eq!((got, got_cut), (all, cut), "limit {limit}");
        }
    }
}
