//! Watch: the live stream with heartbeats, resume and slow-client drops.

use feed_core::{ApiError, UserId};
use feed_proto::notify::v1::{WatchEvent, watch_event};
use tokio::sync::mpsc;

use super::Notifier;
use crate::live::EventId;

/// Live entries read per round trip.
const LIVE_BATCH: usize = 100;

/// Open Watch streams of this replica, in all and per user.
#[derive(Default)]
pub(super) struct WatchCount {
    total: usize,
    per_user: std::collections::HashMap<UserId, usize>,
}

/// One open Watch stream, counted until dropped.
struct WatchSlot {
    notifier: Notifier,
    user: UserId,
}

impl WatchSlot {
    fn take(notifier: &Notifier, user: UserId) -> Result<Self, ApiError> {
        let cfg = notifier.cfg();
        let mut count = notifier.inner.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if count.total >= cfg.watch_max_streams {
            metrics::counter!("feed_notify_watch_refused_total", "cap" => "replica").increment(1);
            return Err(ApiError::ResourceExhausted(format!(
                "watch: this replica serves {} streams, its most; retry",
                cfg.watch_max_streams
            )));
        }
        let mine = count.per_user.entry(user).or_default();
        if *mine >= cfg.watch_max_per_user {
            metrics::counter!("feed_notify_watch_refused_total", "cap" => "user").increment(1);
            return Err(ApiError::ResourceExhausted(format!(
                "user_id: at most {} open Watch streams per user; close one",
                cfg.watch_max_per_user
            )));
        }
        *mine += 1;
        count.total += 1;
        Ok(Self {
            notifier: notifier.clone(),
            user,
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut count = self.notifier.inner.watchers.lock().unwrap_or_else(|p| p.into_inner());
        count.total = count.total.saturating_sub(1);
        if let std::collections::hash_map::Entry::Occupied(mut e) = count.per_user.entry(self.user) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

impl Notifier {
    /// Watch: the user's live notifications from after `resume_after` (or
    /// from now), with heartbeats. The stream ends with RESOURCE_EXHAUSTED
    /// when the client falls a buffer behind (it resumes from its last id)
    /// and with UNAVAILABLE on shutdown.
    ///
    /// Streams are capped per user and per replica
    /// (`notify.watch_max_per_user`, `notify.watch_max_streams`): one more
    /// is RESOURCE_EXHAUSTED, so one user's reconnect loop cannot hold a
    /// replica's tasks and Redis connections.
    pub fn watch(
        &self,
        user: UserId,
        resume_after: Option<EventId>,
    ) -> Result<mpsc::Receiver<Result<WatchEvent, ApiError>>, ApiError> {
        let slot = WatchSlot::take(self, user)?;
        let (tx, rx) = mpsc::channel(self.cfg().watch_buffer);
        let this = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            metrics::gauge!("feed_notify_watch_streams").increment(1.0);
            if let Err(e) = this.pump(user, resume_after, &tx).await
                && !tx.is_closed()
            {
                let _ = tx.try_send(Err(e));
            }
            metrics::gauge!("feed_notify_watch_streams").decrement(1.0);
        });
        Ok(rx)
    }

    /// Queues an event for the client, waiting up to `slow_client` for room.
    /// The last slot is never used for an event: it is kept for the error
    /// that ends the stream of a client that stopped reading.
    async fn send(&self, tx: &mpsc::Sender<Result<WatchEvent, ApiError>>, ev: WatchEvent) -> Result<(), ApiError> {
        match tokio::time::timeout(self.cfg().slow_client, tx.reserve_many(2)).await {
            Ok(Ok(mut permits)) => {
                if let Some(p) = permits.next() {
                    p.send(Ok(ev));
                }
                Ok(())
            }
            Ok(Err(_)) => Err(ApiError::RetryLater("stream closed; resume with resume_after")),
            Err(_) => {
                metrics::counter!("feed_notify_watch_slow_drops_total").increment(1);
                Err(ApiError::ResourceExhausted(
                    "client too slow: reconnect with resume_after".into(),
                ))
            }
        }
    }

    async fn pump(
        &self,
        user: UserId,
        resume_after: Option<EventId>,
        tx: &mpsc::Sender<Result<WatchEvent, ApiError>>,
    ) -> Result<(), ApiError> {
        let live = &self.inner.live;
        // Subscribe first: anything appended while the backlog is read still wakes us.
        let mut wake = live.wake(user);
        let mut last = match resume_after {
            Some(id) => Some(id),
            None => live.last_id(user).await?,
        };
        let mut heartbeat = tokio::time::interval(self.cfg().heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        loop {
            loop {
                let batch = live.read_after(user, last, LIVE_BATCH).await?;
                for (id, n) in &batch {
                    self.send(
                        tx,
                        WatchEvent {
                            event_id: id.to_string(),
                            event: Some(watch_event::Event::Notification(n.clone())),
                        },
                    )
                    .await?;
                    last = Some(*id);
                }
                if batch.len() < LIVE_BATCH {
                    break;
                }
            }
            tokio::select! {
                changed = wake.changed() => {
                    if changed.is_err() {
                        return Err(ApiError::RetryLater("live log closed; resume with resume_after"));
                    }
                }
                _ = heartbeat.tick() => {
                    self.send(tx, WatchEvent {
                        event_id: last.map(|l| l.to_string()).unwrap_or_default(),
                        event: Some(watch_event::Event::Heartbeat(feed_proto::notify::v1::Heartbeat {
                            server_time_ms: self.now() as i64,
                        })),
                    }).await?;
                }
                _ = self.inner.shutdown.wait() => {
                    return Err(ApiError::RetryLater("server shutting down; resume with resume_after"));
                }
                _ = tx.closed() => return Ok(()),
            }
        }
    }
}
