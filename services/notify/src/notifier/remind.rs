//! Reminds: validation, delivery to named recipients and to subscribers
//! in paged background jobs, and the sweeper that re-drives stale jobs.

use std::time::Duration;

use feed_core::{ApiError, UserId, validate};
use feed_proto::notify::v1::{
    CreateRemindRequest, NoteRecord, Notification, NotificationKind, PolicyAction, RemindJob,
};

use super::{MENTION, Notifier, check_event_id, check_name, note_id};
use crate::store::{EventClaim, GroupChange, Subscriber};

/// Latest actors kept on a remind group.
const LATEST_ACTORS: usize = 5;

/// The result of CreateRemind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemindOutcome {
    /// Recipients delivered to by this call.
    pub recipients: u32,
    /// The event id was seen before.
    pub duplicate: bool,
    /// Background jobs deliver to the remaining subscribers.
    pub pending: bool,
}

impl Notifier {
    fn validate_remind(&self, r: &CreateRemindRequest) -> Result<(), ApiError> {
        check_event_id(&r.event_id)?;
        validate::user_id("actor", r.actor)?;
        check_name("action", &r.action, 32)?;
        validate::text("object_id", &r.object_id, 256, false)?;
        check_name("object_type", &r.object_type, 64)?;
        validate::text("target", &r.target, 256, true)?;
        validate::batch_len("recipients", &r.recipients, 100)?;
        for (i, u) in r.recipients.iter().enumerate() {
            validate::user_id(&format!("recipients[{i}]"), *u)?;
        }
        if r.occurred_at_ms < 0 {
            return Err(ApiError::invalid("occurred_at_ms", "must not be negative"));
        }
        Ok(())
    }

    /// CreateRemind as a caller asks for it: a time in the future is now
    /// (a note dated 2100 would sort above every real one for as long as it
    /// is kept). Reminds made from activity events keep the activity's own
    /// times, which order them against the subscriptions they make.
    pub async fn create_remind_for_caller(&self, mut r: CreateRemindRequest) -> Result<RemindOutcome, ApiError> {
        r.occurred_at_ms = r.occurred_at_ms.min(self.now() as i64);
        self.create_remind(r).await
    }

    /// CreateRemind: delivered to the object's subscribers whose reason
    /// allows the action (and to `recipients` directly). The first page is
    /// delivered in the call; a larger audience continues in jobs.
    pub async fn create_remind(&self, r: CreateRemindRequest) -> Result<RemindOutcome, ApiError> {
        self.validate_remind(&r)?;
        let occurred = if r.occurred_at_ms > 0 {
            r.occurred_at_ms
        } else {
            self.now() as i64
        };
        let mut job = RemindJob {
            job_id: r.event_id.clone(),
            remind: Some(r),
            after_user: 0,
            occurred_at_ms: occurred,
            updated_ms: self.now() as i64,
        };
        // The job first: a claim without a job would lose the remind if this call died.
        self.inner.store.put_job_if_absent(&job).await?;
        if let EventClaim::Held(_) = self.inner.store.claim_event(&job.job_id, 0).await? {
            let pending = self.inner.store.job(&job.job_id).await?.is_some();
            return Ok(RemindOutcome {
                duplicate: true,
                pending,
                ..Default::default()
            });
        }
        let (recipients, done) = self.remind_page(&mut job).await?;
        if !done && let Err(e) = self.inner.jobs.enqueue(std::slice::from_ref(&job)).await {
            tracing::warn!(error = %e, job_id = %job.job_id, "remind job enqueue failed; the sweeper will re-drive");
        }
        metrics::counter!("feed_notify_created_total", "kind" => "remind").increment(1);
        Ok(RemindOutcome {
            recipients,
            duplicate: false,
            pending: !done,
        })
    }

    /// Runs a remind job to the end from its durable record (a worker or
    /// the sweeper); a finished or unknown job is a no-op.
    pub async fn run_remind_job(&self, job_id: &str) -> Result<u32, ApiError> {
        let Some(mut job) = self.inner.store.job(job_id).await? else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let (n, done) = self.remind_page(&mut job).await?;
            total += n;
            if done {
                return Ok(total);
            }
        }
    }

    /// Re-enqueues remind jobs idle for `stale` that the queue no longer
    /// holds (lost, not merely waiting in a backlog or running); returns
    /// how many. Each idle job is touched, so one still held is asked
    /// about again a stale period later.
    pub async fn sweep(&self, stale: Duration) -> Result<usize, ApiError> {
        let now = self.now() as i64;
        let mut idle = Vec::new();
        for mut job in self.inner.store.jobs(100).await? {
            if now - job.updated_ms >= stale.as_millis() as i64 {
                job.updated_ms = now;
                self.inner.store.put_job(&job).await?;
                idle.push(job);
            }
        }
        let ids: Vec<&str> = idle.iter().map(|j| j.job_id.as_str()).collect();
        let held = self.inner.jobs.held(&ids).await?;
        let lost: Vec<RemindJob> = idle
            .iter()
            .zip(held)
            .filter(|(_, held)| !held)
            .map(|(j, _)| j.clone())
            .collect();
        if !lost.is_empty() {
            self.inner.jobs.enqueue(&lost).await?;
        }
        Ok(lost.len())
    }

    /// Delivers one page of a remind job and records the progress (or
    /// removes the finished job). The direct recipients go with the first page.
    async fn remind_page(&self, job: &mut RemindJob) -> Result<(u32, bool), ApiError> {
        let r = job.remind.clone().unwrap_or_default();
        let mut delivered = 0;
        if job.after_user == 0 {
            // Logged before the subscribers are read: a subscription that
            // lands after this read finds the remind in the log instead
            // (see `catch_up`), so one of the two always delivers it.
            self.inner.store.log_remind(job).await?;
        }
        if job.after_user == 0 && !r.recipients.is_empty() {
            let direct: Vec<(UserId, bool)> = r.recipients.iter().map(|u| (*u, true)).collect();
            delivered += self.deliver(&r, job.occurred_at_ms, &direct).await?;
        }
        let page = self.cfg().remind_page;
        let subs: Vec<Subscriber> = self
            .inner
            .store
            .subscribers(&r.object_type, &r.object_id, job.after_user, page)
            .await?;
        // A subscription made by an event later than the remind is not for
        // it, even when that event was processed first.
        let allowed: Vec<(UserId, bool)> = subs
            .iter()
            .filter(|s| {
                s.reasons.iter().any(|reason| {
                    reason.since_ms <= job.occurred_at_ms
                        && self
                            .cfg()
                            .reasons
                            .get(&reason.name)
                            .is_some_and(|a| a.contains(&r.action))
                })
            })
            .map(|s| (s.user, r.recipients.contains(&s.user)))
            .collect();
        delivered += self.deliver(&r, job.occurred_at_ms, &allowed).await?;
        let done = subs.len() < page;
        if done {
            self.inner.store.delete_job(&job.job_id).await?;
        } else {
            job.after_user = subs.last().map(|s| s.user).unwrap_or(job.after_user);
            job.updated_ms = self.now() as i64;
            self.inner.store.put_job(job).await?;
        }
        Ok((delivered, done))
    }

    /// Adds the remind to each recipient's group, under their config and
    /// policy; never to the actor, never across a block.
    pub(super) async fn deliver(
        &self,
        r: &CreateRemindRequest,
        occurred: i64,
        to: &[(UserId, bool)],
    ) -> Result<u32, ApiError> {
        let users: Vec<(UserId, bool)> = to.iter().copied().filter(|(u, _)| *u != r.actor).collect();
        if users.is_empty() {
            return Ok(0);
        }
        let ids: Vec<UserId> = users.iter().map(|(u, _)| *u).collect();
        let rels = self.inner.graph.relations(r.actor, &ids).await?;
        let actor = self.state(r.actor).await?;
        let occurred = occurred.max(0) as u64;
        let bucket = occurred / self.cfg().window_ms;
        let group_key = format!("{}/{}/{}/{}", r.object_type, r.object_id, r.action, bucket);
        let mut delivered = 0;
        for ((user, direct), rel) in users.into_iter().zip(rels) {
            if rel.blocked {
                continue;
            }
            let state = self.state(user).await?;
            if !self.action_on(&state, &r.action) {
                continue;
            }
            let mention = direct && r.action == MENTION;
            let act = self.decide(&state, rel, &actor, mention);
            if act == PolicyAction::Drop {
                metrics::counter!("feed_notify_dropped_total", "kind" => "remind").increment(1);
                continue;
            }
            let rec = NoteRecord {
                note: Some(Notification {
                    // The first event of a group names it; later ones join under that id.
                    id: note_id(occurred, &group_key),
                    kind: NotificationKind::Remind as i32,
                    action: r.action.clone(),
                    object_id: r.object_id.clone(),
                    object_type: r.object_type.clone(),
                    target: r.target.clone(),
                    created_at_ms: occurred as i64,
                    updated_at_ms: occurred as i64,
                    filtered: act == PolicyAction::Filter,
                    ..Default::default()
                }),
                group_key: group_key.clone(),
                seq: self.next_seq(),
                ..Default::default()
            };
            if let GroupChange::Changed(after) = self
                .inner
                .store
                .add_to_group(user, r.actor, &rec, LATEST_ACTORS)
                .await?
            {
                delivered += 1;
                if !after.note.as_ref().is_some_and(|n| n.filtered) {
                    self.push_live(user, &after);
                }
            }
        }
        Ok(delivered)
    }
}
