//! Writes: follow, unfollow, block, unblock and mute, each logged for the
//! edge jobs publish derives from the change log.

use super::*;

pub(super) async fn follow(
    store: &EmbeddedGraphStore,
    follower: UserId,
    feed: &FeedRef,
) -> Result<EdgeChange, StoreError> {
    let _w = store.lock();
    if EmbeddedGraphStore::exists(&store.following, &user_feed_key(follower, feed))? {
        return Ok(EdgeChange {
            changed: false,
            edge: store.state(follower, feed)?,
        });
    }
    let muted = match feed.user_id() {
        Some(owner) => {
            if store.either_blocks(follower, owner)? {
                return Err(StoreError::Blocked {
                    follower,
                    feed: feed.to_string(),
                });
            }
            store.is_muting(follower, owner)?
        }
        None => false,
    };
    if store.user_stats_one(follower)?.0 >= store.policy.max_following {
        return Err(StoreError::TooManyFollows(store.policy.max_following));
    }
    let mut batch = store.db.batch();
    let version = store.write_edge(&mut batch, follower, feed, true, muted)?;
    let edge = EdgeState {
        follower,
        feed: feed.clone(),
        version,
        following: true,
        muted,
    };
    store.log(&mut batch, &edge, Cause::Follow);
    store.commit(batch)?;
    Ok(EdgeChange { changed: true, edge })
}

pub(super) async fn unfollow(
    store: &EmbeddedGraphStore,
    follower: UserId,
    feed: &FeedRef,
) -> Result<EdgeChange, StoreError> {
    let _w = store.lock();
    if !EmbeddedGraphStore::exists(&store.following, &user_feed_key(follower, feed))? {
        return Ok(EdgeChange {
            changed: false,
            edge: store.state(follower, feed)?,
        });
    }
    let mut batch = store.db.batch();
    let version = store.write_edge(&mut batch, follower, feed, false, false)?;
    let edge = EdgeState {
        version,
        following: false,
        ..store.state(follower, feed)?
    };
    store.log(&mut batch, &edge, Cause::Unfollow);
    store.commit(batch)?;
    Ok(EdgeChange { changed: true, edge })
}

pub(super) async fn block(store: &EmbeddedGraphStore, user: UserId, target: UserId) -> Result<BlockChange, StoreError> {
    let _w = store.lock();
    if EmbeddedGraphStore::exists(&store.blocks, &u64_pair(user, target))? {
        return Ok(BlockChange {
            changed: false,
            removed: vec![],
        });
    }
    if store.pair_count(&store.blocks, user, store.policy.max_blocks)? >= store.policy.max_blocks {
        return Err(StoreError::TooManyBlocks(store.policy.max_blocks));
    }
    let mut batch = store.db.batch();
    batch.insert(&store.blocks, u64_pair(user, target), []);
    let mut removed = Vec::new();
    for (a, b) in [(user, target), (target, user)] {
        let feed = FeedRef::user(b);
        if EmbeddedGraphStore::exists(&store.following, &user_feed_key(a, &feed))? {
            let version = store.write_edge(&mut batch, a, &feed, false, false)?;
            let edge = EdgeState {
                follower: a,
                feed,
                version,
                following: false,
                muted: store.is_muting(a, b)?,
            };
            store.log(&mut batch, &edge, Cause::Block);
            removed.push(edge);
        } else {
            store.put_user_stats(&mut batch, a, 0)?;
        }
    }
    store.commit(batch)?;
    store.set_pair(false, u64_pair(user, target), true);
    Ok(BlockChange { changed: true, removed })
}

pub(super) async fn unblock(store: &EmbeddedGraphStore, user: UserId, target: UserId) -> Result<bool, StoreError> {
    let _w = store.lock();
    if !EmbeddedGraphStore::exists(&store.blocks, &u64_pair(user, target))? {
        return Ok(false);
    }
    let mut batch = store.db.batch();
    batch.remove(&store.blocks, u64_pair(user, target));
    for (a, b) in [(user, target), (target, user)] {
        // Reads dropped b's items from a's inbox while the block stood,
        // whichever followed feed brought them: the log turns this into
        // a job that brings them back (a version bump, like a mute).
        let feed = FeedRef::user(b);
        let version = store.edge_version(a, &feed)? + 1;
        batch.insert(&store.edge_versions, user_feed_key(a, &feed), version.to_be_bytes());
        let edge = EdgeState {
            version,
            ..store.state(a, &feed)?
        };
        store.log(&mut batch, &edge, Cause::Unblock);
        store.put_user_stats(&mut batch, a, 0)?;
    }
    store.commit(batch)?;
    store.set_pair(false, u64_pair(user, target), false);
    Ok(true)
}

pub(super) async fn set_mute(
    store: &EmbeddedGraphStore,
    user: UserId,
    target: UserId,
    muted: bool,
) -> Result<EdgeChange, StoreError> {
    let _w = store.lock();
    let feed = FeedRef::user(target);
    if store.is_muting(user, target)? == muted {
        return Ok(EdgeChange {
            changed: false,
            edge: store.state(user, &feed)?,
        });
    }
    if muted && store.pair_count(&store.mutes, user, store.policy.max_mutes)? >= store.policy.max_mutes {
        return Err(StoreError::TooManyMutes(store.policy.max_mutes));
    }
    let mut batch = store.db.batch();
    if muted {
        batch.insert(&store.mutes, u64_pair(user, target), []);
    } else {
        batch.remove(&store.mutes, u64_pair(user, target));
    }
    let following = EmbeddedGraphStore::exists(&store.following, &user_feed_key(user, &feed))?;
    if following {
        batch.insert(&store.followers, feed_key(&feed, user), [u8::from(muted)]);
    }
    // Mute state is part of the edge: jobs carrying the old version must not apply.
    let version = store.edge_version(user, &feed)? + 1;
    batch.insert(&store.edge_versions, user_feed_key(user, &feed), version.to_be_bytes());
    store.put_user_stats(&mut batch, user, 0)?;
    let edge = EdgeState {
        follower: user,
        feed,
        version,
        following,
        muted,
    };
    store.log(&mut batch, &edge, if muted { Cause::Mute } else { Cause::Unmute });
    store.commit(batch)?;
    store.set_pair(true, u64_pair(user, target), muted);
    Ok(EdgeChange { changed: true, edge })
}
