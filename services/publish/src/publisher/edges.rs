//! Edge jobs from follow-graph's edge change log: tailing it, the window of
//! late changes, and the jobs each change becomes.

use feed_core::{ApiError, UserId};
use feed_proto::events::v1::edge_change::Cause;
use feed_proto::events::v1::{EdgeChange, EdgeJob, EdgeJobKind, Job, job};

use super::Publisher;

/// Deterministic id of an edge job: one per edge version.
pub fn edge_job_id(follower: UserId, feed: &str, version: u64) -> String {
    format!("edge/{follower}/{feed}/{version}")
}

fn edge_job_id_of(c: &EdgeChange) -> String {
    edge_job_id(c.follower_id, &c.feed, c.edge_version)
}

/// Edge log entries read per call.
const EDGE_PAGE: u32 = 1000;

impl Publisher {
    /// Turns new entries of follow-graph's edge change log into durable
    /// edge jobs (the cursor advances in the same write), then enqueues them:
    /// a backfill when the edge now exists, a purge when it does not.
    /// Returns the number of changes consumed.
    pub async fn ingest_edges(&self) -> Result<usize, ApiError> {
        let mut consumed = 0;
        loop {
            let cursor = self.store.edge_cursor().await?;
            let changes = self.graph.edge_changes(cursor, EDGE_PAGE).await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                return Ok(consumed);
            };
            let jobs = self.edge_jobs(&changes).await;
            self.store.record_edge_jobs(&jobs, last).await?;
            self.remember_ingested(&changes);
            self.enqueue_unheld(&jobs).await;
            consumed += changes.len();
            if changes.len() < EDGE_PAGE as usize {
                return Ok(consumed);
            }
        }
    }

    /// Re-reads the log's trailing window behind the cursor
    /// ([`feed_core::edge_log`]) and turns the changes committed there after
    /// the cursor passed them into jobs; what was already turned into a job
    /// is known by its deterministic job id. After a restart the window is
    /// taken once more (its jobs are idempotent). Returns the late changes.
    ///
    /// A change at position p is committed by p's time plus the window on
    /// its writer's clock ([`feed_core::edge_log::LATE_WINDOW_MS`] is well
    /// above a write timeout plus clock skew). Once this clock is past the
    /// cursor's time plus the window, one more pass sees every change at or
    /// below the cursor for good, and the window is not re-read until the
    /// cursor moves: after a burst of follows and then quiet, the burst's
    /// last minute would otherwise be read every pass, forever.
    pub async fn ingest_late_edges(&self) -> Result<usize, ApiError> {
        let cursor = self.store.edge_cursor().await?;
        if *self.settled_cursor.lock().unwrap_or_else(|p| p.into_inner()) == Some(cursor) {
            return Ok(0);
        }
        // Read before the pass: the pass then starts after every deadline.
        let past_deadlines = self.clock.now_ms()
            > (cursor / feed_core::edge_log::POSITIONS_PER_MS).saturating_add(feed_core::edge_log::LATE_WINDOW_MS);
        let mut after = feed_core::edge_log::window_start(cursor);
        let mut late = 0;
        loop {
            let changes = self.graph.edge_changes(after, EDGE_PAGE).await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                break;
            };
            let mut missed: Vec<EdgeChange> = {
                let seen = self.ingested.lock().unwrap_or_else(|p| p.into_inner());
                changes
                    .iter()
                    .filter(|c| c.seq <= cursor && !seen.contains_key(&edge_job_id_of(c)))
                    .cloned()
                    .collect()
            };
            // Another publish replica may have ingested them (the cursor
            // is shared, what each ingested is not): a job still recorded
            // as pending is already in hand, not late.
            if !missed.is_empty() {
                let ids: Vec<String> = missed.iter().map(edge_job_id_of).collect();
                let recorded = futures::future::try_join_all(ids.iter().map(|id| self.store.job(id))).await?;
                let mut recorded = recorded.into_iter();
                missed.retain(|_| recorded.next().flatten().is_none());
            }
            if !missed.is_empty() {
                tracing::warn!(
                    changes = missed.len(),
                    "edge changes committed behind the cursor; ingesting them"
                );
                let jobs = self.edge_jobs(&missed).await;
                // The cursor stays: it already passed these.
                self.store.put_jobs(&jobs).await?;
                self.remember_ingested(&missed);
                self.enqueue_unheld(&jobs).await;
                late += missed.len();
            }
            if changes.len() < EDGE_PAGE as usize || last >= cursor {
                break;
            }
            after = last;
        }
        let floor = feed_core::edge_log::window_start(cursor);
        self.ingested
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, seq| *seq >= floor);
        if past_deadlines {
            *self.settled_cursor.lock().unwrap_or_else(|p| p.into_inner()) = Some(cursor);
        }
        Ok(late)
    }

    fn remember_ingested(&self, changes: &[EdgeChange]) {
        let mut seen = self.ingested.lock().unwrap_or_else(|p| p.into_inner());
        for c in changes {
            seen.insert(edge_job_id_of(c), c.seq);
        }
    }

    /// Enqueues the jobs no stream holds yet: publish replicas tail one
    /// log from a shared cursor, so two of them can read the same changes
    /// before either moves it, and the one second to enqueue them would put
    /// every job in the stream twice. (Both checking before either enqueues
    /// still can; a job run twice changes nothing.) Unknown: all.
    async fn enqueue_unheld(&self, jobs: &[Job]) {
        let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
        match self.queue.held(&ids).await {
            Ok(held) => {
                let fresh: Vec<Job> = jobs
                    .iter()
                    .zip(held)
                    .filter(|(_, held)| !held)
                    .map(|(j, _)| j.clone())
                    .collect();
                self.enqueue(&fresh).await;
            }
            Err(_) => self.enqueue(jobs).await,
        }
    }

    /// One job per change, for the edge's new state: a job of an older
    /// version is skipped (Invariant 4), so a change without one (a mute
    /// after an unfollow) would strand its purge. A lifted block or mute
    /// brings back the author's items through every followed feed
    /// (Invariant 5), which covers the backfill of user:<author> itself.
    /// Each is charged to its follower's fanout budget (a loop of follow
    /// or mute toggles takes the bulk lane once past it).
    async fn edge_jobs(&self, changes: &[EdgeChange]) -> Vec<Job> {
        let now = self.now();
        let at = std::time::Instant::now();
        let mut jobs = Vec::with_capacity(changes.len());
        for c in changes {
            let relaxed = matches!(
                Cause::try_from(c.cause).unwrap_or(Cause::Unspecified),
                Cause::Unblock | Cause::Unmute
            );
            let kind = if relaxed {
                EdgeJobKind::Relax
            } else if c.following {
                EdgeJobKind::Backfill
            } else {
                EdgeJobKind::Purge
            };
            let mut job = [Job {
                job_id: edge_job_id_of(c),
                created_at_ms: now,
                failed_at_ms: 0,
                bulk: false,
                kind: Some(job::Kind::Edge(EdgeJob {
                    kind: kind as i32,
                    follower_id: c.follower_id,
                    feed: c.feed.clone(),
                    edge_version: c.edge_version,
                })),
            }];
            self.budget.route(c.follower_id, 1, &mut job, at).await;
            let [job] = job;
            jobs.push(job);
        }
        jobs
    }
}
