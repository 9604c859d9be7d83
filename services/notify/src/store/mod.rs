//! The notify store: the trait the service speaks, its backends, and the
//! contract suite every backend must pass.

use async_trait::async_trait;
use feed_core::UserId;
use feed_proto::notify::v1::{NoteRecord, RemindJob, Subscription, UserState};

pub mod contract;
pub mod embedded;
pub mod scylla;

/// Who holds an event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventClaim {
    /// This call claimed it.
    Claimed,
    /// An earlier call holds it, for this notification id.
    Held(u64),
}

/// A subscriber of an object with the reasons it subscribed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    /// The user.
    pub user: UserId,
    /// Its reasons (e.g. `create_post`).
    pub reasons: Vec<Reason>,
}

/// One reason a user is subscribed to an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// The reason (e.g. `create_post`).
    pub name: String,
    /// Reminds that occurred before this (ms since the epoch) are not for
    /// it: a subscription made by an event counts from the event's time.
    /// [`ALWAYS`] for subscriptions made by a call.
    pub since_ms: i64,
}

/// [`Reason::since_ms`] of a subscription that counts for every remind
/// processed after it, whatever the remind's time (a Subscribe call: the
/// clocks of two replicas must not decide whether it counts).
pub const ALWAYS: i64 = i64::MIN;

/// Adds one (user, reason) row of an object's subscriber listing, which
/// comes in user order, to `out`; false once `limit` users are complete (a
/// user's reasons are adjacent, so a page stops only at a user boundary).
pub fn add_subscriber_row(out: &mut Vec<Subscriber>, user: UserId, reason: Reason, limit: usize) -> bool {
    if let Some(last) = out.last_mut().filter(|l| l.user == user) {
        last.reasons.push(reason);
        return true;
    }
    if out.len() >= limit {
        return false;
    }
    out.push(Subscriber {
        user,
        reasons: vec![reason],
    });
    true
}

/// How long a remind stays in its object's log ([`NotifyStore::log_remind`]):
/// far longer than an event waits to be re-driven, even across an outage.
pub const REMIND_LOG_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// What adding an actor to a remind group did.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupChange {
    /// The actor was already in the group: nothing changed (a replay).
    Unchanged,
    /// The group was created or gained the actor; the note as it now stands.
    Changed(Box<NoteRecord>),
}

pub use feed_core::StorageError;

/// Storage of notifications, subscriptions and per-user state.
#[async_trait]
pub trait NotifyStore: Send + Sync + 'static {
    /// Claims `event_id` for notification `id` unless an earlier call holds it.
    async fn claim_event(&self, event_id: &str, id: u64) -> Result<EventClaim, StorageError>;
    /// Stores an announce (idempotent by its id).
    async fn put_announce(&self, rec: &NoteRecord) -> Result<(), StorageError>;
    /// Announces with id < `before`, newest first, at most `limit`.
    async fn announces(&self, before: u64, limit: usize) -> Result<Vec<NoteRecord>, StorageError>;
    /// Adds a note to `user`'s list unless one with its id exists; true when added.
    async fn insert_note(&self, user: UserId, rec: &NoteRecord) -> Result<bool, StorageError>;
    /// Adds `actor` to `user`'s remind group `rec.group_key`, creating the
    /// group from `rec` when absent. A new actor bumps the count, becomes the
    /// newest of at most `keep_latest` latest actors, and sets the note's
    /// `seq` and `updated_at_ms` from `rec`. An actor already in the group
    /// changes nothing, so a replayed event never counts twice.
    async fn add_to_group(
        &self,
        user: UserId,
        actor: UserId,
        rec: &NoteRecord,
        keep_latest: usize,
    ) -> Result<GroupChange, StorageError>;
    /// One note of `user`.
    async fn note(&self, user: UserId, id: u64) -> Result<Option<NoteRecord>, StorageError>;
    /// `user`'s notes with id < `before`, newest first, at most `limit`.
    async fn notes(&self, user: UserId, before: u64, limit: usize) -> Result<Vec<NoteRecord>, StorageError>;
    /// Sets each listed note's read mark (note id, read_seq).
    async fn mark_notes_read(&self, user: UserId, marks: &[(u64, u64)]) -> Result<(), StorageError>;
    /// `user`'s state, if notify has seen the user.
    async fn user_state(&self, user: UserId) -> Result<Option<UserState>, StorageError>;
    /// Replaces `user`'s state.
    async fn put_user_state(&self, user: UserId, state: &UserState) -> Result<(), StorageError>;
    /// Adds a subscription that counts for reminds from `since_ms` on (see
    /// [`Reason::since_ms`]); false when it already stood (and keeps its own).
    async fn subscribe(&self, s: &Subscription, since_ms: i64) -> Result<bool, StorageError>;
    /// Removes `user`'s subscriptions to the object (one reason, or all when
    /// `reason` is None); false when none stood.
    async fn unsubscribe(
        &self,
        user: UserId,
        object_type: &str,
        object_id: &str,
        reason: Option<&str>,
    ) -> Result<bool, StorageError>;
    /// `user`'s subscriptions after `after` (object type, object id, reason
    /// order), at most `limit`.
    async fn subscriptions(
        &self,
        user: UserId,
        after: Option<&Subscription>,
        limit: usize,
    ) -> Result<Vec<Subscription>, StorageError>;
    /// Subscribers of an object with id > `after`, ascending, at most `limit`.
    async fn subscribers(
        &self,
        object_type: &str,
        object_id: &str,
        after: UserId,
        limit: usize,
    ) -> Result<Vec<Subscriber>, StorageError>;
    /// Creates or replaces a remind job.
    async fn put_job(&self, job: &RemindJob) -> Result<(), StorageError>;
    /// Creates a remind job unless one with its id exists.
    async fn put_job_if_absent(&self, job: &RemindJob) -> Result<(), StorageError>;
    /// A remind job by id.
    async fn job(&self, job_id: &str) -> Result<Option<RemindJob>, StorageError>;
    /// Removes a finished job.
    async fn delete_job(&self, job_id: &str) -> Result<(), StorageError>;
    /// Unfinished jobs, at most `limit` (the sweeper re-drives them).
    async fn jobs(&self, limit: usize) -> Result<Vec<RemindJob>, StorageError>;
    /// Logs a remind under (object, action, time, job id), idempotently,
    /// for [`REMIND_LOG_RETENTION_MS`]: a subscription made by an event
    /// processed after the remind, but that happened before it, still gets it.
    async fn log_remind(&self, job: &RemindJob) -> Result<(), StorageError>;
    /// Reminds logged for (object, action) that occurred after `after_ms`,
    /// oldest first, at most `limit`.
    async fn reminds_after(
        &self,
        object_type: &str,
        object_id: &str,
        action: &str,
        after_ms: i64,
        limit: usize,
    ) -> Result<Vec<RemindJob>, StorageError>;
    /// Answers when the backend is usable.
    async fn ping(&self) -> Result<(), StorageError>;
}

/// A note record's id (0 for a record without a note).
pub fn id_of(rec: &NoteRecord) -> u64 {
    rec.note.as_ref().map(|n| n.id).unwrap_or(0)
}

/// The group note after `actor` joins it: `rec` when the group is new, else
/// the existing note with the count bumped, the actor first among the
/// latest, and the change time and sequence of `rec`. Shared by backends.
pub fn merge_actor(existing: Option<NoteRecord>, rec: &NoteRecord, actor: UserId, keep_latest: usize) -> NoteRecord {
    let Some(mut cur) = existing else {
        let mut fresh = rec.clone();
        if let Some(n) = fresh.note.as_mut() {
            n.actor_count = 1;
            n.latest_actors = vec![actor];
        }
        return fresh;
    };
    if let (Some(n), Some(new)) = (cur.note.as_mut(), rec.note.as_ref()) {
        n.actor_count += 1;
        n.latest_actors.retain(|a| *a != actor);
        n.latest_actors.insert(0, actor);
        n.latest_actors.truncate(keep_latest.max(1));
        n.updated_at_ms = n.updated_at_ms.max(new.updated_at_ms);
        n.filtered = n.filtered && new.filtered;
    }
    cur.seq = cur.seq.max(rec.seq);
    cur
}
