//! Carries protobuf messages (fanout jobs, activity events, remind jobs) to
//! workers: Redis Streams with a consumer group in production, an
//! in-process queue in feedd. Neither is a job's only record: each user of
//! a queue keeps the durable record and re-drives from it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub mod consume;
pub mod contract;
pub mod lanes;

pub use consume::Consumer;
pub use lanes::Lanes;

use async_trait::async_trait;
use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamReadOptions, StreamReadReply};
use tokio::sync::Notify;

/// A message handed to one consumer, to be acknowledged when done.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<M> {
    /// The message.
    pub job: M,
    /// The queue's handle for acknowledging (a stream entry id).
    pub tag: String,
}

/// Queue failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue unavailable: {0}")]
pub struct QueueError(pub String);

impl From<QueueError> for feed_core::ApiError {
    /// The queue only carries work its durable record re-drives: retryable.
    fn from(e: QueueError) -> Self {
        feed_core::ApiError::Unavailable(e.to_string())
    }
}

impl From<redis::RedisError> for QueueError {
    fn from(e: redis::RedisError) -> Self {
        QueueError(e.to_string())
    }
}

/// What a queue carries: a message that stands for a durable record
/// elsewhere (a job, an event), named by that record's id.
pub trait QueueMessage: prost::Message + Default + Clone + Send + Sync + 'static {
    /// The id of the durable record this message re-drives: [`JobQueue::held`]
    /// answers by it.
    fn record_id(&self) -> &str;

    /// Whether it travels in the bulk lane of [`Lanes`].
    fn bulk(&self) -> bool {
        false
    }
}

impl QueueMessage for feed_proto::events::v1::Job {
    fn record_id(&self) -> &str {
        &self.job_id
    }

    fn bulk(&self) -> bool {
        self.bulk
    }
}

impl QueueMessage for feed_proto::events::v1::ActivityEvent {
    fn record_id(&self) -> &str {
        &self.event_id
    }
}

impl QueueMessage for feed_proto::notify::v1::RemindJob {
    fn record_id(&self) -> &str {
        &self.job_id
    }
}

/// A work queue with consumer-group semantics.
#[async_trait]
pub trait JobQueue<Job: QueueMessage>: Send + Sync + 'static {
    /// Adds jobs.
    async fn enqueue(&self, jobs: &[Job]) -> Result<(), QueueError>;
    /// Up to `max` new jobs for `consumer`, waiting up to `wait` for one.
    async fn receive(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Delivery<Job>>, QueueError>;
    /// Acknowledges a finished job.
    async fn ack(&self, delivery: &Delivery<Job>) -> Result<(), QueueError>;
    /// Takes over jobs delivered to any consumer and unacknowledged for
    /// `min_idle` (their worker died or stalled).
    async fn reclaim(&self, consumer: &str, min_idle: Duration, max: usize) -> Result<Vec<Delivery<Job>>, QueueError>;
    /// Trims what every consumer has acknowledged (never a pending entry).
    async fn trim(&self) -> Result<(), QueueError>;
    /// Per record id, whether the queue holds a message for it that no
    /// consumer has acknowledged yet (waiting, or in a consumer's hands,
    /// where `reclaim` recovers it if that consumer dies). A sweeper
    /// re-drives only records the queue does not hold: a backlog or a slow
    /// job is not a lost one, and re-driving those multiplied the work.
    async fn held(&self, record_ids: &[&str]) -> Result<Vec<bool>, QueueError>;
    /// Publishes a job that kept failing on the dead-letter stream (for
    /// operators' tooling; the durable record is what ReplayDeadLetters uses).
    async fn dead_letter(&self, job: &Job, error: &str) -> Result<(), QueueError>;
}

struct MemState<Job> {
    ready: VecDeque<(u64, Job)>,
    inflight: HashMap<u64, (Job, Instant)>,
    /// Record id -> the tag of its newest message not acknowledged.
    held: HashMap<String, u64>,
    next: u64,
}

/// The in-process queue of feedd.
pub struct MemoryQueue<Job> {
    state: Mutex<MemState<Job>>,
    notify: Notify,
}

impl<Job> Default for MemoryQueue<Job> {
    fn default() -> Self {
        Self {
            state: Mutex::new(MemState {
                ready: VecDeque::new(),
                inflight: HashMap::new(),
                held: HashMap::new(),
                next: 0,
            }),
            notify: Notify::new(),
        }
    }
}

impl<Job: QueueMessage> MemoryQueue<Job> {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemState<Job>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, max: usize) -> Vec<Delivery<Job>> {
        let mut st = self.lock();
        let mut out = Vec::new();
        while out.len() < max {
            let Some((tag, job)) = st.ready.pop_front() else {
                break;
            };
            st.inflight.insert(tag, (job.clone(), Instant::now()));
            out.push(Delivery {
                job,
                tag: tag.to_string(),
            });
        }
        out
    }
}

#[async_trait]
impl<Job: QueueMessage> JobQueue<Job> for MemoryQueue<Job> {
    async fn enqueue(&self, jobs: &[Job]) -> Result<(), QueueError> {
        {
            let mut st = self.lock();
            for job in jobs {
                let tag = st.next;
                st.next += 1;
                st.held.insert(job.record_id().to_owned(), tag);
                st.ready.push_back((tag, job.clone()));
            }
        }
        self.notify.notify_waiters();
        Ok(())
    }

    async fn receive(&self, _consumer: &str, max: usize, wait: Duration) -> Result<Vec<Delivery<Job>>, QueueError> {
        let notified = self.notify.notified();
        let got = self.take(max);
        if !got.is_empty() {
            return Ok(got);
        }
        let _ = tokio::time::timeout(wait, notified).await;
        Ok(self.take(max))
    }

    async fn ack(&self, delivery: &Delivery<Job>) -> Result<(), QueueError> {
        if let Ok(tag) = delivery.tag.parse::<u64>() {
            let mut st = self.lock();
            st.inflight.remove(&tag);
            let id = delivery.job.record_id();
            // A newer message for the same record is still held.
            if st.held.get(id) == Some(&tag) {
                st.held.remove(id);
            }
        }
        Ok(())
    }

    async fn reclaim(&self, _consumer: &str, min_idle: Duration, max: usize) -> Result<Vec<Delivery<Job>>, QueueError> {
        let mut st = self.lock();
        let now = Instant::now();
        let mut out = Vec::new();
        for (tag, (job, since)) in st.inflight.iter_mut() {
            if out.len() >= max {
                break;
            }
            if now.duration_since(*since) >= min_idle {
                *since = now;
                out.push(Delivery {
                    job: job.clone(),
                    tag: tag.to_string(),
                });
            }
        }
        Ok(out)
    }

    async fn trim(&self) -> Result<(), QueueError> {
        Ok(())
    }

    async fn held(&self, record_ids: &[&str]) -> Result<Vec<bool>, QueueError> {
        let st = self.lock();
        Ok(record_ids.iter().map(|id| st.held.contains_key(*id)).collect())
    }

    async fn dead_letter(&self, _job: &Job, error: &str) -> Result<(), QueueError> {
        // In process, the durable dead-letter record is the only one needed.
        tracing::debug!(error, "dead-lettered");
        Ok(())
    }
}

/// Messages on a Redis Stream read by one consumer group.
pub struct RedisQueue<Job> {
    conn: feed_redis::Redis,
    /// Blocking reads get their own connection: on a shared multiplexed
    /// connection they would hold up every other command.
    blocking: feed_redis::Redis,
    stream: String,
    /// Hash: record id -> stream entry id of its newest message not
    /// acknowledged. Written with the entry and cleared with its ack in one
    /// script, so it is lost exactly when the stream is (a flush).
    held: String,
    group: String,
    /// Where the next reclaim resumes its walk of the group's pending
    /// entries ("0-0": from the start). One XAUTOCLAIM looks at no more
    /// than ten times the entries it may claim, so a walk always begun at
    /// the start never reached entries behind that many busy ones: a
    /// backlog of jobs in backoff starved every stalled delivery after it.
    reclaim_from: std::sync::Arc<Mutex<String>>,
    _message: std::marker::PhantomData<fn() -> Job>,
}

/// XAUTOCLAIM calls one reclaim makes at most while it finds nothing idle.
const RECLAIM_SCANS: usize = 8;

impl<Job> Clone for RedisQueue<Job> {
    fn clone(&self) -> Self {
        Self {
            conn: self.conn.clone(),
            blocking: self.blocking.clone(),
            stream: self.stream.clone(),
            held: self.held.clone(),
            group: self.group.clone(),
            reclaim_from: self.reclaim_from.clone(),
            _message: std::marker::PhantomData,
        }
    }
}

const FIELD: &str = "job";

/// The id before every stream entry: a walk of pending entries from the start.
const START: &str = "0-0";

/// KEYS: stream, held hash. ARGV: record id, body, record id, body, ...
const ENQUEUE: &str = r"
for i = 1, #ARGV, 2 do
  local entry = redis.call('XADD', KEYS[1], '*', 'job', ARGV[i + 1])
  redis.call('HSET', KEYS[2], ARGV[i], entry)
end
return 1
";

/// KEYS: stream, held hash. ARGV: group, entry id, record id. A newer
/// entry for the same record stays held.
const ACK: &str = r"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if redis.call('HGET', KEYS[2], ARGV[3]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[3])
end
return 1
";

/// KEYS: stream, held hash. ARGV: record ids. Held: its entry is still in
/// the stream (an entry removed by hand, e.g. XDEL or a MAXLEN trim, no
/// longer holds its record, and its hash field goes).
const HELD: &str = r"
local out = {}
for i, id in ipairs(ARGV) do
  local entry = redis.call('HGET', KEYS[2], id)
  out[i] = 0
  if entry then
    if #redis.call('XRANGE', KEYS[1], entry, entry) > 0 then
      out[i] = 1
    else
      redis.call('HDEL', KEYS[2], id)
    end
  end
end
return out
";

impl<Job: QueueMessage> RedisQueue<Job> {
    /// Connects and creates the stream and group if missing.
    pub async fn connect(url: &str, stream: &str, group: &str) -> Result<Self, QueueError> {
        let conn = feed_redis::Redis::connect(url).await?;
        // Blocking reads wait up to their BLOCK time for an answer.
        let blocking = feed_redis::Redis::connect_with(
            url,
            feed_redis::Timeouts {
                response: Duration::from_secs(10),
                ..feed_redis::Timeouts::default()
            },
        )
        .await?;
        let q = Self {
            conn,
            blocking,
            stream: stream.to_owned(),
            held: format!("{stream}:held"),
            group: group.to_owned(),
            reclaim_from: std::sync::Arc::new(Mutex::new(START.to_owned())),
            _message: std::marker::PhantomData,
        };
        q.ensure_group().await?;
        Ok(q)
    }

    /// Creates the group from the stream's start ("0"), so entries added
    /// before any worker existed are still delivered.
    async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut c = self.conn.clone();
        let r: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        match r {
            Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    fn decode(id: String, map: &HashMap<String, redis::Value>) -> Option<Delivery<Job>> {
        let bytes: Vec<u8> = map.get(FIELD).and_then(|v| redis::from_redis_value_ref(v).ok())?;
        Job::decode(bytes.as_slice()).ok().map(|job| Delivery { job, tag: id })
    }

    /// The group's lag (entries added but not yet delivered) and pending
    /// count (delivered, not acknowledged).
    pub async fn lag(&self) -> Result<(u64, u64), QueueError> {
        let field = |g: &HashMap<String, redis::Value>, k: &str| -> u64 {
            g.get(k)
                .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
                .unwrap_or(0)
        };
        Ok(self
            .group_info()
            .await?
            .map(|g| (field(&g, "lag"), field(&g, "pending")))
            .unwrap_or((0, 0)))
    }

    /// A flushed Redis lost the group: recreate it and report nothing (the
    /// durable records re-drive what the stream lost).
    async fn or_regroup<T>(&self, r: Result<T, redis::RedisError>) -> Result<Option<T>, QueueError> {
        match r {
            Err(e) if Self::is_nogroup(&e) => {
                self.ensure_group().await?;
                Ok(None)
            }
            other => Ok(Some(other?)),
        }
    }

    /// This queue's group as `XINFO GROUPS` describes it.
    async fn group_info(&self) -> Result<Option<HashMap<String, redis::Value>>, QueueError> {
        let mut c = self.conn.clone();
        let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .query_async(&mut c)
            .await?;
        Ok(groups.into_iter().find(|g| {
            g.get("name")
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                .as_deref()
                == Some(&self.group)
        }))
    }

    fn is_nogroup(e: &redis::RedisError) -> bool {
        e.to_string().contains("NOGROUP")
    }
}

#[async_trait]
impl<Job: QueueMessage> JobQueue<Job> for RedisQueue<Job> {
    async fn enqueue(&self, jobs: &[Job]) -> Result<(), QueueError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let script = redis::Script::new(ENQUEUE);
        let mut c = self.conn.clone();
        // Chunked: one script call blocks the server while it runs.
        for chunk in jobs.chunks(500) {
            let mut call = script.key(&self.stream);
            call.key(&self.held);
            for job in chunk {
                call.arg(job.record_id()).arg(job.encode_to_vec());
            }
            let _: i64 = call.invoke_async(&mut c).await?;
        }
        Ok(())
    }

    async fn receive(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Delivery<Job>>, QueueError> {
        let mut opts = StreamReadOptions::default().group(&self.group, consumer).count(max);
        // BLOCK 0 would wait for ever: no wait is no BLOCK.
        if !wait.is_zero() {
            opts = opts.block(wait.as_millis().max(1) as usize);
        }
        let mut c = self.blocking.clone();
        let reply: Result<StreamReadReply, redis::RedisError> =
            redis::AsyncCommands::xread_options(&mut c, &[&self.stream], &[">"], &opts).await;
        let Some(reply) = self.or_regroup(reply).await? else {
            return Ok(vec![]);
        };
        Ok(reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids)
            .filter_map(|e| Self::decode(e.id, &e.map))
            .collect())
    }

    async fn ack(&self, delivery: &Delivery<Job>) -> Result<(), QueueError> {
        let mut c = self.conn.clone();
        let _: i64 = redis::Script::new(ACK)
            .key(&self.stream)
            .key(&self.held)
            .arg(&self.group)
            .arg(&delivery.tag)
            .arg(delivery.job.record_id())
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    /// Walks the pending entries from where the last reclaim stopped,
    /// through to the end and then from the start again, so every stalled
    /// delivery is reached however many busy ones are ahead of it.
    async fn reclaim(&self, consumer: &str, min_idle: Duration, max: usize) -> Result<Vec<Delivery<Job>>, QueueError> {
        let mut c = self.conn.clone();
        let mut from = self.reclaim_from.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut claimed = Vec::new();
        for _ in 0..RECLAIM_SCANS {
            let opts = StreamAutoClaimOptions::default().count(max);
            let reply: Result<StreamAutoClaimReply, redis::RedisError> = redis::AsyncCommands::xautoclaim_options(
                &mut c,
                &self.stream,
                &self.group,
                consumer,
                min_idle.as_millis() as usize,
                &from,
                opts,
            )
            .await;
            let Some(reply) = self.or_regroup(reply).await? else {
                from = START.to_owned();
                break;
            };
            from = reply.next_stream_id;
            claimed.extend(reply.claimed.into_iter().filter_map(|e| Self::decode(e.id, &e.map)));
            if !claimed.is_empty() || from == START {
                break;
            }
        }
        *self.reclaim_from.lock().unwrap_or_else(|p| p.into_inner()) = from;
        Ok(claimed)
    }

    async fn dead_letter(&self, job: &Job, error: &str) -> Result<(), QueueError> {
        let mut c = self.conn.clone();
        // Capped: the durable store keeps every dead job; the stream is a feed for tooling.
        let _: String = redis::cmd("XADD")
            .arg(format!("{}:dead", self.stream))
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg(FIELD)
            .arg(job.encode_to_vec())
            .arg("error")
            .arg(error)
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    async fn held(&self, record_ids: &[&str]) -> Result<Vec<bool>, QueueError> {
        let script = redis::Script::new(HELD);
        let mut c = self.conn.clone();
        let mut out = Vec::with_capacity(record_ids.len());
        for chunk in record_ids.chunks(500) {
            let mut call = script.key(&self.stream);
            call.key(&self.held);
            for id in chunk {
                call.arg(*id);
            }
            let held: Vec<i64> = call.invoke_async(&mut c).await?;
            out.extend(held.into_iter().map(|h| h == 1));
        }
        Ok(out)
    }

    async fn trim(&self) -> Result<(), QueueError> {
        let mut c = self.conn.clone();
        // XPENDING summary: [count, min id, max id, consumers].
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .query_async(&mut c)
            .await?;
        let oldest_pending: Option<String> = match &summary {
            redis::Value::Array(v) if v.len() >= 2 => redis::from_redis_value_ref(&v[1]).ok(),
            _ => None,
        };
        // With nothing pending, everything delivered can go: trim below the group's last delivered id.
        let bound = match oldest_pending {
            Some(id) => id,
            None => match self
                .group_info()
                .await?
                .and_then(|g| g.get("last-delivered-id").cloned())
                .and_then(|v| redis::from_redis_value_ref::<String>(&v).ok())
            {
                Some(id) => id,
                None => return Ok(()),
            },
        };
        let _: i64 = redis::cmd("XTRIM")
            .arg(&self.stream)
            .arg("MINID")
            .arg(bound)
            .query_async(&mut c)
            .await?;
        Ok(())
    }
}
