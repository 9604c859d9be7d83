//! The one loop every queue consumer runs (fanout workers, notify's event
//! consumer and remind worker): stalled deliveries first, then new ones,
//! handled with bounded concurrency, until told to stop.

use std::future::Future;
use std::time::Duration;

use crate::{Delivery, JobQueue, QueueMessage};

/// How a consumer reads its queue.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// The consumer's name in the group (unique per process).
    pub name: String,
    /// Deliveries taken per round trip.
    pub batch: usize,
    /// Deliveries handled at once.
    pub concurrency: usize,
    /// A delivery unacknowledged this long is taken over from its consumer.
    pub reclaim_idle: Duration,
    /// How long one receive waits for new deliveries (and the pause after a failed one).
    pub poll: Duration,
}

impl Consumer {
    /// Reads `queue` until `stop` resolves, handing every delivery to
    /// `handle`, which settles it: acknowledges it when done, or leaves it
    /// pending to be reclaimed and retried. Up to `concurrency` deliveries
    /// are in hand at once, and the next batch is taken as soon as one of
    /// them is done and the batch before is used up, not once the slowest
    /// of a batch is done: a batch's long tail would idle the others.
    /// `stop` is looked at before each receive; every delivery received is
    /// handled before this returns, so none waits to be reclaimed.
    pub async fn run<M, F, Fut>(&self, queue: &dyn JobQueue<M>, stop: impl Future<Output = ()>, handle: F)
    where
        M: QueueMessage,
        F: Fn(Delivery<M>) -> Fut,
        Fut: Future<Output = ()>,
    {
        tokio::pin!(stop);
        let max = self.concurrency.max(1);
        let mut running = futures::stream::FuturesUnordered::new();
        let mut ready = std::collections::VecDeque::new();
        let mut stopped = false;
        loop {
            while running.len() < max
                && let Some(d) = ready.pop_front()
            {
                running.push(handle(d));
            }
            if stopped || running.len() >= max {
                // Only a finished delivery makes room; stopped, the last one ends the loop.
                if futures::StreamExt::next(&mut running).await.is_none() {
                    return;
                }
                continue;
            }
            // Room, and nothing in hand: receive while the running ones go on.
            let receive = self.next_batch(queue);
            tokio::pin!(receive);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stop => {
                        stopped = true;
                        break;
                    }
                    batch = &mut receive => {
                        ready.extend(batch);
                        break;
                    }
                    Some(()) = futures::StreamExt::next(&mut running), if !running.is_empty() => {}
                }
            }
        }
    }

    async fn next_batch<M: QueueMessage>(&self, queue: &dyn JobQueue<M>) -> Vec<Delivery<M>> {
        match queue.reclaim(&self.name, self.reclaim_idle, self.batch).await {
            Ok(stalled) if !stalled.is_empty() => return stalled,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, consumer = %self.name, "reclaim failed"),
        }
        match queue.receive(&self.name, self.batch, self.poll).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, consumer = %self.name, "receive failed");
                tokio::time::sleep(self.poll).await;
                vec![]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::MemoryQueue;
    use crate::contract::TestJob;

    fn consumer() -> Consumer {
        Consumer {
            name: "c".into(),
            batch: 2,
            concurrency: 2,
            reclaim_idle: Duration::from_millis(50),
            poll: Duration::from_millis(20),
        }
    }

    /// A memory queue holding fast-lane jobs `ids`, in order.
    async fn queue_of(ids: &[&str]) -> MemoryQueue<TestJob> {
        let q = MemoryQueue::<TestJob>::default();
        let jobs: Vec<TestJob> = ids
            .iter()
            .map(|id| TestJob {
                id: (*id).into(),
                bulk: false,
            })
            .collect();
        q.enqueue(&jobs).await.expect("enqueue");
        q
    }

    /// A stop future, and the sender (taken once) that resolves it.
    fn stopper() -> (
        Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
        impl Future<Output = ()>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        (Mutex::new(Some(tx)), async {
            let _ = rx.await;
        })
    }

    #[tokio::test]
    async fn a_delivery_left_unsettled_is_handled_again_and_every_job_once_settled() {
        let q = queue_of(&["a", "b", "c"]).await;
        let seen = Mutex::new(Vec::new());
        let (done_tx, stop) = stopper();
        consumer()
            .run(&q, stop, |d: Delivery<TestJob>| {
                let q = &q;
                let seen = &seen;
                let done_tx = &done_tx;
                async move {
                    let first_time = {
                        let mut s = seen.lock().expect("lock");
                        let first = !s.contains(&d.job.id);
                        s.push(d.job.id.clone());
                        first
                    };
                    // "b" fails its first attempt: left pending, reclaimed later.
                    if d.job.id == "b" && first_time {
                        return;
                    }
                    q.ack(&d).await.expect("ack");
                    // Done once a, b (twice) and c were seen: four handlings.
                    if seen.lock().expect("lock").len() == 4
                        && let Some(tx) = done_tx.lock().expect("lock").take()
                    {
                        let _ = tx.send(());
                    }
                }
            })
            .await;
        let mut s = seen.into_inner().expect("lock");
        s.sort();
        assert_eq!(s, ["a", "b", "b", "c"], "b retried once, nothing else twice");
    }

    #[tokio::test]
    async fn a_slow_delivery_does_not_hold_up_the_next_batch() {
        let q = queue_of(&["slow", "quick", "later"]).await;
        // "slow" (first batch) finishes only once "later" (the next batch)
        // has been handled: a consumer that waited for its whole batch
        // before receiving again would never get there.
        let later_done = tokio::sync::Notify::new();
        let handled = Mutex::new(Vec::new());
        let (done_tx, stop) = stopper();
        let reader = consumer();
        let run = reader.run(&q, stop, |d: Delivery<TestJob>| {
            let (q, handled, later_done, done_tx) = (&q, &handled, &later_done, &done_tx);
            async move {
                match d.job.id.as_str() {
                    "slow" => later_done.notified().await,
                    "later" => later_done.notify_one(),
                    _ => {}
                }
                q.ack(&d).await.expect("ack");
                let mut h = handled.lock().expect("lock");
                h.push(d.job.id.clone());
                if h.len() == 3
                    && let Some(tx) = done_tx.lock().expect("lock").take()
                {
                    let _ = tx.send(());
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the slow delivery waited for the next batch, which came");
        assert_eq!(*handled.lock().expect("lock"), ["quick", "later", "slow"]);
    }
}
