//! notify's domain: announces, reminds, messages, subscriptions, per-user
//! configuration and read state, and the live stream.
//!
//! Idempotency rests on two facts. Every create carries an event id claimed
//! in the store, so a retried call changes nothing. And a remind joins its
//! group as "actor X is in group G" (a set), with a group key computed from
//! the event alone (object, action, time bucket): a replayed event, even one
//! whose claim was lost, never counts twice and lands in the same group.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use feed_core::{ApiError, Clock, UserId, validate};
use feed_proto::common::v1::{ActivityStatus, Visibility};
use feed_proto::events::v1::{ActivityEvent, activity_event};
use feed_proto::notify::v1::{
    CreateRemindRequest, KindCounts, Link, NoteRecord, Notification, NotificationKind, PolicyAction, RecipientPolicy,
    RemindJob, Subscription, SubscriptionConfig, UserState, WatchEvent, watch_event,
};
use feed_server::Shutdown;
use feed_server::queue::JobQueue;
use tokio::sync::mpsc;

use crate::graph::{Graph, Relation};
use crate::live::{EventId, LiveLog};
use crate::store::{ALWAYS, Claim, GroupChange, NotifyStore, Subscriber};

/// Latest actors kept on a remind group.
const LATEST_ACTORS: usize = 5;
/// Read marks on announces kept per user above the watermark.
const READ_ANNOUNCES: usize = 500;
/// Ids one MarkRead may name.
const MAX_MARK_IDS: usize = 500;
/// Live entries read per round trip.
const LIVE_BATCH: usize = 100;

/// notify's rules, from configuration.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Aggregation window of remind groups.
    pub window_ms: u64,
    /// Subscription reason → actions it delivers.
    pub reasons: BTreeMap<String, Vec<String>>,
    /// Per-action defaults (unlisted actions are on).
    pub default_actions: BTreeMap<String, bool>,
    /// Default recipient policy.
    pub default_policy: RecipientPolicy,
    /// Accounts younger than this are new.
    pub new_account_age_ms: u64,
    /// Heartbeat period of Watch.
    pub heartbeat: Duration,
    /// Events buffered per Watch stream.
    pub watch_buffer: usize,
    /// A Watch client whose buffer stays full this long is dropped (it resumes).
    pub slow_client: Duration,
    /// Subscribers per remind job page.
    pub remind_page: usize,
    /// Notifications scanned per listing or count.
    pub max_scan: usize,
    /// Most characters of a message or announce body.
    pub max_content_chars: usize,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self::from_config(&feed_server::config::NotifyConfig::default())
            .unwrap_or_else(|_| unreachable!("the built-in defaults are valid"))
    }
}

fn policy_action(field: &str, s: &str) -> anyhow::Result<i32> {
    Ok(match s {
        "accept" => PolicyAction::Accept,
        "filter" => PolicyAction::Filter,
        "drop" => PolicyAction::Drop,
        other => anyhow::bail!("notify.{field}: {other:?} is not accept, filter or drop"),
    } as i32)
}

impl NotifyConfig {
    /// From the platform configuration's `notify` section.
    pub fn from_config(c: &feed_server::config::NotifyConfig) -> anyhow::Result<Self> {
        Ok(Self {
            window_ms: c.group_window_secs.max(1) * 1000,
            reasons: c.reasons.clone(),
            default_actions: c.default_actions.clone(),
            default_policy: RecipientPolicy {
                strangers: policy_action("strangers", &c.strangers)?,
                new_accounts: policy_action("new_accounts", &c.new_accounts)?,
                unsolicited_mentions: policy_action("unsolicited_mentions", &c.unsolicited_mentions)?,
                muted_users: policy_action("muted_users", &c.muted_users)?,
            },
            new_account_age_ms: c.new_account_age_secs * 1000,
            heartbeat: Duration::from_millis(c.heartbeat_ms.max(10)),
            watch_buffer: c.watch_buffer.max(2),
            slow_client: Duration::from_millis(c.slow_client_ms.max(1)),
            remind_page: c.remind_page.max(1),
            max_scan: c.max_per_user.max(1),
            max_content_chars: 4000,
        })
    }

    /// Every action the configuration names (reasons, defaults, mentions).
    fn known_actions(&self) -> std::collections::BTreeSet<String> {
        let mut all: std::collections::BTreeSet<String> = self.reasons.values().flatten().cloned().collect();
        all.extend(self.default_actions.keys().cloned());
        all.insert(MENTION.into());
        all
    }
}

/// The action of a remind to a mentioned user.
pub const MENTION: &str = "mention";

/// A page of notifications.
#[derive(Debug, Clone, Default)]
pub struct NotePage {
    /// Newest first.
    pub notes: Vec<Notification>,
    /// Cursor of the next page, when more may follow.
    pub next_before: Option<u64>,
}

/// A listing request.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Kinds to list (empty: all).
    pub kinds: Vec<NotificationKind>,
    /// Only unread ones.
    pub unread_only: bool,
    /// The filtered ones instead of the accepted ones.
    pub filtered: bool,
    /// Page size.
    pub limit: usize,
    /// Ids below this.
    pub before: Option<u64>,
}

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

/// The notify service.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn NotifyStore>,
    live: Arc<dyn LiveLog>,
    graph: Arc<dyn Graph>,
    jobs: Arc<dyn JobQueue<RemindJob>>,
    clock: Arc<dyn Clock>,
    cfg: NotifyConfig,
    last_seq: AtomicU64,
    /// Per-user state is read, changed and written back under one of these.
    locks: Vec<tokio::sync::Mutex<()>>,
    shutdown: Shutdown,
}

/// Most reminds per action a late subscription catches up on.
const CATCH_UP_MAX: usize = 1000;

/// A notification id from event data: time-ordered like activity ids, the
/// low bits a hash of `key`, so a replay computes the same id.
fn note_id(ms: u64, key: &str) -> u64 {
    feed_core::id::min_id_at(ms) | (feed_core::keys::stable_hash(key.as_bytes()) & 0x3F_FFFF)
}

fn id_of(rec: &NoteRecord) -> u64 {
    rec.note.as_ref().map(|n| n.id).unwrap_or(0)
}

fn strictest(a: i32, b: i32) -> i32 {
    a.max(b)
}

fn check_event_id(id: &str) -> Result<(), ApiError> {
    validate::text("event_id", id, 128, false)
}

/// Object types and actions are short lowercase names.
fn check_name(field: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.is_empty() || s.len() > max {
        return Err(ApiError::invalid(field, format!("must be 1..={max} characters")));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(ApiError::invalid(field, "only a-z, 0-9, '_', '-' and '.'"));
    }
    Ok(())
}

/// Bodies may hold newlines and tabs, not other control characters.
fn check_body(field: &str, s: &str, max: usize, optional: bool) -> Result<(), ApiError> {
    if s.trim().is_empty() && !optional {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if s.chars().count() > max {
        return Err(ApiError::invalid(field, format!("at most {max} characters")));
    }
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn check_links(links: &[Link]) -> Result<(), ApiError> {
    validate::batch_len("links", links, 10)?;
    for (i, l) in links.iter().enumerate() {
        validate::text(&format!("links[{i}].title"), &l.title, 200, true)?;
        validate::text(&format!("links[{i}].url"), &l.url, 2048, false)?;
        if !(l.url.starts_with("https://") || l.url.starts_with("http://")) {
            return Err(ApiError::invalid(format!("links[{i}].url"), "must be an http(s) URL"));
        }
    }
    Ok(())
}

/// What a subscription's object is, from an activity's `object` field
/// (`type:id`, e.g. `activity:123` or `photo:9`).
fn parse_object(object: &str) -> Option<(&str, &str)> {
    let (t, id) = object.split_once(':')?;
    (check_name("object_type", t, 64).is_ok() && !id.is_empty() && id.len() <= 256).then_some((t, id))
}

/// Verbs that react to an object, and the remind action they raise.
fn reaction(verb: &str) -> Option<&'static str> {
    Some(match verb {
        "like" | "favorite" => "like",
        "comment" | "reply" => "comment",
        "share" | "repost" => "share",
        _ => return None,
    })
}

impl Notifier {
    /// A notifier over its dependencies. Watch streams end when `shutdown` fires.
    pub fn new(
        store: Arc<dyn NotifyStore>,
        live: Arc<dyn LiveLog>,
        graph: Arc<dyn Graph>,
        jobs: Arc<dyn JobQueue<RemindJob>>,
        clock: Arc<dyn Clock>,
        cfg: NotifyConfig,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                live,
                graph,
                jobs,
                clock,
                cfg,
                last_seq: AtomicU64::new(0),
                locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
                shutdown,
            }),
        }
    }

    /// The store (readiness checks).
    pub fn store(&self) -> &Arc<dyn NotifyStore> {
        &self.inner.store
    }

    fn cfg(&self) -> &NotifyConfig {
        &self.inner.cfg
    }

    fn now(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// A change sequence: microseconds, strictly increasing in this process,
    /// so "changed after the read watermark" is a comparison.
    fn next_seq(&self) -> u64 {
        let now = self.now().saturating_mul(1000);
        let prev = self
            .inner
            .last_seq
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(now.max(last + 1)))
            .unwrap_or(0);
        now.max(prev + 1)
    }

    async fn lock(&self, user: UserId) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.locks[(user % self.inner.locks.len() as u64) as usize]
            .lock()
            .await
    }

    /// The user's state; a user notify never stored has the defaults and
    /// counts as an existing account (created at 0) until RegisterUser says
    /// otherwise. Writers hold the user's lock.
    async fn state(&self, user: UserId) -> Result<UserState, ApiError> {
        Ok(self.inner.store.user_state(user).await?.unwrap_or_default())
    }

    fn action_on(&self, state: &UserState, action: &str) -> bool {
        state
            .actions
            .get(action)
            .or_else(|| self.cfg().default_actions.get(action))
            .copied()
            .unwrap_or(true)
    }

    fn effective_policy(&self, state: &UserState) -> RecipientPolicy {
        let d = &self.cfg().default_policy;
        let p = state.policy.unwrap_or_default();
        let pick = |mine: i32, default: i32| if mine == 0 { default } else { mine };
        RecipientPolicy {
            strangers: pick(p.strangers, d.strangers),
            new_accounts: pick(p.new_accounts, d.new_accounts),
            unsolicited_mentions: pick(p.unsolicited_mentions, d.unsolicited_mentions),
            muted_users: pick(p.muted_users, d.muted_users),
        }
    }

    /// What the recipient's policy does with a notification from `actor`.
    fn decide(&self, recipient: &UserState, rel: Relation, actor: &UserState, mention: bool) -> PolicyAction {
        let p = self.effective_policy(recipient);
        let mut act = PolicyAction::Accept as i32;
        if !rel.recipient_follows {
            act = strictest(act, p.strangers);
            if mention {
                act = strictest(act, p.unsolicited_mentions);
            }
        }
        if rel.recipient_mutes {
            act = strictest(act, p.muted_users);
        }
        let age = (self.now() as i64).saturating_sub(actor.created_at_ms);
        if age < self.cfg().new_account_age_ms as i64 {
            act = strictest(act, p.new_accounts);
        }
        PolicyAction::try_from(act).unwrap_or(PolicyAction::Accept)
    }

    fn view(rec: &NoteRecord, state: &UserState) -> Notification {
        let mut n = rec.note.clone().unwrap_or_default();
        let kind = NotificationKind::try_from(n.kind).unwrap_or(NotificationKind::Unspecified);
        n.read = if kind == NotificationKind::Announce {
            rec.seq <= state.read_watermark || state.read_announces.contains(&n.id)
        } else {
            rec.seq <= state.read_watermark.max(rec.read_seq)
        };
        n.seen = rec.seq <= state.seen_watermark;
        n
    }

    /// Pushes a delivered notification to the user's live log. The note is
    /// already durable: a failure here delays only the live copy (the
    /// user's lists have it), so it is logged, not returned.
    async fn push_live(&self, user: UserId, rec: &NoteRecord) {
        let n = Self::view(rec, &UserState::default());
        if let Err(e) = self.inner.live.append(user, &n).await {
            metrics::counter!("feed_notify_live_append_failures_total").increment(1);
            tracing::warn!(error = %e, user, "live append failed; the notification is stored");
        }
    }

    /// CreateAnnounce: stored once, pulled by every user.
    pub async fn create_announce(
        &self,
        event_id: &str,
        title: &str,
        content: &str,
        links: Vec<Link>,
        for_all_time: bool,
    ) -> Result<(u64, bool), ApiError> {
        check_event_id(event_id)?;
        validate::text("title", title, 200, false)?;
        check_body("content", content, self.cfg().max_content_chars, true)?;
        check_links(&links)?;
        let now = self.now();
        let fresh = note_id(now, event_id);
        let id = match self.inner.store.claim_event(event_id, fresh).await? {
            Claim::Claimed => fresh,
            Claim::Held(prev) => {
                if self.inner.store.announces(prev + 1, 1).await?.first().map(id_of) == Some(prev) {
                    return Ok((prev, true));
                }
                // Claimed by a call that died before writing: finish it under the claimed id.
                prev
            }
        };
        let rec = NoteRecord {
            note: Some(Notification {
                id,
                kind: NotificationKind::Announce as i32,
                title: title.into(),
                content: content.into(),
                links,
                created_at_ms: now as i64,
                updated_at_ms: now as i64,
                ..Default::default()
            }),
            seq: self.next_seq(),
            for_all_time,
            ..Default::default()
        };
        self.inner.store.put_announce(&rec).await?;
        metrics::counter!("feed_notify_created_total", "kind" => "announce").increment(1);
        Ok((id, false))
    }

    /// SendMessage: pushed to the recipient at once. Refused across a block;
    /// the recipient's policy may filter or drop it (a dropped message gets id 0).
    pub async fn send_message(
        &self,
        event_id: &str,
        sender: UserId,
        recipient: UserId,
        content: &str,
    ) -> Result<(u64, bool), ApiError> {
        check_event_id(event_id)?;
        let sender = validate::user_id("sender", sender)?;
        let recipient = validate::user_id("recipient", recipient)?;
        if sender == recipient {
            return Err(ApiError::invalid("recipient", "must not be the sender"));
        }
        check_body("content", content, self.cfg().max_content_chars, false)?;
        let rel = self
            .inner
            .graph
            .relations(sender, &[recipient])
            .await?
            .pop()
            .unwrap_or_default();
        if rel.blocked {
            return Err(ApiError::PermissionDenied(
                "recipient: a block stands between sender and recipient".into(),
            ));
        }
        let (to, from) = (self.state(recipient).await?, self.state(sender).await?);
        let act = self.decide(&to, rel, &from, false);
        let now = self.now();
        let fresh = if act == PolicyAction::Drop {
            0
        } else {
            note_id(now, event_id)
        };
        let id = match self.inner.store.claim_event(event_id, fresh).await? {
            Claim::Claimed => fresh,
            Claim::Held(0) => return Ok((0, true)),
            Claim::Held(prev) => {
                if self.inner.store.note(recipient, prev).await?.is_some() {
                    return Ok((prev, true));
                }
                prev
            }
        };
        if id == 0 {
            metrics::counter!("feed_notify_dropped_total", "kind" => "message").increment(1);
            return Ok((0, false));
        }
        let rec = NoteRecord {
            note: Some(Notification {
                id,
                kind: NotificationKind::Message as i32,
                content: content.into(),
                sender,
                created_at_ms: now as i64,
                updated_at_ms: now as i64,
                filtered: act == PolicyAction::Filter,
                ..Default::default()
            }),
            seq: self.next_seq(),
            ..Default::default()
        };
        if self.inner.store.insert_note(recipient, &rec).await? && act == PolicyAction::Accept {
            self.push_live(recipient, &rec).await;
        }
        metrics::counter!("feed_notify_created_total", "kind" => "message").increment(1);
        Ok((id, false))
    }

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
        if let Claim::Held(_) = self.inner.store.claim_event(&job.job_id, 0).await? {
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

    /// Re-enqueues remind jobs idle for `stale`; returns how many.
    pub async fn sweep(&self, stale: Duration) -> Result<usize, ApiError> {
        let now = self.now() as i64;
        let mut due = Vec::new();
        for mut job in self.inner.store.jobs(100).await? {
            if now - job.updated_ms >= stale.as_millis() as i64 {
                job.updated_ms = now;
                self.inner.store.put_job(&job).await?;
                due.push(job);
            }
        }
        if !due.is_empty() {
            self.inner
                .jobs
                .enqueue(&due)
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        }
        Ok(due.len())
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
    async fn deliver(&self, r: &CreateRemindRequest, occurred: i64, to: &[(UserId, bool)]) -> Result<u32, ApiError> {
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
                    self.push_live(user, &after).await;
                }
            }
        }
        Ok(delivered)
    }

    /// Turns one of publish's activity events into subscriptions and reminds.
    /// Event ids derive from the event's, so a redelivered event is a no-op.
    pub async fn on_activity_event(&self, ev: &ActivityEvent) -> Result<(), ApiError> {
        let Some(a) = ev.activity.as_ref() else {
            return Ok(());
        };
        let change = activity_event::Change::try_from(ev.change).unwrap_or(activity_event::Change::Unspecified);
        let deleted = a.status == ActivityStatus::Deleted as i32;
        let private = a.visibility == Visibility::Private as i32;
        match change {
            activity_event::Change::Created => {
                // Subscribed as of the event, not of its processing: see `catch_up`.
                let own = Subscription {
                    user_id: a.actor,
                    object_type: "activity".into(),
                    object_id: a.id.to_string(),
                    reason: "create_post".into(),
                    created_at_ms: a.created_at_ms,
                };
                self.inner.store.subscribe(&own, own.created_at_ms).await?;
                self.catch_up(&own).await?;
                let object = parse_object(&a.object);
                let react = reaction(&a.verb);
                if let Some((t, id)) = object {
                    // Whoever creates an object hears about it; whoever reacts follows it.
                    let reason = if react.is_some() {
                        "follow_object"
                    } else {
                        "create_post"
                    };
                    let sub = Subscription {
                        object_type: t.into(),
                        object_id: id.into(),
                        reason: reason.into(),
                        ..own.clone()
                    };
                    self.inner.store.subscribe(&sub, sub.created_at_ms).await?;
                    self.catch_up(&sub).await?;
                }
                if deleted || private {
                    return Ok(());
                }
                if let (Some(action), Some((t, id))) = (react, object) {
                    self.create_remind(CreateRemindRequest {
                        event_id: format!("{}/react", ev.event_id),
                        actor: a.actor,
                        action: action.into(),
                        object_id: id.into(),
                        object_type: t.into(),
                        target: a.target.clone(),
                        recipients: vec![],
                        occurred_at_ms: a.created_at_ms,
                    })
                    .await?;
                }
                let mentioned = self.visible_mentions(a).await?;
                if !mentioned.is_empty() {
                    self.create_remind(CreateRemindRequest {
                        event_id: format!("{}/mention", ev.event_id),
                        actor: a.actor,
                        action: MENTION.into(),
                        object_id: a.id.to_string(),
                        object_type: "activity".into(),
                        target: a.target.clone(),
                        recipients: mentioned,
                        occurred_at_ms: a.created_at_ms,
                    })
                    .await?;
                }
            }
            activity_event::Change::Updated if !deleted && !private => {
                self.create_remind(CreateRemindRequest {
                    event_id: format!("{}/update", ev.event_id),
                    actor: a.actor,
                    action: "update".into(),
                    object_id: a.id.to_string(),
                    object_type: "activity".into(),
                    target: String::new(),
                    recipients: vec![],
                    occurred_at_ms: a.updated_at_ms,
                })
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Delivers to a subscription made by an event the reminds on its
    /// object that happened after it but were processed before it (the
    /// event was re-driven late, after a restart or an outage): events take
    /// effect in the order they happened, whatever order they are processed
    /// in. Replays change nothing (a group counts each actor once).
    async fn catch_up(&self, sub: &Subscription) -> Result<(), ApiError> {
        let Some(actions) = self.cfg().reasons.get(&sub.reason) else {
            return Ok(());
        };
        for action in actions {
            let missed = self
                .inner
                .store
                // A remind at the subscription's own instant counts, as in `remind_page`.
                .reminds_after(
                    &sub.object_type,
                    &sub.object_id,
                    action,
                    sub.created_at_ms.saturating_sub(1),
                    CATCH_UP_MAX,
                )
                .await?;
            for job in missed {
                let r = job.remind.unwrap_or_default();
                let direct = r.recipients.contains(&sub.user_id);
                self.deliver(&r, job.occurred_at_ms, &[(sub.user_id, direct)]).await?;
            }
        }
        Ok(())
    }

    /// The mentioned users who may see the activity (a mention never
    /// leaks a followers-only or allow-listed post).
    async fn visible_mentions(&self, a: &feed_proto::common::v1::Activity) -> Result<Vec<UserId>, ApiError> {
        let mut users: Vec<UserId> = a
            .mentions
            .iter()
            .copied()
            .filter(|u| *u != a.actor && *u != 0)
            .collect();
        users.sort_unstable();
        users.dedup();
        users.truncate(100);
        if users.is_empty() {
            return Ok(users);
        }
        let rels = self.inner.graph.relations(a.actor, &users).await?;
        Ok(users
            .into_iter()
            .zip(rels)
            .filter(|(u, rel)| feed_core::visibility::can_see(a, Some(*u), || rel.recipient_follows))
            .map(|(u, _)| u)
            .collect())
    }

    /// Subscribe: the reason must be one the configuration knows.
    pub async fn subscribe(&self, mut s: Subscription) -> Result<bool, ApiError> {
        validate::user_id("subscription.user_id", s.user_id)?;
        check_name("subscription.object_type", &s.object_type, 64)?;
        validate::text("subscription.object_id", &s.object_id, 256, false)?;
        if !self.cfg().reasons.contains_key(&s.reason) {
            return Err(ApiError::invalid(
                "subscription.reason",
                format!(
                    "unknown reason {:?}; known: {:?}",
                    s.reason,
                    self.cfg().reasons.keys().collect::<Vec<_>>()
                ),
            ));
        }
        s.created_at_ms = self.now() as i64;
        Ok(self.inner.store.subscribe(&s, ALWAYS).await?)
    }

    /// Unsubscribe from one reason, or every reason when `reason` is empty.
    pub async fn unsubscribe(
        &self,
        user: UserId,
        object_type: &str,
        object_id: &str,
        reason: &str,
    ) -> Result<bool, ApiError> {
        check_name("object_type", object_type, 64)?;
        validate::text("object_id", object_id, 256, false)?;
        validate::text("reason", reason, 64, true)?;
        let reason = (!reason.is_empty()).then_some(reason);
        Ok(self
            .inner
            .store
            .unsubscribe(user, object_type, object_id, reason)
            .await?)
    }

    /// A page of `user`'s subscriptions after `after`.
    pub async fn subscriptions(
        &self,
        user: UserId,
        after: Option<&Subscription>,
        limit: usize,
    ) -> Result<Vec<Subscription>, ApiError> {
        Ok(self.inner.store.subscriptions(user, after, limit).await?)
    }

    /// The user's effective configuration: every known action with its value, the policy with defaults filled in.
    pub async fn config(&self, user: UserId) -> Result<SubscriptionConfig, ApiError> {
        let state = self.state(user).await?;
        Ok(self.effective_config(user, &state))
    }

    fn effective_config(&self, user: UserId, state: &UserState) -> SubscriptionConfig {
        let mut names = self.cfg().known_actions();
        names.extend(state.actions.keys().cloned());
        SubscriptionConfig {
            user_id: user,
            actions: names
                .into_iter()
                .map(|a| {
                    let on = self.action_on(state, &a);
                    (a, on)
                })
                .collect(),
            policy: Some(self.effective_policy(state)),
        }
    }

    /// Sets the listed actions; replaces the policy when given
    /// (`UNSPECIFIED` fields mean "the configured default").
    pub async fn update_config(
        &self,
        user: UserId,
        actions: std::collections::HashMap<String, bool>,
        policy: Option<RecipientPolicy>,
    ) -> Result<SubscriptionConfig, ApiError> {
        if actions.len() > 100 {
            return Err(ApiError::invalid("actions", "at most 100 entries"));
        }
        for a in actions.keys() {
            check_name(&format!("actions[{a:?}]"), a, 32)?;
        }
        if let Some(p) = &policy {
            for (field, v) in [
                ("policy.strangers", p.strangers),
                ("policy.new_accounts", p.new_accounts),
                ("policy.unsolicited_mentions", p.unsolicited_mentions),
                ("policy.muted_users", p.muted_users),
            ] {
                if PolicyAction::try_from(v).is_err() {
                    return Err(ApiError::invalid(field, format!("unknown policy action {v}")));
                }
            }
        }
        let _g = self.lock(user).await;
        let mut state = self.state(user).await?;
        state.actions.extend(actions);
        if policy.is_some() {
            state.policy = policy;
        }
        self.inner.store.put_user_state(user, &state).await?;
        Ok(self.effective_config(user, &state))
    }

    /// Records when an account was created.
    pub async fn register_user(&self, user: UserId, created_at_ms: i64) -> Result<(), ApiError> {
        if created_at_ms < 0 {
            return Err(ApiError::invalid("created_at_ms", "must not be negative"));
        }
        let _g = self.lock(user).await;
        let mut state = self.state(user).await?;
        state.created_at_ms = if created_at_ms == 0 {
            self.now() as i64
        } else {
            created_at_ms
        };
        self.inner.store.put_user_state(user, &state).await?;
        Ok(())
    }

    /// Announces the user may see: newer than the account, or for all time.
    fn announce_visible(rec: &NoteRecord, state: &UserState) -> bool {
        rec.for_all_time
            || rec
                .note
                .as_ref()
                .is_some_and(|n| n.created_at_ms >= state.created_at_ms)
    }

    /// Walks the user's notes and visible announces newest first (below
    /// `before`), merged by id, calling `visit` until it returns false or
    /// `max_scan` items were seen. Returns (last id visited, exhausted).
    async fn walk(
        &self,
        user: UserId,
        state: &UserState,
        before: u64,
        announces: bool,
        mut visit: impl FnMut(&NoteRecord) -> bool,
    ) -> Result<(Option<u64>, bool), ApiError> {
        const CHUNK: usize = 64;
        let store = &self.inner.store;
        let (mut notes, mut notes_before, mut notes_done) = (VecDeque::new(), before, false);
        let (mut anns, mut anns_before, mut anns_done) = (VecDeque::new(), before, !announces);
        let mut last = None;
        for _ in 0..self.cfg().max_scan {
            if notes.is_empty() && !notes_done {
                let page = store.notes(user, notes_before, CHUNK).await?;
                notes_done = page.len() < CHUNK;
                notes_before = page.last().map(id_of).unwrap_or(notes_before);
                notes.extend(page);
            }
            if anns.is_empty() && !anns_done {
                let page = store.announces(anns_before, CHUNK).await?;
                anns_done = page.len() < CHUNK;
                anns_before = page.last().map(id_of).unwrap_or(anns_before);
                anns.extend(page.into_iter().filter(|r| Self::announce_visible(r, state)));
                if anns.is_empty() && !anns_done {
                    continue;
                }
            }
            let take_note = match (notes.front(), anns.front()) {
                (Some(n), Some(a)) => id_of(n) > id_of(a),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return Ok((last, true)),
            };
            let rec = if take_note { notes.pop_front() } else { anns.pop_front() };
            let Some(rec) = rec else { break };
            last = Some(id_of(&rec));
            if !visit(&rec) {
                let exhausted = notes.is_empty() && anns.is_empty() && notes_done && anns_done;
                return Ok((last, exhausted));
            }
        }
        Ok((last, false))
    }

    /// ListNotifications: newest first, merged across kinds.
    pub async fn list(&self, user: UserId, q: ListQuery) -> Result<NotePage, ApiError> {
        let state = self.state(user).await?;
        let want = |k: i32| q.kinds.is_empty() || q.kinds.iter().any(|x| *x as i32 == k);
        let announces = want(NotificationKind::Announce as i32) && !q.filtered;
        let mut out = Vec::new();
        let limit = q.limit.max(1);
        let (last, exhausted) = self
            .walk(user, &state, q.before.unwrap_or(u64::MAX), announces, |rec| {
                let n = Self::view(rec, &state);
                if want(n.kind) && n.filtered == q.filtered && !(q.unread_only && n.read) {
                    out.push(n);
                }
                out.len() < limit
            })
            .await?;
        Ok(NotePage {
            notes: out,
            next_before: if exhausted { None } else { last },
        })
    }

    /// GetUnreadCounts: unread and unseen per kind (filtered ones do not count).
    pub async fn counts(&self, user: UserId) -> Result<Vec<KindCounts>, ApiError> {
        let state = self.state(user).await?;
        let kinds = [
            NotificationKind::Announce,
            NotificationKind::Remind,
            NotificationKind::Message,
        ];
        let mut counts: Vec<KindCounts> = kinds
            .iter()
            .map(|k| KindCounts {
                kind: *k as i32,
                unread: 0,
                unseen: 0,
            })
            .collect();
        self.walk(user, &state, u64::MAX, true, |rec| {
            let n = Self::view(rec, &state);
            if let Some(c) = counts.iter_mut().find(|c| c.kind == n.kind)
                && !n.filtered
            {
                c.unread += u64::from(!n.read);
                c.unseen += u64::from(!n.seen);
            }
            true
        })
        .await?;
        Ok(counts)
    }

    /// MarkRead: the listed ids, or everything (down to `down_to` when given).
    pub async fn mark_read(&self, user: UserId, ids: &[u64], all: bool, down_to: Option<u64>) -> Result<(), ApiError> {
        if ids.is_empty() && !all {
            return Err(ApiError::invalid("ids", "name notifications, or set all"));
        }
        validate::batch_len("ids", ids, MAX_MARK_IDS)?;
        let _g = self.lock(user).await;
        let mut state = self.state(user).await?;
        let mut marks = Vec::new();
        let mut announces = Vec::new();
        for id in ids {
            if let Some(rec) = self.inner.store.note(user, *id).await? {
                marks.push((*id, rec.seq));
            } else if self.inner.store.announces(id + 1, 1).await?.first().map(id_of) == Some(*id) {
                announces.push(*id);
            } else {
                return Err(ApiError::NotFound(format!("ids: notification {id}")));
            }
        }
        if all {
            match down_to {
                None => {
                    state.read_watermark = self.next_seq();
                    state.read_announces.clear();
                }
                Some(bound) => {
                    self.walk(user, &state, u64::MAX, true, |rec| {
                        let id = id_of(rec);
                        if id < bound {
                            return false;
                        }
                        match rec.note.as_ref().map(|n| n.kind) {
                            Some(k) if k == NotificationKind::Announce as i32 => announces.push(id),
                            _ => marks.push((id, rec.seq)),
                        }
                        true
                    })
                    .await?;
                }
            }
        }
        self.inner.store.mark_notes_read(user, &marks).await?;
        if !announces.is_empty() || all {
            state.read_announces.extend(announces);
            state.read_announces.sort_unstable_by(|a, b| b.cmp(a));
            state.read_announces.dedup();
            state.read_announces.truncate(READ_ANNOUNCES);
            self.inner.store.put_user_state(user, &state).await?;
        }
        Ok(())
    }

    /// MarkSeen: everything delivered so far is seen.
    pub async fn mark_seen(&self, user: UserId) -> Result<(), ApiError> {
        let _g = self.lock(user).await;
        let mut state = self.state(user).await?;
        state.seen_watermark = self.next_seq();
        self.inner.store.put_user_state(user, &state).await?;
        Ok(())
    }

    /// Watch: the user's live notifications from after `resume_after` (or
    /// from now), with heartbeats. The stream ends with RESOURCE_EXHAUSTED
    /// when the client falls a buffer behind (it resumes from its last id)
    /// and with UNAVAILABLE on shutdown.
    pub fn watch(&self, user: UserId, resume_after: Option<EventId>) -> mpsc::Receiver<Result<WatchEvent, ApiError>> {
        let (tx, rx) = mpsc::channel(self.cfg().watch_buffer);
        let this = self.clone();
        tokio::spawn(async move {
            metrics::gauge!("feed_notify_watch_streams").increment(1.0);
            if let Err(e) = this.pump(user, resume_after, &tx).await
                && !tx.is_closed()
            {
                let _ = tx.try_send(Err(e));
            }
            metrics::gauge!("feed_notify_watch_streams").decrement(1.0);
        });
        rx
    }

    /// Queues an event for the client, waiting up to `slow_client` for room.
    /// The last slot is never used for an event: it is kept for the error
    /// that ends the stream of a client that stopped reading.
    async fn send(&self, tx: &mpsc::Sender<Result<WatchEvent, ApiError>>, ev: WatchEvent) -> Result<(), ApiError> {
        match tokio::time::timeout(self.cfg().slow_client, tx.reserve_many(2)).await {
            Ok(Ok(mut permits)) => {
                if let Some(p) = permits.next() {
                    p.send(Ok(ev));
                }
                Ok(())
            }
            Ok(Err(_)) => Err(ApiError::Unavailable("stream closed".into())),
            Err(_) => {
                metrics::counter!("feed_notify_watch_slow_drops_total").increment(1);
                Err(ApiError::ResourceExhausted(
                    "client too slow: reconnect with resume_after".into(),
                ))
            }
        }
    }

    async fn pump(
        &self,
        user: UserId,
        resume_after: Option<EventId>,
        tx: &mpsc::Sender<Result<WatchEvent, ApiError>>,
    ) -> Result<(), ApiError> {
        let live = &self.inner.live;
        // Subscribe first: anything appended while the backlog is read still wakes us.
        let mut wake = live.wake(user);
        let mut last = match resume_after {
            Some(id) => Some(id),
            None => live.last_id(user).await?,
        };
        let mut heartbeat = tokio::time::interval(self.cfg().heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        loop {
            loop {
                let batch = live.read_after(user, last, LIVE_BATCH).await?;
                for (id, n) in &batch {
                    self.send(
                        tx,
                        WatchEvent {
                            event_id: id.to_string(),
                            event: Some(watch_event::Event::Notification(n.clone())),
                        },
                    )
                    .await?;
                    last = Some(*id);
                }
                if batch.len() < LIVE_BATCH {
                    break;
                }
            }
            tokio::select! {
                changed = wake.changed() => {
                    if changed.is_err() {
                        return Err(ApiError::Unavailable("live log closed".into()));
                    }
                }
                _ = heartbeat.tick() => {
                    self.send(tx, WatchEvent {
                        event_id: last.map(|l| l.to_string()).unwrap_or_default(),
                        event: Some(watch_event::Event::Heartbeat(feed_proto::notify::v1::Heartbeat {
                            server_time_ms: self.now() as i64,
                        })),
                    }).await?;
                }
                _ = self.inner.shutdown.wait() => {
                    return Err(ApiError::Unavailable("server shutting down; resume with resume_after".into()));
                }
                _ = tx.closed() => return Ok(()),
            }
        }
    }
}
