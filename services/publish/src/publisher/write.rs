//! Publish, update and delete: authorization, idempotent retries, the
//! commit with its jobs, and the activity event for notify.

use std::sync::Arc;

use feed_core::{ApiError, FeedRef, UserId};
use feed_proto::common::v1::{Activity, ActivityStatus, DeliveryMode, Visibility};
use feed_proto::events::v1::{ActivityEvent, FanoutJob, Job, PurgeJob, activity_event, job};
use feed_proto::publish::v1::NewActivity;
use prost::Message;

use super::{Publisher, budget, fanout_job_id, purge_job_id};
use crate::store::{ForeignClaim, OutboxEntry};
use crate::validate::{self};

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

/// Reads (50 ms apart) of an activity whose claim another call holds
/// before this one writes it itself.
const WRITER_WAIT_ROUNDS: usize = 10;

/// FNV-1a: a stable fingerprint of a payload (same bytes, same value, on
/// every replica and release), to tell a retry from a conflicting reuse.
fn fingerprint(a: &NewActivity) -> u64 {
    feed_core::keys::stable_hash(&a.encode_to_vec())
}

/// The job (and event id) that hands an activity change to notify: one per
/// change, so a retried publish or re-driven job emits the same event id.
fn event_job(a: &Activity, change: activity_event::Change, now: i64) -> Job {
    let job_id = format!("event/{}/{}/{}", a.id, change as i32, a.updated_at_ms);
    Job {
        job_id: job_id.clone(),
        created_at_ms: now,
        failed_at_ms: 0,
        bulk: false,
        kind: Some(job::Kind::Event(ActivityEvent {
            event_id: job_id,
            activity: Some(a.clone()),
            change: change as i32,
        })),
    }
}

impl Publisher {
    /// Checks `to` targets the actor may post to (Invariant 8): tags and
    /// objects are open; another user's feed is not (that is a mention);
    /// member-only kinds need the actor to follow the feed.
    pub(super) async fn authorize_to(&self, actor: UserId, to: &[FeedRef]) -> Result<(), ApiError> {
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
        let member = self.graph.members(actor, &feeds).await?;
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

    pub(super) async fn publish_now(&self, new: NewActivity, to: Vec<FeedRef>) -> Result<Published, ApiError> {
        let fp = fingerprint(&new);
        let fresh = self.ids.next_id()?;
        let (id, existed) = match self.store.claim_foreign(new.actor, &new.foreign_id, fresh, fp).await? {
            ForeignClaim::Claimed => (fresh, false),
            ForeignClaim::Held { fingerprint, .. } if fingerprint != fp => {
                return Err(ApiError::AlreadyExists(format!(
                    "activity.foreign_id {:?} was already published with a different payload",
                    new.foreign_id
                )));
            }
            ForeignClaim::Held { id, .. } => (id, true),
        };
        if existed && let Some(a) = self.written(id).await? {
            return self.duplicate_of(&a).await;
        }
        // Claimed now, or claimed by an attempt that died before writing:
        // (re)write with this id. Only the call that made the claim answers
        // `duplicate: false`.
        let mut feeds = vec![FeedRef::user(new.actor)];
        feeds.extend(to.into_iter().filter(|f| f.user_id() != Some(new.actor)));
        let reach = self.graph.reach(&feeds).await?;
        let modes: Vec<DeliveryMode> = reach
            .iter()
            .map(|r| {
                if r.celebrity {
                    DeliveryMode::Pull
                } else {
                    DeliveryMode::Push
                }
            })
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
        // A private item is pushed to nobody (`fanout_jobs`).
        let cost = if activity.visibility == Visibility::Private as i32 {
            0
        } else {
            budget::fanout_cost(&reach)
        };
        self.budget
            .route(activity.actor, cost, &mut jobs, std::time::Instant::now())
            .await;
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
    pub(super) fn fanout_jobs(&self, a: &Activity, outbox: &[OutboxEntry]) -> Vec<Job> {
        if a.visibility == Visibility::Private as i32 || a.status == ActivityStatus::Deleted as i32 {
            return vec![];
        }
        outbox
            .iter()
            .filter(|e| e.mode == DeliveryMode::Push)
            .map(|e| Job {
                job_id: fanout_job_id(a.id, &e.feed.to_string(), None),
                created_at_ms: self.now(),
                failed_at_ms: 0,
                bulk: false,
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
    pub(super) async fn enqueue(&self, jobs: &[Job]) {
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
        self.budget
            .route(a.actor, budget::job_cost(&jobs), &mut jobs, std::time::Instant::now())
            .await;
        self.store.replace(&a, &jobs).await?;
        self.enqueue(&jobs).await;
        Ok(a)
    }

    /// The activity's outbox entries with the mode each was published in:
    /// a later fanout must not push through a feed whose followers pull it.
    pub(super) async fn outbox_entries(&self, a: &Activity) -> Result<Vec<OutboxEntry>, ApiError> {
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
                failed_at_ms: 0,
                bulk: false,
                kind: Some(job::Kind::Purge(PurgeJob {
                    activity_id: a.id,
                    feed: e.feed.to_string(),
                    shard: None,
                })),
            })
            .collect();
        jobs.push(event_job(&a, activity_event::Change::Deleted, self.now()));
        self.budget
            .route(a.actor, budget::job_cost(&jobs), &mut jobs, std::time::Instant::now())
            .await;
        self.store.replace(&a, &jobs).await?;
        self.enqueue(&jobs).await;
        Ok(true)
    }
}
