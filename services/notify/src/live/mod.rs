//! The live log behind Watch: per user, an ordered, bounded log of the
//! notifications delivered to them, plus a wake-up for connected streams.
//!
//! With Redis the log is a per-user Stream (`notify-live:{u}`, capped, with
//! a TTL) and the wake-up a per-user pub/sub channel: any replica appends,
//! every replica holding a Watch for the user wakes and reads the log. The
//! log, not the wake-up, is what a stream delivers from, so a lost wake-up
//! only delays an event until the next heartbeat poll. In feedd both are in
//! process.

pub mod contract;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use feed_core::UserId;
use feed_proto::notify::v1::Notification;
use futures::StreamExt;
use prost::Message;
use tokio::sync::{mpsc, watch};

/// Live log failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("live log unavailable: {0}")]
pub struct LiveError(pub String);

impl From<redis::RedisError> for LiveError {
    fn from(e: redis::RedisError) -> Self {
        LiveError(e.to_string())
    }
}

impl From<LiveError> for feed_core::ApiError {
    fn from(e: LiveError) -> Self {
        feed_core::ApiError::Unavailable(e.0)
    }
}

/// An entry id of the live log: `<ms>-<seq>`, ordered (a Redis Stream id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventId(pub u64, pub u64);

impl EventId {
    /// Parses `<ms>-<seq>`.
    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once('-')?;
        Some(Self(a.parse().ok()?, b.parse().ok()?))
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// A per-user ordered log of live notifications with wake-ups.
#[async_trait]
pub trait LiveLog: Send + Sync + 'static {
    /// Appends `n` to `user`'s log and wakes the user's streams everywhere.
    async fn append(&self, user: UserId, n: &Notification) -> Result<EventId, LiveError>;
    /// Entries after `after` (from the oldest kept when None), oldest first, at most `max`.
    async fn read_after(
        &self,
        user: UserId,
        after: Option<EventId>,
        max: usize,
    ) -> Result<Vec<(EventId, Notification)>, LiveError>;
    /// The newest entry id of `user`'s log.
    async fn last_id(&self, user: UserId) -> Result<Option<EventId>, LiveError>;
    /// A receiver that changes whenever `user`'s log may have grown. Take it
    /// before reading the backlog, so nothing appended in between is missed.
    fn wake(&self, user: UserId) -> watch::Receiver<u64>;
}

/// Wake-up senders per user; an entry lives while a receiver does.
#[derive(Default)]
struct Wakers {
    by_user: Mutex<HashMap<UserId, watch::Sender<u64>>>,
}

impl Wakers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, watch::Sender<u64>>> {
        self.by_user.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver for `user`; true when the user had no waker yet.
    fn subscribe(&self, user: UserId) -> (watch::Receiver<u64>, bool) {
        let mut map = self.lock();
        map.retain(|_, tx| tx.receiver_count() > 0);
        match map.get(&user) {
            Some(tx) => (tx.subscribe(), false),
            None => {
                let (tx, rx) = watch::channel(0);
                map.insert(user, tx);
                (rx, true)
            }
        }
    }

    fn wake(&self, user: UserId) {
        if let Some(tx) = self.lock().get(&user) {
            tx.send_modify(|v| *v += 1);
        }
    }

    fn wake_all(&self) {
        for tx in self.lock().values() {
            tx.send_modify(|v| *v += 1);
        }
    }

    fn users(&self) -> Vec<UserId> {
        self.lock().keys().copied().collect()
    }
}

/// The in-process live log of feedd.
pub struct MemoryLive {
    logs: Mutex<HashMap<UserId, VecDeque<(EventId, Notification)>>>,
    last: Mutex<EventId>,
    cap: usize,
    wakers: Wakers,
}

impl MemoryLive {
    /// Keeps the newest `cap` entries per user.
    pub fn new(cap: usize) -> Self {
        Self {
            logs: Mutex::new(HashMap::new()),
            last: Mutex::new(EventId(0, 0)),
            cap: cap.max(1),
            wakers: Wakers::default(),
        }
    }

    fn next_id(&self) -> EventId {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        // Ordered like a Redis Stream id, also when the clock steps back.
        let next = if ms > last.0 {
            EventId(ms, 0)
        } else {
            EventId(last.0, last.1 + 1)
        };
        *last = next;
        next
    }
}

#[async_trait]
impl LiveLog for MemoryLive {
    async fn append(&self, user: UserId, n: &Notification) -> Result<EventId, LiveError> {
        let id = {
            let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
            let id = self.next_id();
            let log = logs.entry(user).or_default();
            log.push_back((id, n.clone()));
            while log.len() > self.cap {
                log.pop_front();
            }
            id
        };
        self.wakers.wake(user);
        Ok(id)
    }

    async fn read_after(
        &self,
        user: UserId,
        after: Option<EventId>,
        max: usize,
    ) -> Result<Vec<(EventId, Notification)>, LiveError> {
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        Ok(logs
            .get(&user)
            .map(|log| {
                log.iter()
                    .filter(|(id, _)| after.is_none_or(|a| *id > a))
                    .take(max)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn last_id(&self, user: UserId) -> Result<Option<EventId>, LiveError> {
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        Ok(logs.get(&user).and_then(|l| l.back()).map(|(id, _)| *id))
    }

    fn wake(&self, user: UserId) -> watch::Receiver<u64> {
        self.wakers.subscribe(user).0
    }
}

/// The live log on Redis, shared by every notify replica.
pub struct RedisLive {
    conn: feed_redis::Redis,
    cap: usize,
    ttl_secs: u64,
    wakers: Arc<Wakers>,
    subscribe_tx: mpsc::UnboundedSender<UserId>,
}

const FIELD: &str = "n";

fn log_key(user: UserId) -> String {
    format!("notify-live:{{{user}}}")
}

fn wake_channel(user: UserId) -> String {
    format!("notify-wake:{{{user}}}")
}

fn user_of_channel(channel: &str) -> Option<UserId> {
    channel.strip_prefix("notify-wake:{")?.strip_suffix('}')?.parse().ok()
}

impl RedisLive {
    /// Connects; keeps `cap` entries per user for `ttl_secs` after the last one.
    pub async fn connect(url: &str, cap: usize, ttl_secs: u64) -> Result<Self, LiveError> {
        let client = feed_redis::client(url)?;
        let conn = feed_redis::Redis::connect(url).await?;
        let wakers = Arc::new(Wakers::default());
        let (subscribe_tx, subscribe_rx) = mpsc::unbounded_channel();
        tokio::spawn(listen(client, wakers.clone(), subscribe_rx));
        Ok(Self {
            conn,
            cap: cap.max(1),
            ttl_secs: ttl_secs.max(1),
            wakers,
            subscribe_tx,
        })
    }

    fn decode(id: &str, map: &HashMap<String, redis::Value>) -> Option<(EventId, Notification)> {
        let bytes: Vec<u8> = map.get(FIELD).and_then(|v| redis::from_redis_value_ref(v).ok())?;
        Some((EventId::parse(id)?, Notification::decode(bytes.as_slice()).ok()?))
    }
}

/// Holds the pub/sub connection: subscribes to the channels of users with
/// a local Watch, wakes them on messages, and after a reconnect wakes every
/// stream (messages may have been lost; streams re-read the log).
async fn listen(client: redis::Client, wakers: Arc<Wakers>, mut subscribe_rx: mpsc::UnboundedReceiver<UserId>) {
    loop {
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "live wake-up connection failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut subscribed: std::collections::HashSet<UserId> = Default::default();
        let mut ok = true;
        for user in wakers.users() {
            ok &= sink.subscribe(wake_channel(user)).await.is_ok();
            subscribed.insert(user);
        }
        wakers.wake_all();
        let mut tidy = tokio::time::interval(Duration::from_secs(30));
        while ok {
            tokio::select! {
                user = subscribe_rx.recv() => match user {
                    Some(user) => {
                        if subscribed.insert(user) {
                            ok = sink.subscribe(wake_channel(user)).await.is_ok();
                        }
                    }
                    None => return,
                },
                msg = stream.next() => match msg {
                    Some(msg) => {
                        if let Some(user) = user_of_channel(msg.get_channel_name()) {
                            wakers.wake(user);
                        }
                    }
                    None => ok = false,
                },
                _ = tidy.tick() => {
                    let live: std::collections::HashSet<UserId> = wakers.users().into_iter().collect();
                    let gone: Vec<UserId> = subscribed.difference(&live).copied().collect();
                    for user in gone {
                        subscribed.remove(&user);
                        ok &= sink.unsubscribe(wake_channel(user)).await.is_ok();
                    }
                }
            }
        }
        tracing::warn!("live wake-up connection lost; reconnecting");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[async_trait]
impl LiveLog for RedisLive {
    async fn append(&self, user: UserId, n: &Notification) -> Result<EventId, LiveError> {
        let key = log_key(user);
        let mut c = self.conn.clone();
        let (id,): (String,) = redis::pipe()
            .cmd("XADD")
            .arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.cap)
            .arg("*")
            .arg(FIELD)
            .arg(n.encode_to_vec())
            .cmd("EXPIRE")
            .arg(&key)
            .arg(self.ttl_secs)
            .ignore()
            .cmd("PUBLISH")
            .arg(wake_channel(user))
            .arg("")
            .ignore()
            .query_async(&mut c)
            .await?;
        EventId::parse(&id).ok_or_else(|| LiveError(format!("unexpected stream id {id}")))
    }

    async fn read_after(
        &self,
        user: UserId,
        after: Option<EventId>,
        max: usize,
    ) -> Result<Vec<(EventId, Notification)>, LiveError> {
        let start = match after {
            Some(id) => format!("({id}"),
            None => "-".into(),
        };
        let mut c = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(log_key(user))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut c)
            .await?;
        Ok(reply.ids.iter().filter_map(|e| Self::decode(&e.id, &e.map)).collect())
    }

    async fn last_id(&self, user: UserId) -> Result<Option<EventId>, LiveError> {
        let mut c = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(log_key(user))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await?;
        Ok(reply.ids.first().and_then(|e| EventId::parse(&e.id)))
    }

    fn wake(&self, user: UserId) -> watch::Receiver<u64> {
        let (rx, first) = self.wakers.subscribe(user);
        if first {
            // The listener task ends only with this value; a send error cannot happen while it lives.
            let _ = self.subscribe_tx.send(user);
        }
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_order_numerically() {
        let a = EventId::parse("1700000000000-2").expect("id");
        assert_eq!(a.to_string(), "1700000000000-2");
        assert!(EventId(5, 10) > EventId(5, 9));
        assert!(EventId(10, 0) > EventId(9, 99));
        assert!(EventId::parse("abc").is_none());
        assert!(EventId::parse("1-x").is_none());
        assert_eq!(user_of_channel(&wake_channel(42)), Some(42));
    }

    #[tokio::test]
    async fn memory_log_is_bounded_and_wakes_watchers() {
        let live = MemoryLive::new(2);
        let mut wake = live.wake(1);
        let n = Notification::default();
        let a = live.append(1, &n).await.expect("append");
        assert!(wake.has_changed().expect("open"));
        wake.borrow_and_update();
        live.append(1, &n).await.expect("append");
        let c = live.append(1, &n).await.expect("append");
        let all = live.read_after(1, None, 10).await.expect("read");
        assert_eq!(all.len(), 2, "the oldest entry left the window");
        assert!(all.iter().all(|(id, _)| *id > a));
        assert!(live.read_after(1, Some(c), 10).await.expect("read").is_empty());
        assert_eq!(live.last_id(1).await.expect("last"), Some(c));
    }
}
