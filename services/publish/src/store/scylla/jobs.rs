//! Job records: pending, completed, failed, dead-lettered, revived, and the
//! pending-work index reads consult.

use super::*;

pub(super) async fn put_jobs(store: &ScyllaActivityStore, jobs: &[Job]) -> Result<(), StorageError> {
    store.job_batch(jobs, vec![], None).await
}

pub(super) async fn job(store: &ScyllaActivityStore, job_id: &str) -> Result<Option<JobState>, StorageError> {
    // A row without a body is what an update left of a job deleted under
    // it (see `fail_job`): the job is gone.
    match store
        .rows::<(Option<i32>, Option<i64>, Option<Vec<u8>>)>(&store.st.job_get, (job_id,))
        .await?
        .into_iter()
        .next()
    {
        Some((attempts, updated_ms, Some(body))) => Ok(Some(JobState {
            attempts: attempts.unwrap_or(0) as u32,
            updated_ms: updated_ms.unwrap_or(0),
            job: Job::decode(body.as_slice()).map_err(err)?,
        })),
        _ => Ok(None),
    }
}

/// Every job row as (attempts, updated ms, created ms, job). Rows missing a
/// column are remnants of an update that landed after the job was deleted
/// (written before `fail_job` was conditional): they are deleted, not read,
/// since one such row made every sweep and every lag query fail.
async fn all_jobs(store: &ScyllaActivityStore) -> Result<Vec<(i32, i64, i64, Job)>, StorageError> {
    type JobRow = (Option<String>, Option<i32>, Option<i64>, Option<i64>, Option<Vec<u8>>);
    let rows = store.scan::<JobRow>(&store.st.jobs_all).await?;
    let mut out = Vec::with_capacity(rows.len());
    for (job_id, attempts, updated_ms, created_ms, body) in rows {
        match (attempts, updated_ms, created_ms, body) {
            (Some(a), Some(u), Some(c), Some(body)) => out.push((a, u, c, Job::decode(body.as_slice()).map_err(err)?)),
            _ => {
                if let Some(id) = job_id {
                    tracing::warn!(job_id = %id, "deleting a partial job row");
                    store.exec(&store.st.job_delete, (id.as_str(),)).await?;
                }
            }
        }
    }
    Ok(out)
}

pub(super) async fn complete_job(
    store: &ScyllaActivityStore,
    job_id: &str,
    spawned: &[Job],
    now_ms: i64,
) -> Result<(), StorageError> {
    let mut done = vec![(&store.st.job_delete, vec![text(job_id)])];
    // Its pending-work row goes with it, in the same batch: reads merge
    // outboxes for as long as that row says the work is unfinished.
    let state = store.job(job_id).await?;
    if let Some((_, delete, _, row)) = state.as_ref().and_then(|s| store.pending_index(&s.job)) {
        done.push((delete, row));
    }
    if let Some(s) = &state {
        done.push((&store.st.due_delete, due_row(s.updated_ms, job_id)));
    }
    store.job_batch(spawned, done, Some(now_ms)).await
}

/// The `pub_stalled_fanout` key of a fanout job.
fn stalled_row(job: &Job) -> Option<Vec<CqlValue>> {
    match &job.kind {
        Some(job::Kind::Fanout(f)) => Some(vec![text(f.feed.clone()), big(f.activity_id), text(job.job_id.clone())]),
        _ => None,
    }
}

fn due_row(updated_ms: i64, job_id: &str) -> Vec<CqlValue> {
    vec![CqlValue::BigInt(sweep_bucket(updated_ms)), text(job_id)]
}

pub(super) async fn fail_job(
    store: &ScyllaActivityStore,
    job_id: &str,
    error: &str,
    max_attempts: u32,
    now_ms: i64,
) -> Result<bool, StorageError> {
    let Some(mut state) = store.job(job_id).await? else {
        return Ok(false);
    };
    state.attempts += 1;
    state.job.failed_at_ms = now_ms;
    if state.attempts < max_attempts {
        // IF EXISTS: a job completed since it was read above must stay
        // gone; a plain update would write back a row of two columns.
        store
            .exec(
                &store.st.job_fail,
                (state.attempts as i32, now_ms, state.job.encode_to_vec(), job_id),
            )
            .await?;
        // After the update: a row for a job completed meanwhile is dropped
        // by the sweep that meets it.
        store.exec(&store.st.due_put, (sweep_bucket(now_ms), job_id)).await?;
        return Ok(false);
    }
    let mut batch = Batch::new(BatchType::Logged);
    batch.set_consistency(Consistency::LocalQuorum);
    batch.append_statement(store.st.dead_put.clone());
    batch.append_statement(store.st.job_delete.clone());
    batch.append_statement(store.st.due_delete.clone());
    let mut values: Vec<Vec<CqlValue>> = vec![
        vec![
            text(job_id),
            CqlValue::Int(state.attempts as i32),
            CqlValue::BigInt(now_ms),
            text(error),
            blob(state.job.encode_to_vec()),
        ],
        vec![text(job_id)],
        due_row(state.updated_ms, job_id),
    ];
    // A dead fanout stops pinning every reader's watermark: only the
    // followers of its feed merge that feed from its id.
    // (A dead backfill keeps its row: it costs one feed on one user's reads.)
    if let Some(row) = stalled_row(&state.job)
        && let Some((_, delete, _, key)) = store.pending_index(&state.job)
    {
        batch.append_statement(delete.clone());
        values.push(key);
        batch.append_statement(store.st.sf_put.clone());
        values.push(row);
    }
    store.session.batch(&batch, values).await.map_err(unavailable)?;
    Ok(true)
}

/// Reads `pub_jobs_due` from the floor up to the minute of `stale_before_ms`
/// (never past `now_ms`'s): a job whose record is older is claimed (its
/// time compare-and-set from the one read: one replica of several hands
/// it out, and a job completed meanwhile stays gone) and handed out; rows of
/// finished jobs, and rows a later write superseded, are deleted. The floor
/// then moves up to the lowest minute that still holds a row.
///
/// Safe while writers' clocks are within `stale_before`'s distance from
/// now (the stale period, a minute by default) of the sweeper's: a job is
/// written into the minute of its writer's clock, and the floor never
/// passes the stale minute.
pub(super) async fn stale_jobs(
    store: &ScyllaActivityStore,
    stale_before_ms: i64,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<Job>, StorageError> {
    let upto = sweep_bucket(stale_before_ms.min(now_ms));
    // One sweep at a time per process: two would hand the same jobs out.
    let mut floor_guard = store.sweep_floor.lock().await;
    let floor = match *floor_guard {
        Some(f) => f,
        None => sweep_floor(store, upto).await?,
    };
    let mut out = Vec::new();
    let mut lowest_held: Option<i64> = None;
    let mut bucket = floor;
    while bucket <= upto {
        let ids = store.rows::<(String,)>(&store.st.due_bucket, (bucket,)).await?;
        for (job_id,) in ids {
            if out.len() >= limit {
                lowest_held.get_or_insert(bucket);
                break;
            }
            let state = store.job(&job_id).await?;
            match state {
                // Finished, or rewritten since (its newer row stands for it).
                None => {}
                Some(s) if sweep_bucket(s.updated_ms) != bucket => {}
                Some(s) if s.updated_ms >= stale_before_ms => {
                    lowest_held.get_or_insert(bucket);
                    continue;
                }
                Some(s) => {
                    if touch(store, &job_id, now_ms, s.updated_ms).await? {
                        out.push(s.job);
                    }
                    if sweep_bucket(now_ms) == bucket {
                        lowest_held.get_or_insert(bucket);
                        continue;
                    }
                }
            }
            store.exec(&store.st.due_delete, (bucket, job_id.as_str())).await?;
        }
        if out.len() >= limit {
            break;
        }
        bucket += 1;
    }
    let next = lowest_held.unwrap_or(upto).min(upto).max(floor);
    if next != floor {
        store.exec(&store.st.meta_put, ("sweep_floor", next)).await?;
    }
    *floor_guard = Some(next);
    Ok(out)
}

/// Claims a stale job for this sweep: rewrites its time only if it still
/// has the one read (a compare-and-set, so of two replicas sweeping at
/// once only one hands the job out, and a job finished or rewritten
/// meanwhile is left alone), and files it under the new minute.
async fn touch(store: &ScyllaActivityStore, job_id: &str, now_ms: i64, read_ms: i64) -> Result<bool, StorageError> {
    let rows = store
        .exec(&store.st.job_touch, (now_ms, job_id, read_ms))
        .await?
        .into_rows_result()
        .map_err(err)?;
    let applied = rows
        .maybe_first_row::<Row>()
        .map_err(err)?
        .and_then(|r| r.columns.into_iter().next().flatten());
    if !matches!(applied, Some(CqlValue::Boolean(true))) {
        return Ok(false);
    }
    store.exec(&store.st.due_put, (sweep_bucket(now_ms), job_id)).await?;
    Ok(true)
}

/// The stored floor; on a keyspace that has none yet (new, or written
/// before `pub_jobs_due` existed), every pending job is filed under its
/// minute once and the floor starts at the oldest.
async fn sweep_floor(store: &ScyllaActivityStore, upto: i64) -> Result<i64, StorageError> {
    if let Some((f,)) = store.rows::<(i64,)>(&store.st.meta_get, ("sweep_floor",)).await?.pop() {
        return Ok(f);
    }
    let mut floor = upto;
    for (_, updated_ms, _, job) in all_jobs(store).await? {
        store
            .exec(&store.st.due_put, (sweep_bucket(updated_ms), job.job_id.as_str()))
            .await?;
        floor = floor.min(sweep_bucket(updated_ms));
    }
    store.exec(&store.st.meta_put, ("sweep_floor", floor)).await?;
    Ok(floor)
}

pub(super) async fn dead_jobs(
    store: &ScyllaActivityStore,
    after: &str,
    limit: usize,
) -> Result<Vec<DeadJob>, StorageError> {
    // Token order, not name order: the page token is the last job id seen.
    let rows = if after.is_empty() {
        store
            .scan::<(i32, i64, String, Vec<u8>)>(&store.st.dead_all)
            .await?
            .into_iter()
            .take(limit)
            .collect()
    } else {
        store
            .rows::<(i32, i64, String, Vec<u8>)>(&store.st.dead_page, (after, limit.min(i32::MAX as usize) as i32))
            .await?
    };
    rows.into_iter().map(ScyllaActivityStore::dead).collect()
}

pub(super) async fn revive_jobs(
    store: &ScyllaActivityStore,
    ids: &[String],
    now_ms: i64,
) -> Result<Vec<Job>, StorageError> {
    let dead: Vec<DeadJob> = if ids.is_empty() {
        store
            .scan::<(i32, i64, String, Vec<u8>)>(&store.st.dead_all)
            .await?
            .into_iter()
            .map(ScyllaActivityStore::dead)
            .collect::<Result<_, _>>()?
    } else {
        let mut v = Vec::new();
        for id in ids {
            if let Some(row) = store
                .rows::<(i32, i64, String, Vec<u8>)>(&store.st.dead_get, (id.as_str(),))
                .await?
                .pop()
            {
                v.push(ScyllaActivityStore::dead(row)?);
            }
        }
        v
    };
    for d in &dead {
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_consistency(Consistency::LocalQuorum);
        batch.append_statement(store.st.job_put.clone());
        batch.append_statement(store.st.due_put.clone());
        batch.append_statement(store.st.dead_delete.clone());
        let mut values: Vec<Vec<CqlValue>> = vec![
            ScyllaActivityStore::job_row(&d.job, 0, now_ms),
            due_row(now_ms, &d.job.job_id),
            vec![text(d.job.job_id.clone())],
        ];
        if let Some((put, _, row, _)) = store.pending_index(&d.job) {
            batch.append_statement(put.clone());
            values.push(row);
        }
        if let Some(row) = stalled_row(&d.job) {
            batch.append_statement(store.st.sf_delete.clone());
            values.push(row);
        }
        store.session.batch(&batch, values).await.map_err(unavailable)?;
    }
    Ok(dead.into_iter().map(|d| d.job).collect())
}

pub(super) async fn job_stats(store: &ScyllaActivityStore) -> Result<JobStats, StorageError> {
    let pending = all_jobs(store).await?;
    let dead = store.scan::<(i32, i64, String, Vec<u8>)>(&store.st.dead_all).await?;
    Ok(JobStats {
        pending: pending.len() as u64,
        oldest_created_ms: pending.iter().map(|r| r.2).min().unwrap_or(0),
        dead: dead.len() as u64,
    })
}

pub(super) async fn pending_work(store: &ScyllaActivityStore, user: UserId) -> Result<PendingWork, StorageError> {
    let fanout_from = store
        .rows::<(i64,)>(&store.st.pf_first, ())
        .await?
        .first()
        .map(|(id,)| *id as u64);
    let mut backfill_feeds = Vec::new();
    for (feed,) in store.rows::<(String,)>(&store.st.pb_list, (i(user),)).await? {
        if let Ok(f) = FeedRef::parse(&feed)
            && !backfill_feeds.contains(&f)
        {
            backfill_feeds.push(f);
        }
    }
    // Clustered by feed, then activity id: each feed's first row is its lowest.
    let mut stalled: Vec<(FeedRef, u64)> = Vec::new();
    for (feed, activity) in store.rows::<(String, i64)>(&store.st.sf_all, ()).await? {
        if let Ok(f) = FeedRef::parse(&feed)
            && stalled.last().is_none_or(|(last, _)| *last != f)
        {
            stalled.push((f, activity as u64));
        }
    }
    Ok(PendingWork {
        fanout_from,
        backfill_feeds,
        stalled,
    })
}
