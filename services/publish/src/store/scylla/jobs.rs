//! Job records: pending, completed, failed, dead-lettered, revived, and the
//! pending-work index reads consult.

use super::*;

pub(super) async fn put_jobs(store: &ScyllaActivityStore, jobs: &[Job]) -> Result<(), StorageError> {
    store.job_batch(jobs, vec![]).await
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
) -> Result<(), StorageError> {
    let mut done = vec![(&store.st.job_delete, vec![text(job_id)])];
    // Its pending-work row goes with it, in the same batch: reads merge
    // outboxes for as long as that row says the work is unfinished.
    let state = store.job(job_id).await?;
    if let Some((_, delete, _, row)) = state.as_ref().and_then(|s| store.pending_index(&s.job)) {
        done.push((delete, row));
    }
    store.job_batch(spawned, done).await
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
    if state.attempts < max_attempts {
        // IF EXISTS: a job completed since it was read above must stay
        // gone; a plain update would write back a row of two columns.
        store
            .exec(&store.st.job_fail, (state.attempts as i32, now_ms, job_id))
            .await?;
        return Ok(false);
    }
    let mut batch = Batch::new(BatchType::Logged);
    batch.set_consistency(Consistency::LocalQuorum);
    batch.append_statement(store.st.dead_put.clone());
    batch.append_statement(store.st.job_delete.clone());
    let values: Vec<Vec<CqlValue>> = vec![
        vec![
            text(job_id),
            CqlValue::Int(state.attempts as i32),
            CqlValue::BigInt(now_ms),
            text(error),
            blob(state.job.encode_to_vec()),
        ],
        vec![text(job_id)],
    ];
    store.session.batch(&batch, values).await.map_err(unavailable)?;
    Ok(true)
}

pub(super) async fn stale_jobs(
    store: &ScyllaActivityStore,
    stale_before_ms: i64,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<Job>, StorageError> {
    let rows = all_jobs(store).await?;
    let mut out = Vec::new();
    for (_, _, _, job) in rows.into_iter().filter(|r| r.1 < stale_before_ms).take(limit) {
        // IF EXISTS: a job completed meanwhile must not come back.
        let rows = store
            .exec(&store.st.job_touch, (now_ms, job.job_id.as_str()))
            .await?
            .into_rows_result()
            .map_err(err)?;
        let applied = rows
            .maybe_first_row::<Row>()
            .map_err(err)?
            .and_then(|r| r.columns.into_iter().next().flatten());
        if matches!(applied, Some(CqlValue::Boolean(true))) {
            out.push(job);
        }
    }
    Ok(out)
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
        batch.append_statement(store.st.dead_delete.clone());
        let values: Vec<Vec<CqlValue>> = vec![
            ScyllaActivityStore::job_row(&d.job, 0, now_ms),
            vec![text(d.job.job_id.clone())],
        ];
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
    Ok(PendingWork {
        fanout_from,
        backfill_feeds,
    })
}
