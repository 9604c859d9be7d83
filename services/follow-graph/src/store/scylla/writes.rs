//! Writes: follow, unfollow, block, unblock and mute, each logged for the
//! edge jobs publish derives from the change log.

use super::*;

pub(super) async fn follow(
    store: &ScyllaGraphStore,
    follower: UserId,
    feed: &FeedRef,
) -> Result<EdgeChange, StoreError> {
    let name = feed.to_string();
    let owner = feed.user_id();
    let muted = match owner {
        Some(o) => {
            if store.blocks(follower, o).await? || store.blocks(o, follower).await? {
                return Err(StoreError::Blocked { follower, feed: name });
            }
            store.muting(follower, o).await?
        }
        None => false,
    };
    if store.is_following_one(follower, &name).await? {
        // A retry after a crash re-asserts the mirror row (idempotent upsert).
        store.write_mirror(follower, &name, muted).await?;
        return Ok(EdgeChange {
            changed: false,
            edge: store.state(follower, feed).await?,
        });
    }
    if store.user_stats(follower).await?.map(|s| s.0).unwrap_or(0) >= store.policy.max_following {
        return Err(StoreError::TooManyFollows(store.policy.max_following));
    }
    if !store
        .lwt(&store.st.following_insert, (i(follower), name.as_str()))
        .await?
    {
        return Ok(EdgeChange {
            changed: false,
            edge: store.state(follower, feed).await?,
        });
    }
    store.write_mirror(follower, &name, muted).await?;
    let version = store.bump_edge_version(follower, &name).await?;
    store.add_followers(&name, 1).await?;
    store.touch_user(follower, 1).await?;
    let edge = EdgeState {
        follower,
        feed: feed.clone(),
        version,
        following: true,
        muted,
    };
    store.log(&edge, Cause::Follow).await?;
    // A block written while we claimed the edge: one of us sees the other
    // (quorum writes, quorum reads), so undo rather than leave a follow across it.
    if let Some(o) = owner
        && (store.blocks(follower, o).await? || store.blocks(o, follower).await?)
    {
        store.remove_edge(follower, feed).await?;
        return Err(StoreError::Blocked { follower, feed: name });
    }
    Ok(EdgeChange { changed: true, edge })
}

pub(super) async fn unfollow(
    store: &ScyllaGraphStore,
    follower: UserId,
    feed: &FeedRef,
) -> Result<EdgeChange, StoreError> {
    let changed = store.remove_edge(follower, feed).await?.is_some();
    let edge = store.state(follower, feed).await?;
    if changed {
        store.log(&edge, Cause::Unfollow).await?;
    }
    Ok(EdgeChange { changed, edge })
}

pub(super) async fn block(store: &ScyllaGraphStore, user: UserId, target: UserId) -> Result<BlockChange, StoreError> {
    // Checked before the insert: two blocks by one user at once can pass
    // the cap by one each (a cap on state, not an exact count).
    let max = store.policy.max_blocks;
    if !store.blocks(user, target).await? && store.pair_count(&store.st.block_count, user, max).await? >= max {
        return Err(StoreError::TooManyBlocks(max));
    }
    if !store.lwt(&store.st.block_insert, (i(user), i(target))).await? {
        return Ok(BlockChange {
            changed: false,
            removed: vec![],
        });
    }
    let mut removed = Vec::new();
    for (a, b) in [(user, target), (target, user)] {
        let feed = FeedRef::user(b);
        match store.remove_edge(a, &feed).await? {
            Some(version) => {
                let edge = EdgeState {
                    follower: a,
                    muted: store.muting(a, b).await?,
                    feed,
                    version,
                    following: false,
                };
                store.log(&edge, Cause::Block).await?;
                removed.push(edge);
            }
            None => store.touch_user(a, 0).await?,
        }
    }
    Ok(BlockChange { changed: true, removed })
}

pub(super) async fn unblock(store: &ScyllaGraphStore, user: UserId, target: UserId) -> Result<bool, StoreError> {
    let changed = store.lwt(&store.st.block_delete, (i(user), i(target))).await?;
    if changed {
        for (a, b) in [(user, target), (target, user)] {
            // Reads dropped b's items from a's inbox while the block
            // stood: the logged change brings them back (see embedded).
            let feed = FeedRef::user(b);
            let version = store.bump_edge_version(a, &feed.to_string()).await?;
            let edge = EdgeState {
                version,
                ..store.state(a, &feed).await?
            };
            store.log(&edge, Cause::Unblock).await?;
            store.touch_user(a, 0).await?;
        }
    }
    Ok(changed)
}

pub(super) async fn set_mute(
    store: &ScyllaGraphStore,
    user: UserId,
    target: UserId,
    muted: bool,
) -> Result<EdgeChange, StoreError> {
    let feed = FeedRef::user(target);
    let name = feed.to_string();
    let max = store.policy.max_mutes;
    if muted && !store.muting(user, target).await? && store.pair_count(&store.st.mute_count, user, max).await? >= max {
        return Err(StoreError::TooManyMutes(max));
    }
    let changed = if muted {
        store.lwt(&store.st.mute_insert, (i(user), i(target))).await?
    } else {
        store.lwt(&store.st.mute_delete, (i(user), i(target))).await?
    };
    if !changed {
        return Ok(EdgeChange {
            changed,
            edge: store.state(user, &feed).await?,
        });
    }
    let following = store.is_following_one(user, &name).await?;
    if following {
        store.write_mirror(user, &name, muted).await?;
    }
    let version = store.bump_edge_version(user, &name).await?;
    store.touch_user(user, 0).await?;
    let edge = EdgeState {
        follower: user,
        feed,
        version,
        following,
        muted,
    };
    store
        .log(&edge, if muted { Cause::Mute } else { Cause::Unmute })
        .await?;
    Ok(EdgeChange { changed, edge })
}

/// Drops whole hour buckets below `below_seq`'s (each once per process,
/// from a week and a day back: reads never look further), then the part of
/// its own bucket below it, as one range tombstone.
pub(super) async fn trim_edge_log(store: &ScyllaGraphStore, below_seq: u64) -> Result<(), StoreError> {
    let boundary = log_bucket(below_seq);
    let mut trimmed = store.trimmed_below.lock().await;
    let from = trimmed.unwrap_or(boundary.saturating_sub(24 * 8));
    for bucket in from..boundary {
        store.exec(&store.st.log_drop_bucket, (i(bucket),)).await?;
    }
    *trimmed = Some(boundary.max(from));
    store
        .exec(&store.st.log_drop_below, (i(boundary), i(below_seq)))
        .await?;
    Ok(())
}
