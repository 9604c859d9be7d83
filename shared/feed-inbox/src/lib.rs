//! Home inboxes: the ids pushed to a user, newest first, capped, with a
//! completeness floor (DESIGN Invariant 1).
//!
//! Layout on Redis (one hash tag per user, so a Redis Cluster keeps a user's
//! keys on one slot and a script can touch both):
//! - `inbox:{<user>}`: ZSET, every score 0, members the 8-byte big-endian
//!   activity id. Equal scores order members lexicographically, which for
//!   fixed-width big-endian ids is numeric order, so pages are exact
//!   `ZRANGE ... BYLEX REV` reads with no f64 precision loss (ids exceed 2^53).
//! - `inbox-floor:{<user>}`: the 8-byte id down to which the inbox is
//!   complete. Its presence, with the one-byte member `\xff` (the live mark,
//!   above every id) in the set, is what makes the inbox *live*: fanout
//!   writes only to live inboxes and never creates a one-item inbox, and a
//!   floor whose set Redis evicted counts for nothing.
//!
//! Ids below the floor are not served from the inbox; readers take them from
//! the followees' outboxes with the same cursor.

use async_trait::async_trait;
use feed_core::UserId;

pub mod contract;
pub mod graph_token;
pub mod home;
pub mod memory;
pub mod redis_store;

pub use graph_token::GraphTokens;
pub use memory::MemoryInbox;
pub use redis_store::RedisInbox;

/// Inbox sizing.
#[derive(Debug, Clone, Copy)]
pub struct InboxLimits {
    /// Most ids an inbox keeps; older ones are trimmed and the floor raised.
    pub cap: usize,
    /// An inbox unused this long expires (its user turns cold).
    pub ttl_ms: u64,
    /// Redis Cluster: a script may only touch keys of one slot, so fanout
    /// sends one call per user instead of one per batch of users.
    pub cluster: bool,
}

impl InboxLimits {
    /// From the `inbox` settings (`cap`, `ttl_secs`) and `redis.cluster`;
    /// a zero cap or TTL counts as one.
    pub fn from_settings(cap: usize, ttl_secs: u64, cluster: bool) -> Self {
        Self {
            cap: cap.max(1),
            ttl_ms: ttl_secs.max(1) * 1000,
            cluster,
        }
    }
}

impl Default for InboxLimits {
    fn default() -> Self {
        Self {
            cap: 800,
            ttl_ms: 7 * 24 * 3600 * 1000,
            cluster: false,
        }
    }
}

/// One page of an inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxPage {
    /// Ids below the cursor, newest first.
    pub ids: Vec<u64>,
    /// The inbox is complete for ids >= floor.
    pub floor: u64,
}

/// Inbox failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    /// Redis did not answer or refused.
    #[error("inbox store unavailable: {0}")]
    Unavailable(String),
}

impl From<InboxError> for feed_core::ApiError {
    /// The inbox is a cache of durable data: its outage is retryable.
    fn from(e: InboxError) -> Self {
        feed_core::ApiError::Unavailable(e.to_string())
    }
}

impl From<redis::RedisError> for InboxError {
    fn from(e: redis::RedisError) -> Self {
        InboxError::Unavailable(e.to_string())
    }
}

/// Where home inboxes live.
#[async_trait]
pub trait InboxStore: Send + Sync + 'static {
    /// Adds `id` to the live inboxes among `users` (fanout). Returns how many
    /// inboxes received it; absent inboxes are skipped, never created.
    async fn push(&self, users: &[UserId], id: u64) -> Result<usize, InboxError>;
    /// Adds `ids` to one live inbox (backfill after a follow), first raising
    /// its floor to `floor` when that is higher: a backfill that read a
    /// bounded page of a feed guarantees nothing below it. Returns false when
    /// the inbox is not live.
    async fn backfill(&self, user: UserId, ids: &[u64], floor: u64) -> Result<bool, InboxError>;
    /// Makes the inbox live with a provisional floor unless it already is;
    /// true when this call created it. A rebuilder calls this *before*
    /// reading the outboxes, so pushes during the rebuild land (marker first).
    async fn mark_live(&self, user: UserId, provisional_floor: u64) -> Result<bool, InboxError>;
    /// Unions `ids` into the inbox (making it live) and sets its floor: to
    /// `floor` when the current floor is still `provisional` (this rebuild's
    /// own marker), else to min(floor, current), since the union of two
    /// inboxes is complete down to the lower of their floors.
    async fn rebuild(&self, user: UserId, ids: &[u64], floor: u64, provisional: Option<u64>) -> Result<(), InboxError>;
    /// Newest ids below `before` (all when None), at most `limit`, and the
    /// floor; None when the inbox is not live. Reading does not refresh the
    /// expiry: that is [`InboxStore::touch`], which readers debounce.
    async fn page(&self, user: UserId, before: Option<u64>, limit: usize) -> Result<Option<InboxPage>, InboxError>;
    /// [`InboxStore::page`] and the reader's graph token
    /// ([`graph_token`]) read with it; stores that keep no tokens answer None.
    async fn page_with_graph_token(
        &self,
        user: UserId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Option<InboxPage>, Option<u64>), InboxError> {
        Ok((self.page(user, before, limit).await?, None))
    }
    /// Removes `ids` from one inbox (purge after unfollow or block).
    async fn remove(&self, user: UserId, ids: &[u64]) -> Result<(), InboxError>;
    /// Removes `id` from many inboxes (purge after delete).
    async fn remove_from(&self, users: &[UserId], id: u64) -> Result<(), InboxError>;
    /// Marks the user active: the inbox's expiry starts again. False when not live.
    async fn touch(&self, user: UserId) -> Result<bool, InboxError>;
    /// Whether the inbox is live.
    async fn is_live(&self, user: UserId) -> Result<bool, InboxError>;
    /// Drops the inbox (the user turned cold).
    async fn evict(&self, user: UserId) -> Result<(), InboxError>;
}
