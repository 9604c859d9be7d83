//! notify's domain: announces, reminds, messages, subscriptions, per-user
//! configuration and read state, and the live stream.
//!
//! Idempotency rests on two facts. Every create carries an event id claimed
//! in the store, so a retried call changes nothing. And a remind joins its
//! group as "actor X is in group G" (a set), with a group key computed from
//! the event alone (object, action, time bucket): a replayed event, even one
//! whose claim was lost, never counts twice and lands in the same group.

mod checks;
mod create;
mod events;
mod listing;
mod policy;
mod remind;
mod rules;
mod subscriptions;
mod watch;

use checks::{check_body, check_event_id, check_links, check_name};
pub use listing::{ListQuery, NotePage};
pub use remind::RemindOutcome;
pub use rules::{ACTIVITY, MENTION, NotifyRules};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use feed_core::{ApiError, Clock, UserId};
use feed_proto::notify::v1::{NoteRecord, RemindJob, UserState};
use feed_queue::JobQueue;
use feed_server::Shutdown;

use crate::graph::Relations;
use crate::live::LiveLog;
use crate::store::NotifyStore;

/// The notify service.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn NotifyStore>,
    live: Arc<dyn LiveLog>,
    /// Live copies waiting for the pusher (see [`Notifier::push_live`]).
    live_queue: tokio::sync::mpsc::Sender<(UserId, feed_proto::notify::v1::Notification)>,
    graph: Arc<dyn Relations>,
    activities: Arc<dyn crate::Activities>,
    jobs: Arc<dyn JobQueue<RemindJob>>,
    clock: Arc<dyn Clock>,
    cfg: NotifyRules,
    last_seq: AtomicU64,
    /// Open Watch streams, for their caps.
    watchers: std::sync::Mutex<watch::WatchCount>,
    /// Per-user state is read, changed and written back under one of these.
    locks: Vec<tokio::sync::Mutex<()>>,
    shutdown: Shutdown,
}

/// Live copies that may wait for the pusher; past that they are dropped
/// (counted): the notifications themselves are stored and listed.
const LIVE_QUEUE: usize = 10_000;

/// A notification id from event data: time-ordered like activity ids, the
/// low bits a hash of `key`, so a replay computes the same id.
pub(super) fn note_id(ms: u64, key: &str) -> u64 {
    feed_core::id::min_id_at(ms) | (feed_core::keys::stable_hash(key.as_bytes()) & 0x3F_FFFF)
}

pub(super) use crate::store::id_of;

/// Whether `held` is the note `rec` would store: the same origin (a
/// message's claim, a remind's group), or, for a message stored before
/// notes carried their origin, the same sender.
fn same_origin(held: &NoteRecord, rec: &NoteRecord) -> bool {
    let sender = |r: &NoteRecord| r.note.as_ref().map(|n| n.sender).unwrap_or(0);
    held.group_key == rec.group_key || (held.group_key.is_empty() && sender(rec) != 0 && sender(held) == sender(rec))
}

/// How far [`Notifier::place_note`] looks past a note's own id: ids collide
/// only within one millisecond, so a handful of probes always suffices.
const PLACE_PROBES: u64 = 64;

/// The services notify asks before it delivers or subscribes.
#[derive(Clone)]
pub struct Peers {
    /// follow-graph: who follows, blocks and mutes whom.
    pub graph: Arc<dyn Relations>,
    /// publish: who may see an activity.
    pub activities: Arc<dyn crate::Activities>,
}

impl Notifier {
    /// A notifier over its dependencies. Watch streams end when `shutdown` fires.
    pub fn new(
        store: Arc<dyn NotifyStore>,
        live: Arc<dyn LiveLog>,
        peers: Peers,
        jobs: Arc<dyn JobQueue<RemindJob>>,
        clock: Arc<dyn Clock>,
        cfg: NotifyRules,
        shutdown: Shutdown,
    ) -> Self {
        // One pusher appends live copies in the order they were handed over
        // (a user's Watch sees them in delivery order), off the request path.
        let (live_queue, mut queued) = tokio::sync::mpsc::channel(LIVE_QUEUE);
        let pusher = live.clone();
        tokio::spawn(async move {
            while let Some((user, note)) = queued.recv().await {
                if let Err(e) = pusher.append(user, &note).await {
                    metrics::counter!("feed_notify_live_append_failures_total").increment(1);
                    tracing::warn!(error = %e, user, "live append failed; the notification is stored");
                }
            }
        });
        Self {
            inner: Arc::new(Inner {
                store,
                live,
                live_queue,
                graph: peers.graph,
                activities: peers.activities,
                jobs,
                clock,
                cfg,
                last_seq: AtomicU64::new(0),
                watchers: Default::default(),
                locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
                shutdown,
            }),
        }
    }

    /// Stores `rec` for `user` at the first id from its own that is free or
    /// holds this very note already (the same `group_key`, its origin):
    /// note ids of one millisecond can collide, and a note must never
    /// overwrite another or be taken for it. Sets the id it was placed at;
    /// true when stored now, false when it was there already (a replay).
    pub(super) async fn place_note(&self, user: UserId, rec: &mut NoteRecord) -> Result<bool, ApiError> {
        let from = id_of(rec);
        for id in from..from.saturating_add(PLACE_PROBES) {
            if let Some(n) = rec.note.as_mut() {
                n.id = id;
            }
            if self.inner.store.insert_note(user, rec).await? {
                return Ok(true);
            }
            if self
                .inner
                .store
                .note(user, id)
                .await?
                .is_some_and(|held| same_origin(&held, rec))
            {
                return Ok(false);
            }
        }
        Err(ApiError::Internal(format!(
            "no free notification id within {PLACE_PROBES} of {from} for user {user}"
        )))
    }

    /// The store (readiness checks).
    pub fn store(&self) -> &Arc<dyn NotifyStore> {
        &self.inner.store
    }

    fn cfg(&self) -> &NotifyRules {
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
}
