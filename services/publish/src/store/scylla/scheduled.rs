//! Scheduled items: by id, by actor and by due hour.

use super::*;

pub(super) async fn schedule(store: &ScyllaActivityStore, item: &ScheduledActivity) -> Result<(), StorageError> {
    let actor = item.activity.as_ref().map(|a| a.actor).unwrap_or(0);
    let mut batch = Batch::new(BatchType::Logged);
    batch.set_consistency(Consistency::LocalQuorum);
    batch.append_statement(store.st.sched_put.clone());
    batch.append_statement(store.st.sched_actor_put.clone());
    batch.append_statement(store.st.sched_due_put.clone());
    let id = item.schedule_id.clone();
    let values: Vec<Vec<CqlValue>> = vec![
        vec![
            text(id.clone()),
            big(actor),
            CqlValue::BigInt(item.publish_at_ms),
            blob(item.encode_to_vec()),
        ],
        vec![big(actor), text(id.clone())],
        vec![
            CqlValue::BigInt(item.publish_at_ms / HOUR_MS),
            CqlValue::BigInt(item.publish_at_ms),
            text(id),
        ],
    ];
    store.session.batch(&batch, values).await.map_err(unavailable)?;
    Ok(())
}

pub(super) async fn list_scheduled(
    store: &ScyllaActivityStore,
    actor: UserId,
    after: &str,
    limit: usize,
) -> Result<Vec<ScheduledActivity>, StorageError> {
    let ids = store
        .rows::<(String,)>(
            &store.st.sched_actor_page,
            (i(actor), after, limit.min(i32::MAX as usize) as i32),
        )
        .await?;
    let mut out = Vec::new();
    for (id,) in ids {
        if let Some((_, _, body)) = store
            .rows::<(i64, i64, Vec<u8>)>(&store.st.sched_get, (id.as_str(),))
            .await?
            .pop()
        {
            out.push(ScheduledActivity::decode(body.as_slice()).map_err(err)?);
        }
    }
    Ok(out)
}

pub(super) async fn remove_scheduled(
    store: &ScyllaActivityStore,
    actor: UserId,
    schedule_id: &str,
) -> Result<bool, StorageError> {
    let Some((owner, at, _)) = store
        .rows::<(i64, i64, Vec<u8>)>(&store.st.sched_get, (schedule_id,))
        .await?
        .pop()
    else {
        return Ok(false);
    };
    if owner as u64 != actor {
        return Ok(false);
    }
    let mut batch = Batch::new(BatchType::Logged);
    batch.set_consistency(Consistency::LocalQuorum);
    batch.append_statement(store.st.sched_delete.clone());
    batch.append_statement(store.st.sched_actor_delete.clone());
    batch.append_statement(store.st.sched_due_delete.clone());
    let values: Vec<Vec<CqlValue>> = vec![
        vec![text(schedule_id)],
        vec![big(actor), text(schedule_id)],
        vec![CqlValue::BigInt(at / HOUR_MS), CqlValue::BigInt(at), text(schedule_id)],
    ];
    store.session.batch(&batch, values).await.map_err(unavailable)?;
    Ok(true)
}

pub(super) async fn due_scheduled(
    store: &ScyllaActivityStore,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<ScheduledActivity>, StorageError> {
    let now_hour = now_ms / HOUR_MS;
    let mut out = Vec::new();
    for hour in (now_hour - DUE_LOOKBACK_HOURS)..=now_hour {
        let want = (limit - out.len()).min(i32::MAX as usize) as i32;
        for (id,) in store
            .rows::<(String,)>(&store.st.sched_due_page, (hour, now_ms, want))
            .await?
        {
            if let Some((_, _, body)) = store
                .rows::<(i64, i64, Vec<u8>)>(&store.st.sched_get, (id.as_str(),))
                .await?
                .pop()
            {
                out.push(ScheduledActivity::decode(body.as_slice()).map_err(err)?);
            }
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}
