//! Follow-graph domain logic: rules on top of the store, in plain Rust.

use std::sync::Arc;

use feed_core::{ApiError, FeedRef, UserId};

use crate::store::{BlockChange, EdgeChange, EdgeState, FeedCounts, Follower, GraphStore, Relationship};

/// Counts of one user: feeds followed, and followers of `user:<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserCounts {
    /// The user.
    pub user: UserId,
    /// Feeds the user follows.
    pub following: u64,
    /// Followers of user:<id>.
    pub followers: u64,
}

/// The follow-graph service.
#[derive(Clone)]
pub struct FollowGraph {
    store: Arc<dyn GraphStore>,
}

fn record(op: &'static str, changed: bool) {
    if changed {
        metrics::counter!("feed_followgraph_edge_changes_total", "op" => op).increment(1);
    }
}

impl FollowGraph {
    /// A service over `store`.
    pub fn new(store: Arc<dyn GraphStore>) -> Self {
        Self { store }
    }

    /// The backing store (readiness checks).
    pub fn store(&self) -> &Arc<dyn GraphStore> {
        &self.store
    }

    /// follower follows feed.
    pub async fn follow(&self, follower: UserId, feed: &FeedRef) -> Result<EdgeChange, ApiError> {
        if feed.user_id() == Some(follower) {
            // A reader always sees their own posts; a self-edge would only skew counts.
            return Err(ApiError::invalid("feed", "a user cannot follow their own feed"));
        }
        let change = self.store.follow(follower, feed).await?;
        record("follow", change.changed);
        Ok(change)
    }

    /// follower stops following feed.
    pub async fn unfollow(&self, follower: UserId, feed: &FeedRef) -> Result<EdgeChange, ApiError> {
        let change = self.store.unfollow(follower, feed).await?;
        record("unfollow", change.changed);
        Ok(change)
    }

    /// user blocks target.
    pub async fn block(&self, user: UserId, target: UserId) -> Result<BlockChange, ApiError> {
        if user == target {
            return Err(ApiError::invalid("target_user_id", "a user cannot block themself"));
        }
        let change = self.store.block(user, target).await?;
        record("block", change.changed);
        Ok(change)
    }

    /// user lifts a block on target.
    pub async fn unblock(&self, user: UserId, target: UserId) -> Result<bool, ApiError> {
        let changed = self.store.unblock(user, target).await?;
        record("unblock", changed);
        Ok(changed)
    }

    /// user mutes or unmutes target.
    pub async fn set_mute(&self, user: UserId, target: UserId, muted: bool) -> Result<EdgeChange, ApiError> {
        if user == target {
            return Err(ApiError::invalid("target_user_id", "a user cannot mute themself"));
        }
        let change = self.store.set_mute(user, target, muted).await?;
        record(if muted { "mute" } else { "unmute" }, change.changed);
        Ok(change)
    }

    /// For each target: a block either way, and whether `user` mutes it.
    pub async fn blocks_and_mutes(&self, user: UserId, targets: &[UserId]) -> Result<Vec<(bool, bool)>, ApiError> {
        Ok(self.store.blocks_and_mutes(user, targets).await?)
    }

    /// Relationships of user to targets, and whether user follows feeds.
    pub async fn relationships(
        &self,
        user: UserId,
        targets: &[UserId],
        feeds: &[FeedRef],
    ) -> Result<(Vec<Relationship>, Vec<bool>), ApiError> {
        Ok((
            self.store.relationships(user, targets).await?,
            self.store.is_following(user, feeds).await?,
        ))
    }

    /// A page of followers after `after`, and whether more follow.
    pub async fn list_followers(
        &self,
        feed: &FeedRef,
        after: UserId,
        limit: usize,
    ) -> Result<(Vec<Follower>, bool), ApiError> {
        // Read one extra to know whether a next page exists without an empty last page.
        let mut page = self.store.list_followers(feed, after, limit + 1).await?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }

    /// A page of followed feeds after `after`, and whether more follow.
    pub async fn list_following(
        &self,
        user: UserId,
        after: Option<&FeedRef>,
        limit: usize,
    ) -> Result<(Vec<FeedRef>, bool), ApiError> {
        let mut page = self.store.list_following(user, after, limit + 1).await?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }

    /// Counts of feeds and users.
    pub async fn counts(
        &self,
        feeds: &[FeedRef],
        users: &[UserId],
    ) -> Result<(Vec<FeedCounts>, Vec<UserCounts>), ApiError> {
        let feed_counts = self.store.feed_counts(feeds).await?;
        let following = self.store.following_counts(users).await?;
        let user_feeds: Vec<FeedRef> = users.iter().map(|u| FeedRef::user(*u)).collect();
        let followers = self.store.feed_counts(&user_feeds).await?;
        let users = users
            .iter()
            .zip(following)
            .zip(followers)
            .map(|((&user, following), f)| UserCounts {
                user,
                following,
                followers: f.followers,
            })
            .collect();
        Ok((feed_counts, users))
    }

    /// Non-empty follower shards of feed, and the total follower count.
    pub async fn follower_shards(&self, feed: &FeedRef) -> Result<(Vec<u64>, u64), ApiError> {
        let shards = self.store.follower_shards(feed).await?;
        let total = self.store.feed_counts(std::slice::from_ref(feed)).await?[0].followers;
        Ok((shards, total))
    }

    /// One range page of a shard; `done` when nothing follows it in the shard.
    pub async fn page_shard(
        &self,
        feed: &FeedRef,
        shard: u64,
        after: UserId,
        limit: usize,
    ) -> Result<(Vec<Follower>, bool), ApiError> {
        let mut page = self.store.page_shard(feed, shard, after, limit + 1).await?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, !more))
    }

    /// Current edge states.
    pub async fn edge_states(&self, edges: &[(UserId, FeedRef)]) -> Result<Vec<EdgeState>, ApiError> {
        Ok(self.store.edge_states(edges).await?)
    }

    /// The edge change log after `after_seq`.
    pub async fn edge_changes(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<crate::store::EdgeLogEntry>, ApiError> {
        Ok(self.store.edge_changes(after_seq, limit).await?)
    }

    /// Per-user graph versions.
    pub async fn graph_versions(&self, users: &[UserId]) -> Result<Vec<u64>, ApiError> {
        Ok(self.store.graph_versions(users).await?)
    }
}
