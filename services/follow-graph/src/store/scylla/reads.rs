//! Reads: relationships, follow checks, follower and following pages,
//! shards, counts, edge states and versions, and the edge change log.

use super::*;

pub(super) async fn blocks_and_mutes(
    store: &ScyllaGraphStore,
    user: UserId,
    targets: &[UserId],
) -> Result<Vec<(bool, bool)>, StoreError> {
    let mut out = Vec::with_capacity(targets.len());
    for &t in targets {
        let blocked = store.blocks(user, t).await? || store.blocks(t, user).await?;
        out.push((blocked, store.muting(user, t).await?));
    }
    Ok(out)
}

pub(super) async fn relationships(
    store: &ScyllaGraphStore,
    user: UserId,
    targets: &[UserId],
) -> Result<Vec<Relationship>, StoreError> {
    let me = FeedRef::user(user).to_string();
    let mut out = Vec::with_capacity(targets.len());
    for &t in targets {
        out.push(Relationship {
            target: t,
            following: store.is_following_one(user, &FeedRef::user(t).to_string()).await?,
            followed_by: store.is_following_one(t, &me).await?,
            blocking: store.blocks(user, t).await?,
            blocked_by: store.blocks(t, user).await?,
            muting: store.muting(user, t).await?,
            muted_by: store.muting(t, user).await?,
        });
    }
    Ok(out)
}

pub(super) async fn is_following(
    store: &ScyllaGraphStore,
    user: UserId,
    feeds: &[FeedRef],
) -> Result<Vec<bool>, StoreError> {
    let mut out = Vec::with_capacity(feeds.len());
    for f in feeds {
        out.push(store.is_following_one(user, &f.to_string()).await?);
    }
    Ok(out)
}

pub(super) async fn list_followers(
    store: &ScyllaGraphStore,
    feed: &FeedRef,
    after: UserId,
    limit: usize,
) -> Result<Vec<Follower>, StoreError> {
    let name = feed.to_string();
    let mut out = Vec::new();
    for shard in store.follower_shards(feed).await? {
        if shard < shard_of(after) {
            continue;
        }
        let need = limit - out.len();
        out.extend(store.page(&name, shard, after, need).await?);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

pub(super) async fn list_following(
    store: &ScyllaGraphStore,
    user: UserId,
    after: Option<&FeedRef>,
    limit: usize,
) -> Result<Vec<FeedRef>, StoreError> {
    let limit = limit.min(i32::MAX as usize) as i32;
    let result = match after {
        Some(f) => {
            store
                .exec(&store.st.following_page_after, (i(user), f.to_string(), limit))
                .await?
        }
        None => store.exec(&store.st.following_page, (i(user), limit)).await?,
    };
    let rows = result.into_rows_result().map_err(err)?;
    rows.rows::<(String,)>()
        .map_err(err)?
        .map(|r| r.map_err(err).and_then(|(s,)| FeedRef::parse(&s).map_err(err)))
        .collect()
}

pub(super) async fn follower_shards(store: &ScyllaGraphStore, feed: &FeedRef) -> Result<Vec<u64>, StoreError> {
    let pager = store
        .session
        .execute_iter(store.st.shards_list.clone(), (feed.to_string(),))
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let rows: Vec<(i64,)> = pager
        .rows_stream::<(i64,)>()
        .map_err(err)?
        .try_collect()
        .await
        .map_err(err)?;
    Ok(rows.into_iter().map(|(s,)| u(s)).collect())
}

pub(super) async fn page_shard(
    store: &ScyllaGraphStore,
    feed: &FeedRef,
    shard: u64,
    after: UserId,
    limit: usize,
) -> Result<Vec<Follower>, StoreError> {
    store.page(&feed.to_string(), shard, after, limit).await
}

pub(super) async fn feed_counts(store: &ScyllaGraphStore, feeds: &[FeedRef]) -> Result<Vec<FeedCounts>, StoreError> {
    let mut out = Vec::with_capacity(feeds.len());
    for f in feeds {
        let (followers, celebrity) = store.feed_stats(&f.to_string()).await?.unwrap_or((0, false));
        out.push(FeedCounts { followers, celebrity });
    }
    Ok(out)
}

pub(super) async fn following_counts(store: &ScyllaGraphStore, users: &[UserId]) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::with_capacity(users.len());
    for &user in users {
        out.push(store.user_stats(user).await?.map(|s| s.0).unwrap_or(0));
    }
    Ok(out)
}

pub(super) async fn edge_states(
    store: &ScyllaGraphStore,
    edges: &[(UserId, FeedRef)],
) -> Result<Vec<EdgeState>, StoreError> {
    let mut out = Vec::with_capacity(edges.len());
    for (user, feed) in edges {
        out.push(store.state(*user, feed).await?);
    }
    Ok(out)
}

pub(super) async fn graph_versions(store: &ScyllaGraphStore, users: &[UserId]) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::with_capacity(users.len());
    for &user in users {
        out.push(store.user_stats(user).await?.map(|s| s.1).unwrap_or(0));
    }
    Ok(out)
}

pub(super) async fn edge_changes(
    store: &ScyllaGraphStore,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<EdgeLogEntry>, StoreError> {
    use prost::Message as _;
    let now_bucket = log_bucket(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| feed_core::edge_log::position_at(d.as_millis() as u64))
            .unwrap_or(0),
    ) + 1; // a writer whose clock runs ahead of this one's
    // Positions older than a week are gone from the consumer's view.
    let mut bucket = log_bucket(after_seq).max(now_bucket.saturating_sub(24 * 7));
    let mut out = Vec::new();
    while bucket <= now_bucket && out.len() < limit {
        let want = (limit - out.len()).min(i32::MAX as usize) as i32;
        let rows = store
            .exec(&store.st.log_page, (i(bucket), i(after_seq), want))
            .await?
            .into_rows_result()
            .map_err(err)?;
        for row in rows.rows::<(Vec<u8>,)>().map_err(err)? {
            let (bytes,) = row.map_err(err)?;
            out.push(EdgeLogEntry::decode(bytes.as_slice()).map_err(err)?);
        }
        bucket += 1;
    }
    Ok(out)
}
