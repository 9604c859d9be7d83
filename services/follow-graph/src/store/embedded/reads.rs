//! Reads: relationships, follow checks, follower and following pages,
//! shards, counts, edge states and versions, and the edge change log.

use super::*;

pub(super) async fn relationships(
    store: &EmbeddedGraphStore,
    user: UserId,
    targets: &[UserId],
) -> Result<Vec<Relationship>, StoreError> {
    let me = FeedRef::user(user);
    targets
        .iter()
        .map(|&t| {
            Ok(Relationship {
                target: t,
                following: EmbeddedGraphStore::exists(&store.following, &user_feed_key(user, &FeedRef::user(t)))?,
                followed_by: EmbeddedGraphStore::exists(&store.following, &user_feed_key(t, &me))?,
                blocking: store.pairs().blocks.contains(&u64_pair(user, t)),
                blocked_by: store.pairs().blocks.contains(&u64_pair(t, user)),
                muting: store.is_muting(user, t)?,
                muted_by: store.is_muting(t, user)?,
            })
        })
        .collect()
}

pub(super) async fn blocks_and_mutes(
    store: &EmbeddedGraphStore,
    user: UserId,
    targets: &[UserId],
) -> Result<Vec<(bool, bool)>, StoreError> {
    let p = store.pairs();
    Ok(targets
        .iter()
        .map(|&t| {
            let blocked = p.blocks.contains(&u64_pair(user, t)) || p.blocks.contains(&u64_pair(t, user));
            (blocked, p.mutes.contains(&u64_pair(user, t)))
        })
        .collect())
}

pub(super) async fn is_following(
    store: &EmbeddedGraphStore,
    user: UserId,
    feeds: &[FeedRef],
) -> Result<Vec<bool>, StoreError> {
    feeds
        .iter()
        .map(|f| EmbeddedGraphStore::exists(&store.following, &user_feed_key(user, f)))
        .collect()
}

pub(super) async fn list_followers(
    store: &EmbeddedGraphStore,
    feed: &FeedRef,
    after: UserId,
    limit: usize,
) -> Result<Vec<Follower>, StoreError> {
    match after.checked_add(1) {
        Some(from) => store.scan_followers(feed, from, None, limit),
        None => Ok(vec![]),
    }
}

pub(super) async fn list_following(
    store: &EmbeddedGraphStore,
    user: UserId,
    after: Option<&FeedRef>,
    limit: usize,
) -> Result<Vec<FeedRef>, StoreError> {
    // Whole lists are kept: a first page that holds one is answered from memory.
    let ticket = match after {
        Some(_) => None,
        None => match store
            .lists
            .get(&user, |list| (list.len() <= limit).then(|| list.to_vec()))
        {
            Ok(Some(list)) => return Ok(list),
            Ok(None) => None,
            Err(ticket) => Some(ticket),
        },
    };
    let prefix = user.to_be_bytes();
    let start = match after {
        // Appending a zero byte makes the bound exclusive of `after` itself.
        Some(f) => {
            let mut k = user_feed_key(user, f);
            k.push(0);
            k
        }
        None => prefix.to_vec(),
    };
    let mut end = prefix.to_vec();
    end.push(0xFF);
    let mut out = Vec::with_capacity(limit.min(1024));
    for item in store.following.range(start..end) {
        if out.len() >= limit {
            break;
        }
        let key = item.key().map_err(be)?;
        let name = std::str::from_utf8(&key[8..]).map_err(|e| StoreError::Backend(e.to_string()))?;
        out.push(FeedRef::parse(name).map_err(|e| StoreError::Backend(e.to_string()))?);
    }
    if let Some(ticket) = ticket
        && out.len() < limit
    {
        store.lists.fill(ticket, user, out.clone().into());
    }
    Ok(out)
}

pub(super) async fn follower_shards(store: &EmbeddedGraphStore, feed: &FeedRef) -> Result<Vec<u64>, StoreError> {
    let prefix = feed_prefix(feed);
    let len = prefix.len();
    store
        .shards
        .prefix(prefix)
        .map(|item| item.key().map(|k| u64_at(&k, len)).map_err(be))
        .collect()
}

pub(super) async fn page_shard(
    store: &EmbeddedGraphStore,
    feed: &FeedRef,
    shard: u64,
    after: UserId,
    limit: usize,
) -> Result<Vec<Follower>, StoreError> {
    let lo = shard << SHARD_BITS;
    let hi = (shard + 1).checked_shl(SHARD_BITS).filter(|h| *h > lo);
    let from = after.saturating_add(1).max(lo);
    store.scan_followers(feed, from, hi, limit)
}

pub(super) async fn feed_counts(store: &EmbeddedGraphStore, feeds: &[FeedRef]) -> Result<Vec<FeedCounts>, StoreError> {
    feeds.iter().map(|f| store.feed_counts_one(f)).collect()
}

pub(super) async fn following_counts(store: &EmbeddedGraphStore, users: &[UserId]) -> Result<Vec<u64>, StoreError> {
    users.iter().map(|u| store.user_stats_one(*u).map(|s| s.0)).collect()
}

pub(super) async fn edge_states(
    store: &EmbeddedGraphStore,
    edges: &[(UserId, FeedRef)],
) -> Result<Vec<EdgeState>, StoreError> {
    edges.iter().map(|(u, f)| store.state(*u, f)).collect()
}

pub(super) async fn graph_versions(store: &EmbeddedGraphStore, users: &[UserId]) -> Result<Vec<u64>, StoreError> {
    users.iter().map(|u| store.user_stats_one(*u).map(|s| s.1)).collect()
}

pub(super) async fn edge_changes(
    store: &EmbeddedGraphStore,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<EdgeLogEntry>, StoreError> {
    let mut out = Vec::with_capacity(limit.min(1024));
    for item in store.edge_log.range(after_seq.saturating_add(1).to_be_bytes()..) {
        if out.len() >= limit {
            break;
        }
        let (_, v) = item.into_inner().map_err(be)?;
        out.push(EdgeLogEntry::decode(&*v).map_err(|e| StoreError::Backend(e.to_string()))?);
    }
    Ok(out)
}
