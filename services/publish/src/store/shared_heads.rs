//! Celebrity heads shared by every replica (DESIGN Invariant 2): the newest
//! pull-mode ids of each feed in Redis, in front of a store that replicas
//! share (ScyllaDB). A home read asks every followed feed for its pull-mode
//! items; read through, that is a query per followed feed per read. The
//! embedded store keeps exact heads in process and needs none of this.
//!
//! One Redis string per feed, `pulled-head:{<feed>}` = state (1 byte) ‖
//! floor (8) ‖ ids (8 each, newest first), so eviction and expiry take a
//! head whole:
//! - `C` (complete): every pull-mode id of the feed at or above the floor is
//!   in the list; floor 0 with no ids says the feed has none (most feeds).
//! - `P` (provisional): a reader is filling it; the 8 bytes are its token.
//!
//! Exactness: a publish adds its pull-mode ids to existing heads before the
//! store commit (a commit that then fails leaves an id without an activity
//! row, which no read shows: Invariant 6) and again after it (a reader may
//! have begun filling in between). A reader that misses writes its marker
//! first, reads the store, then completes the head only if its marker (or a
//! complete head) is still there, taking the union: an id published
//! meanwhile is in the store read or was added to the marker. Publish does
//! not fail on Redis (it stays available without it, like the job queue):
//! an add lost to an outage leaves a head short until it is read from the
//! store again, at most `TTL_MS` later; adds keep the TTL.

use std::sync::Arc;

use async_trait::async_trait;
use feed_core::{FeedRef, UserId};
use feed_proto::common::v1::{Activity, DeliveryMode};
use feed_proto::events::v1::Job;
use feed_proto::publish::v1::ScheduledActivity;

use super::{
    ActivityStore, DeadJob, ForeignClaim, ForeignRecord, JobState, JobStats, OutboxEntry, PendingWork, StorageError,
};

/// Inserts ARGV[1] into the head at KEYS[1] if there is one. ARGV: id, keep.
const ADD: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local state, floor, ids = string.sub(v, 1, 1), string.sub(v, 2, 9), string.sub(v, 10)
local id = ARGV[1]
if state == 'C' and lt(id, floor) then return 0 end
local n = #ids / 8
local at = n + 1
for i = 1, n do
  local cur = string.sub(ids, i * 8 - 7, i * 8)
  if cur == id then return 0 end
  if lt(cur, id) then at = i break end
end
ids = string.sub(ids, 1, at * 8 - 8) .. id .. string.sub(ids, at * 8 - 7)
local keep = tonumber(ARGV[2])
if #ids / 8 > keep then
  ids = string.sub(ids, 1, keep * 8)
  if state == 'C' then floor = string.sub(ids, keep * 8 - 7, keep * 8) end
end
redis.call('SET', KEYS[1], state .. floor .. ids, 'KEEPTTL')
return 1
";

/// Completes the head at KEYS[1] from a store read. ARGV: token, floor,
/// keep, ttl_ms, ids (packed, newest first, all >= floor). Only over this
/// reader's own marker or a complete head (union, lower floor).
const FILL: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local state, cur, have = string.sub(v, 1, 1), string.sub(v, 2, 9), string.sub(v, 10)
if state == 'P' and cur ~= ARGV[1] then return 0 end
local floor = ARGV[2]
if state == 'C' and lt(cur, floor) then floor = cur end
local a, b = ARGV[5], have
local ids, i, j = {}, 1, 1
while i <= #a or j <= #b do
  local x = i <= #a and string.sub(a, i, i + 7) or nil
  local y = j <= #b and string.sub(b, j, j + 7) or nil
  local take
  if x and y and x == y then take = x i = i + 8 j = j + 8
  elseif x and (not y or lt(y, x)) then take = x i = i + 8
  else take = y j = j + 8 end
  if not lt(take, floor) then ids[#ids + 1] = take end
end
local keep = tonumber(ARGV[3])
if #ids > keep then
  for k = #ids, keep + 1, -1 do ids[k] = nil end
  floor = ids[keep]
end
redis.call('SET', KEYS[1], 'C' .. floor .. table.concat(ids), 'PX', ARGV[4])
return 1
";

/// Ids a head keeps: a page of 20 reads 25 per round.
const KEEP: usize = 256;
/// A head is read from the store again this often, however it is used: one
/// store read per celebrity per minute, and the bound on a head left short
/// by an add lost to a Redis outage.
const TTL_MS: u64 = 60 * 1000;

fn key(feed: &FeedRef) -> String {
    format!("pulled-head:{{{feed}}}")
}

fn redis_err(e: redis::RedisError) -> StorageError {
    StorageError::Backend(format!("pulled heads: {e}"))
}

/// What a head says about the ids below `before`: all of them (up to
/// `limit`), or nothing trustworthy.
fn answer(value: &[u8], before: Option<u64>, limit: usize) -> Option<Vec<u64>> {
    let (state, rest) = value.split_first()?;
    if *state != b'C' || rest.len() < 8 || rest.len() % 8 != 0 {
        return None;
    }
    let floor = u64::from_be_bytes(rest[..8].try_into().ok()?);
    let ids: Vec<u64> = rest[8..]
        .chunks_exact(8)
        .filter_map(|c| c.try_into().ok().map(u64::from_be_bytes))
        .filter(|id| before.is_none_or(|b| *id < b))
        .take(limit)
        .collect();
    // Short of `limit`, the answer is whole only if nothing lies below the floor.
    (ids.len() == limit || floor == 0).then_some(ids)
}

/// A store whose pull-mode heads are served from Redis.
pub struct SharedHeads<S> {
    inner: S,
    conn: feed_redis::Redis,
    /// Redis Cluster: one GET per feed instead of one MGET.
    cluster: bool,
    add: redis::Script,
    fill: redis::Script,
}

impl<S: ActivityStore> SharedHeads<S> {
    /// `inner`'s pull-mode heads kept in the Redis at `url`.
    pub async fn connect(inner: S, url: &str, cluster: bool) -> Result<Self, StorageError> {
        // The heads only spare the store work: give up on Redis quickly and
        // let the store answer, rather than hold a timeline read.
        let timeouts = feed_redis::Timeouts {
            connect: std::time::Duration::from_millis(250),
            response: std::time::Duration::from_millis(150),
        };
        let conn = feed_redis::Redis::connect_with(url, timeouts)
            .await
            .map_err(redis_err)?;
        let lt = feed_inbox::redis_store::LUA_ID_LT;
        Ok(Self {
            inner,
            conn,
            cluster,
            add: redis::Script::new(&format!("{lt}{ADD}")),
            fill: redis::Script::new(&format!("{lt}{FILL}")),
        })
    }

    async fn heads(&self, feeds: &[FeedRef]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let mut conn = self.conn.clone();
        if feeds.is_empty() {
            return Ok(vec![]);
        }
        if self.cluster {
            let mut pipe = redis::pipe();
            for f in feeds {
                pipe.cmd("GET").arg(key(f));
            }
            return pipe.query_async(&mut conn).await.map_err(redis_err);
        }
        let mut cmd = redis::cmd("MGET");
        for f in feeds {
            cmd.arg(key(f));
        }
        cmd.query_async(&mut conn).await.map_err(redis_err)
    }

    /// Adds the pull-mode entries to the heads that exist (see the module docs).
    async fn add_pulled(&self, outbox: &[OutboxEntry]) {
        let mut conn = self.conn.clone();
        for e in outbox.iter().filter(|e| e.mode == DeliveryMode::Pull) {
            let added: Result<i64, _> = self
                .add
                .key(key(&e.feed))
                .arg(&e.id.to_be_bytes()[..])
                .arg(KEEP)
                .invoke_async(&mut conn)
                .await;
            if let Err(e) = added {
                metrics::counter!("feed_pulled_head_add_failures_total").increment(1);
                tracing::warn!(error = %e, "pulled head not updated; it is re-read within a minute");
            }
        }
    }

    /// Fills a missing head from the store: marker first, then the read, then the union.
    async fn fill(&self, feed: &FeedRef) -> Result<(), StorageError> {
        let token = uuid::Uuid::new_v4().as_u128() as u64;
        let mut marker = vec![b'P'];
        marker.extend_from_slice(&token.to_be_bytes());
        let mut conn = self.conn.clone();
        let created: Option<String> = redis::cmd("SET")
            .arg(key(feed))
            .arg(marker)
            .arg("NX")
            .arg("PX")
            .arg(TTL_MS)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        if created.is_none() {
            return Ok(());
        }
        let mut ids = self.inner.pulled(feed, None, KEEP + 1).await?;
        let floor = if ids.len() > KEEP {
            ids.truncate(KEEP);
            ids[KEEP - 1]
        } else {
            0
        };
        let packed: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
        let _: i64 = self
            .fill
            .key(key(feed))
            .arg(&token.to_be_bytes()[..])
            .arg(&floor.to_be_bytes()[..])
            .arg(KEEP)
            .arg(TTL_MS)
            .arg(packed)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(())
    }
}

#[async_trait]
impl<S: ActivityStore> ActivityStore for SharedHeads<S> {
    async fn claim_foreign(
        &self,
        actor: UserId,
        foreign_id: &str,
        id: u64,
        fingerprint: u64,
    ) -> Result<ForeignClaim, StorageError> {
        self.inner.claim_foreign(actor, foreign_id, id, fingerprint).await
    }

    async fn commit_publish(
        &self,
        activity: &Activity,
        outbox: &[OutboxEntry],
        jobs: &[Job],
    ) -> Result<(), StorageError> {
        self.add_pulled(outbox).await;
        self.inner.commit_publish(activity, outbox, jobs).await?;
        self.add_pulled(outbox).await;
        Ok(())
    }

    async fn get(&self, ids: &[u64]) -> Result<Vec<Option<Arc<Activity>>>, StorageError> {
        self.inner.get(ids).await
    }

    async fn find_foreign(&self, actor: UserId, foreign_id: &str) -> Result<Option<ForeignRecord>, StorageError> {
        self.inner.find_foreign(actor, foreign_id).await
    }

    async fn replace(&self, activity: &Activity, jobs: &[Job]) -> Result<(), StorageError> {
        self.inner.replace(activity, jobs).await
    }

    async fn outbox(
        &self,
        feed: &FeedRef,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StorageError> {
        self.inner.outbox(feed, before, limit).await
    }

    async fn outbox_mode(&self, feed: &FeedRef, id: u64) -> Result<Option<DeliveryMode>, StorageError> {
        self.inner.outbox_mode(feed, id).await
    }

    async fn pulled(&self, feed: &FeedRef, before: Option<u64>, limit: usize) -> Result<Vec<u64>, StorageError> {
        super::pulled_via_many(self, feed, before, limit).await
    }

    async fn pulled_many(
        &self,
        feeds: &[FeedRef],
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(usize, Vec<u64>)>, StorageError> {
        // The heads only spare the store work: without Redis the store answers.
        let heads = match self.heads(feeds).await {
            Ok(heads) => heads,
            Err(e) => {
                tracing::warn!(error = %e, "pulled heads unreadable; reading the store");
                return self.inner.pulled_many(feeds, before, limit).await;
            }
        };
        let mut out = Vec::new();
        // Feeds the heads cannot answer: by index, and those with no head to fill.
        let mut deferred = Vec::new();
        let mut missing = Vec::new();
        for (i, head) in heads.iter().enumerate() {
            match head.as_deref().and_then(|v| answer(v, before, limit)) {
                Some(ids) if ids.is_empty() => {}
                Some(ids) => out.push((i, ids)),
                None => {
                    deferred.push(i);
                    if head.is_none() {
                        missing.push(&feeds[i]);
                    }
                }
            }
        }
        // After a flush a reader misses every followed feed: fill at once, not in turn.
        for (feed, filled) in missing
            .iter()
            .zip(futures::future::join_all(missing.iter().map(|f| self.fill(f))).await)
        {
            if let Err(e) = filled {
                tracing::warn!(error = %e, %feed, "pulled head not filled");
            }
        }
        if !deferred.is_empty() {
            let asked: Vec<FeedRef> = deferred.iter().map(|i| feeds[*i].clone()).collect();
            for (j, ids) in self.inner.pulled_many(&asked, before, limit).await? {
                out.push((deferred[j], ids));
            }
            out.sort_unstable_by_key(|(i, _)| *i);
        }
        Ok(out)
    }

    async fn put_jobs(&self, jobs: &[Job]) -> Result<(), StorageError> {
        self.inner.put_jobs(jobs).await
    }

    async fn job(&self, job_id: &str) -> Result<Option<JobState>, StorageError> {
        self.inner.job(job_id).await
    }

    async fn complete_job(&self, job_id: &str, spawned: &[Job], now_ms: i64) -> Result<(), StorageError> {
        self.inner.complete_job(job_id, spawned, now_ms).await
    }

    async fn fail_job(&self, job_id: &str, error: &str, max_attempts: u32, now_ms: i64) -> Result<bool, StorageError> {
        self.inner.fail_job(job_id, error, max_attempts, now_ms).await
    }

    async fn stale_jobs(&self, stale_before_ms: i64, now_ms: i64, limit: usize) -> Result<Vec<Job>, StorageError> {
        self.inner.stale_jobs(stale_before_ms, now_ms, limit).await
    }

    async fn dead_jobs(&self, after: &str, limit: usize) -> Result<Vec<DeadJob>, StorageError> {
        self.inner.dead_jobs(after, limit).await
    }

    async fn revive_jobs(&self, ids: &[String], now_ms: i64) -> Result<Vec<Job>, StorageError> {
        self.inner.revive_jobs(ids, now_ms).await
    }

    async fn job_stats(&self) -> Result<JobStats, StorageError> {
        self.inner.job_stats().await
    }

    async fn pending_work(&self, user: UserId) -> Result<PendingWork, StorageError> {
        self.inner.pending_work(user).await
    }

    async fn schedule(&self, item: &ScheduledActivity) -> Result<(), StorageError> {
        self.inner.schedule(item).await
    }

    async fn list_scheduled(
        &self,
        actor: UserId,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ScheduledActivity>, StorageError> {
        self.inner.list_scheduled(actor, after, limit).await
    }

    async fn remove_scheduled(&self, actor: UserId, schedule_id: &str) -> Result<bool, StorageError> {
        self.inner.remove_scheduled(actor, schedule_id).await
    }

    async fn due_scheduled(&self, now_ms: i64, limit: usize) -> Result<Vec<ScheduledActivity>, StorageError> {
        self.inner.due_scheduled(now_ms, limit).await
    }

    async fn edge_cursor(&self) -> Result<u64, StorageError> {
        self.inner.edge_cursor().await
    }

    async fn record_edge_jobs(&self, jobs: &[Job], cursor: u64) -> Result<(), StorageError> {
        self.inner.record_edge_jobs(jobs, cursor).await
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(state: u8, floor: u64, ids: &[u64]) -> Vec<u8> {
        let mut v = vec![state];
        v.extend_from_slice(&floor.to_be_bytes());
        for id in ids {
            v.extend_from_slice(&id.to_be_bytes());
        }
        v
    }

    #[test]
    fn a_head_answers_only_what_it_holds_whole() {
        let full = head(b'C', 0, &[9, 7, 5]);
        assert_eq!(answer(&full, None, 2), Some(vec![9, 7]));
        assert_eq!(answer(&full, Some(7), 10), Some(vec![5]), "complete to the bottom");
        assert_eq!(answer(&head(b'C', 0, &[]), None, 10), Some(vec![]), "a feed with none");
        let cut = head(b'C', 5, &[9, 7, 5]);
        assert_eq!(answer(&cut, None, 3), Some(vec![9, 7, 5]));
        assert_eq!(answer(&cut, Some(7), 3), None, "more may lie below the floor");
        assert_eq!(answer(&head(b'P', 1, &[9]), None, 1), None, "being filled");
        assert_eq!(answer(b"C12", None, 1), None, "malformed");
    }
}
