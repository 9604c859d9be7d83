//! Scheduled items: by id, by actor and by due time.

use super::*;

pub(super) async fn schedule(store: &EmbeddedActivityStore, item: &ScheduledActivity) -> Result<(), StorageError> {
    let actor = item.activity.as_ref().map(|a| a.actor).unwrap_or(0);
    let _w = store.lock();
    let mut batch = store.db.batch();
    batch.insert(&store.scheduled, item.schedule_id.as_bytes(), item.encode_to_vec());
    let mut tk = (item.publish_at_ms as u64).to_be_bytes().to_vec();
    tk.extend_from_slice(item.schedule_id.as_bytes());
    batch.insert(&store.scheduled_by_time, tk, []);
    let mut ak = actor.to_be_bytes().to_vec();
    ak.extend_from_slice(item.schedule_id.as_bytes());
    batch.insert(&store.scheduled_by_actor, ak, []);
    store.commit(batch, true)
}

pub(super) async fn list_scheduled(
    store: &EmbeddedActivityStore,
    actor: UserId,
    after: &str,
    limit: usize,
) -> Result<Vec<ScheduledActivity>, StorageError> {
    let prefix = actor.to_be_bytes();
    let mut start = prefix.to_vec();
    start.extend_from_slice(after.as_bytes());
    if !after.is_empty() {
        start.push(0);
    }
    let mut end = prefix.to_vec();
    end.push(0xFF);
    let keys = store.scheduled_by_actor.range(start..end).map(|i| i.key().map_err(be));
    through_index(store, keys, limit)
}

pub(super) async fn remove_scheduled(
    store: &EmbeddedActivityStore,
    actor: UserId,
    schedule_id: &str,
) -> Result<bool, StorageError> {
    let _w = store.lock();
    let Some(v) = store.scheduled.get(schedule_id.as_bytes()).map_err(be)? else {
        return Ok(false);
    };
    let item = ScheduledActivity::decode(&*v).map_err(be)?;
    let owner = item.activity.as_ref().map(|a| a.actor).unwrap_or(0);
    if owner != actor {
        return Ok(false);
    }
    let mut batch = store.db.batch();
    batch.remove(&store.scheduled, schedule_id.as_bytes());
    let mut tk = (item.publish_at_ms as u64).to_be_bytes().to_vec();
    tk.extend_from_slice(schedule_id.as_bytes());
    batch.remove(&store.scheduled_by_time, tk);
    let mut ak = actor.to_be_bytes().to_vec();
    ak.extend_from_slice(schedule_id.as_bytes());
    batch.remove(&store.scheduled_by_actor, ak);
    store.commit(batch, true)?;
    Ok(true)
}

pub(super) async fn due_scheduled(
    store: &EmbeddedActivityStore,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<ScheduledActivity>, StorageError> {
    let end = ((now_ms.max(0) as u64) + 1).to_be_bytes();
    let keys = store
        .scheduled_by_time
        .range(..end.to_vec())
        .map(|i| i.key().map_err(be));
    through_index(store, keys, limit)
}

/// The scheduled items an index points at, in index order, at most `limit`:
/// both indexes (by actor, by due time) end their keys with the item's key
/// after an 8-byte prefix.
fn through_index<K: AsRef<[u8]>>(
    store: &EmbeddedActivityStore,
    keys: impl Iterator<Item = Result<K, StorageError>>,
    limit: usize,
) -> Result<Vec<ScheduledActivity>, StorageError> {
    let mut out = Vec::new();
    for k in keys {
        if out.len() >= limit {
            break;
        }
        if let Some(v) = store.scheduled.get(&k?.as_ref()[8..]).map_err(be)? {
            out.push(ScheduledActivity::decode(&*v).map_err(be)?);
        }
    }
    Ok(out)
}
