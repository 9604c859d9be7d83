//! The follow-graph store: the trait the service speaks, its backends, and
//! the contract suite every backend must pass.

use async_trait::async_trait;
use feed_core::{FeedRef, UserId};
/// An entry of the edge change log.
pub use feed_proto::events::v1::EdgeChange as EdgeLogEntry;
pub use feed_proto::events::v1::edge_change::Cause;

pub mod contract;
pub mod embedded;
pub mod scylla;

/// Followers of a feed are split by follower id into shards of this many
/// ids (`shard = follower_id >> SHARD_BITS`). A shard is a bounded ScyllaDB
/// partition and the unit a fanout sub-job covers.
pub const SHARD_BITS: u32 = 16;

/// The shard of a follower id.
pub fn shard_of(user: UserId) -> u64 {
    user >> SHARD_BITS
}

/// Rules the store applies inside its atomic mutations.
#[derive(Debug, Clone, Copy)]
pub struct GraphPolicy {
    /// Followers at which a feed becomes a celebrity.
    pub celebrity_threshold: u64,
    /// Followers below which a celebrity stops being one (hysteresis).
    pub celebrity_exit_below: u64,
    /// Most feeds one user may follow.
    pub max_following: u64,
    /// Most users one user may block.
    pub max_blocks: u64,
    /// Most users one user may mute.
    pub max_mutes: u64,
}

impl GraphPolicy {
    /// From configuration: exit at `threshold * (1 - hysteresis)`.
    pub fn new(threshold: u64, hysteresis: f64, max_following: u64) -> Self {
        let h = hysteresis.clamp(0.0, 1.0);
        Self {
            celebrity_threshold: threshold.max(1),
            celebrity_exit_below: ((threshold.max(1) as f64) * (1.0 - h)).ceil() as u64,
            max_following,
            max_blocks: 10_000,
            max_mutes: 10_000,
        }
    }

    /// With caps on the blocks and mutes one user holds.
    pub fn with_pair_limits(self, max_blocks: u64, max_mutes: u64) -> Self {
        Self {
            max_blocks,
            max_mutes,
            ..self
        }
    }

    /// The celebrity flag after a follower count change.
    pub fn celebrity(&self, was: bool, followers: u64) -> bool {
        if was {
            followers >= self.celebrity_exit_below
        } else {
            followers >= self.celebrity_threshold
        }
    }
}

/// One follow edge as it stands after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeState {
    /// The following user.
    pub follower: UserId,
    /// The followed feed.
    pub feed: FeedRef,
    /// Bumped by every change to the edge; 0 when it never existed.
    pub version: u64,
    /// The edge exists.
    pub following: bool,
    /// The follower mutes the feed's owner.
    pub muted: bool,
}

/// The result of a change to one edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeChange {
    /// False for an idempotent repeat: nothing was written.
    pub changed: bool,
    /// The edge afterwards.
    pub edge: EdgeState,
}

/// The result of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockChange {
    /// False when the block already stood.
    pub changed: bool,
    /// The follow edges (both directions) the block removed.
    pub removed: Vec<EdgeState>,
}

/// How `user` relates to one target user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Relationship {
    /// The target.
    pub target: UserId,
    /// user follows user:target.
    pub following: bool,
    /// target follows user:user.
    pub followed_by: bool,
    /// user blocks target.
    pub blocking: bool,
    /// target blocks user.
    pub blocked_by: bool,
    /// user mutes target.
    pub muting: bool,
    /// target mutes user.
    pub muted_by: bool,
}

/// A follower of a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Follower {
    /// The follower.
    pub user: UserId,
    /// The follower mutes the feed's owner.
    pub muted: bool,
}

/// Follower count and celebrity flag of a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeedCounts {
    /// Exact count of follow edges into the feed.
    pub followers: u64,
    /// See [`GraphPolicy::celebrity`].
    pub celebrity: bool,
}

/// Store failures, in the store's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A block between the follower and the feed's owner forbids the follow.
    #[error("a block stands between user {follower} and {feed}")]
    Blocked {
        /// The would-be follower.
        follower: UserId,
        /// The feed.
        feed: String,
    },
    /// The user follows the maximum number of feeds.
    #[error("user follows the maximum of {0} feeds")]
    TooManyFollows(u64),
    /// The user blocks the maximum number of users.
    #[error("target_user_id: user blocks the maximum of {0} users; unblock one first")]
    TooManyBlocks(u64),
    /// The user mutes the maximum number of users.
    #[error("target_user_id: user mutes the maximum of {0} users; unmute one first")]
    TooManyMutes(u64),
    /// The backend did not answer.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backend failed or holds data this code cannot read.
    #[error("storage error: {0}")]
    Backend(String),
}

/// Storage of the follow graph. Every mutation is atomic: an edge, its
/// mirror, counts and versions change together or not at all.
#[async_trait]
pub trait GraphStore: Send + Sync + 'static {
    /// Adds the edge follower → feed unless it exists; refuses across a block.
    async fn follow(&self, follower: UserId, feed: &FeedRef) -> Result<EdgeChange, StoreError>;
    /// Removes the edge if it exists.
    async fn unfollow(&self, follower: UserId, feed: &FeedRef) -> Result<EdgeChange, StoreError>;
    /// user blocks target: removes follows both ways.
    async fn block(&self, user: UserId, target: UserId) -> Result<BlockChange, StoreError>;
    /// Lifts a block; returns whether one stood.
    async fn unblock(&self, user: UserId, target: UserId) -> Result<bool, StoreError>;
    /// Sets whether user mutes target; the edge user → user:target keeps existing.
    async fn set_mute(&self, user: UserId, target: UserId, muted: bool) -> Result<EdgeChange, StoreError>;
    /// Batch relationships of `user` to `targets`, in order.
    async fn relationships(&self, user: UserId, targets: &[UserId]) -> Result<Vec<Relationship>, StoreError>;
    /// For each target, in order: whether a block stands either way, and
    /// whether `user` mutes it (what a reader's filter needs, and no more).
    async fn blocks_and_mutes(&self, user: UserId, targets: &[UserId]) -> Result<Vec<(bool, bool)>, StoreError>;
    /// Whether `user` follows each of `feeds`, in order.
    async fn is_following(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, StoreError>;
    /// Makes `user` a member of `feed` or not; true when that changed.
    /// Membership is its own relation, apart from following: it is what
    /// lets a user post to a group or company feed.
    async fn set_member(&self, feed: &FeedRef, user: UserId, member: bool) -> Result<bool, StoreError>;
    /// Whether `user` is a member of each of `feeds`, in order.
    async fn is_member(&self, user: UserId, feeds: &[FeedRef]) -> Result<Vec<bool>, StoreError>;
    /// Members of `feed` with id > `after`, ascending, at most `limit`.
    async fn list_members(&self, feed: &FeedRef, after: UserId, limit: usize) -> Result<Vec<UserId>, StoreError>;
    /// Followers of `feed` with id > `after`, ascending, at most `limit`.
    async fn list_followers(&self, feed: &FeedRef, after: UserId, limit: usize) -> Result<Vec<Follower>, StoreError>;
    /// Feeds `user` follows that sort after `after`, ascending, at most `limit`.
    async fn list_following(
        &self,
        user: UserId,
        after: Option<&FeedRef>,
        limit: usize,
    ) -> Result<Vec<FeedRef>, StoreError>;
    /// The non-empty follower shards of `feed`, ascending.
    async fn follower_shards(&self, feed: &FeedRef) -> Result<Vec<u64>, StoreError>;
    /// Followers in `shard` with id > `after`, ascending, at most `limit`.
    async fn page_shard(
        &self,
        feed: &FeedRef,
        shard: u64,
        after: UserId,
        limit: usize,
    ) -> Result<Vec<Follower>, StoreError>;
    /// Counts of each feed, in order.
    async fn feed_counts(&self, feeds: &[FeedRef]) -> Result<Vec<FeedCounts>, StoreError>;
    /// How many feeds each user follows, in order.
    async fn following_counts(&self, users: &[UserId]) -> Result<Vec<u64>, StoreError>;
    /// Current state of each edge, in order.
    async fn edge_states(&self, edges: &[(UserId, FeedRef)]) -> Result<Vec<EdgeState>, StoreError>;
    /// Per-user graph versions, in order.
    async fn graph_versions(&self, users: &[UserId]) -> Result<Vec<u64>, StoreError>;
    /// The change log after `after_seq`, oldest first: every edge change is
    /// logged with the change itself, so a consumer that resumes from its
    /// last position misses none.
    async fn edge_changes(&self, after_seq: u64, limit: usize) -> Result<Vec<EdgeLogEntry>, StoreError>;
    /// Removes every change logged below position `below_seq` (every
    /// consumer has passed it, or it is older than the log keeps).
    async fn trim_edge_log(&self, below_seq: u64) -> Result<(), StoreError>;
    /// Answers when the backend is usable.
    async fn ping(&self) -> Result<(), StoreError>;
}

impl From<feed_core::StorageError> for StoreError {
    fn from(e: feed_core::StorageError) -> Self {
        match e {
            feed_core::StorageError::Unavailable(m) => StoreError::Unavailable(m),
            feed_core::StorageError::Backend(m) => StoreError::Backend(m),
        }
    }
}
