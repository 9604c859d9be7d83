//! notify's background work: consuming publish's activity events,
//! delivering remind jobs, and re-driving jobs whose worker died.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use feed_core::ApiError;
use feed_proto::events::v1::ActivityEvent;
use feed_proto::notify::v1::RemindJob;
use feed_queue::{Consumer, Delivery, JobQueue, QueueMessage};
use feed_server::Shutdown;

use crate::ledger::EventLedger;
use crate::notifier::Notifier;

const BATCH: usize = 16;

/// Reads `queue` as `consumer` until shutdown, one delivery at a time (an
/// object's events stay in order): stalled deliveries first, then new
/// ones; acknowledges each one `handle` finished. A failure leaves the
/// delivery pending, to be reclaimed and retried; a message that can never
/// succeed (invalid) is logged and acknowledged.
pub async fn consume<M, F, Fut>(
    queue: Arc<dyn JobQueue<M>>,
    consumer: String,
    reclaim_idle: Duration,
    shutdown: Shutdown,
    handle: F,
) where
    M: QueueMessage,
    F: Fn(M) -> Fut,
    Fut: Future<Output = Result<(), ApiError>>,
{
    let reader = Consumer {
        name: consumer,
        batch: BATCH,
        concurrency: 1,
        reclaim_idle,
        poll: Duration::from_millis(500),
    };
    let settle = |d: Delivery<M>| {
        let (queue, handle) = (&queue, &handle);
        async move {
            match handle(d.job.clone()).await {
                Ok(()) => {}
                Err(e @ ApiError::InvalidArgument { .. }) => {
                    tracing::error!(error = %e, "dropping a message that can never succeed");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "message failed; it will be retried");
                    return;
                }
            }
            if let Err(e) = queue.ack(&d).await {
                tracing::warn!(error = %e, "ack failed; the message will replay harmlessly");
            }
        }
    };
    reader.run(queue.as_ref(), shutdown.wait(), settle).await
}

/// Consumes publish's activity events, settling each one's job in publish
/// once processed (a redelivered event is harmless: its reminds dedup).
/// A failed attempt is counted on that job; at publish's `max_attempts` it
/// is dead-lettered there and leaves the stream, instead of being
/// reclaimed and retried forever. An event that can never succeed (invalid)
/// is dead-lettered at once: dropped, its job stayed pending for ever.
pub async fn event_consumer(
    notifier: Notifier,
    events: Arc<dyn JobQueue<ActivityEvent>>,
    ledger: Arc<dyn EventLedger>,
    consumer: String,
    reclaim_idle: Duration,
    shutdown: Shutdown,
) {
    let queue = events.clone();
    consume(events, consumer, reclaim_idle, shutdown, |ev: ActivityEvent| {
        let n = notifier.clone();
        let ledger = ledger.clone();
        let queue = queue.clone();
        async move {
            let e = match n.on_activity_event(&ev).await {
                Ok(()) => return ledger.done(&ev.event_id).await,
                Err(e) => e,
            };
            metrics::counter!("feed_notify_event_failures_total").increment(1);
            let permanent = matches!(e, ApiError::InvalidArgument { .. });
            // Unreachable publish: the attempt is not counted, and the
            // delivery stays pending to be retried.
            if !ledger.fail(&ev.event_id, &e.to_string(), permanent).await? {
                return Err(e);
            }
            tracing::error!(event_id = %ev.event_id, error = %e, "activity event dead-lettered");
            if let Err(err) = queue.dead_letter(&ev, &e.to_string()).await {
                tracing::warn!(error = %err, "dead-letter stream write failed; publish's record stands");
            }
            Ok(())
        }
    })
    .await
}

/// Delivers remind jobs beyond their first page.
pub async fn remind_worker(
    notifier: Notifier,
    jobs: Arc<dyn JobQueue<RemindJob>>,
    consumer: String,
    reclaim_idle: Duration,
    shutdown: Shutdown,
) {
    consume(jobs, consumer, reclaim_idle, shutdown, |job: RemindJob| {
        let n = notifier.clone();
        async move { n.run_remind_job(&job.job_id).await.map(|_| ()) }
    })
    .await
}

/// Trims a queue's stream below its oldest pending entry.
pub type Trim = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Re-drives remind jobs idle for `stale` (their worker died, or the queue
/// lost them): the durable record is the job, the queue only carries it.
/// Also trims the queues notify reads, which nobody else trims.
pub async fn sweeper(
    notifier: Notifier,
    trims: Vec<Box<dyn Fn() -> Trim + Send + Sync>>,
    every: Duration,
    stale: Duration,
    shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => return,
        }
        match notifier.sweep(stale).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "re-drove stale remind jobs"),
            Err(e) => tracing::warn!(error = %e, "remind sweep failed"),
        }
        for trim in &trims {
            if let Err(e) = trim().await {
                tracing::warn!(error = %e, "stream trim failed");
            }
        }
    }
}
