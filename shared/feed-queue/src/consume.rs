//! The one loop every queue consumer runs (fanout workers, notify's event
//! consumer and remind worker): stalled deliveries first, then new ones,
//! each batch handled with bounded concurrency, until told to stop.

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
    /// pending to be reclaimed and retried. A batch in hand is finished
    /// before the loop looks at `stop` again.
    pub async fn run<M, F, Fut>(&self, queue: &dyn JobQueue<M>, stop: impl Future<Output = ()>, handle: F)
    where
        M: QueueMessage,
        F: Fn(Delivery<M>) -> Fut,
        Fut: Future<Output = ()>,
    {
        tokio::pin!(stop);
        loop {
            let batch = tokio::select! {
                biased;
                _ = &mut stop => return,
                batch = self.next_batch(queue) => batch,
            };
            futures::StreamExt::for_each_concurrent(futures::stream::iter(batch), self.concurrency.max(1), &handle)
                .await;
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

    #[tokio::test]
    async fn a_delivery_left_unsettled_is_handled_again_and_every_job_once_settled() {
        let q = MemoryQueue::<TestJob>::default();
        let jobs: Vec<TestJob> = ["a", "b", "c"]
            .iter()
            .map(|id| TestJob {
                id: (*id).into(),
                bulk: false,
            })
            .collect();
        q.enqueue(&jobs).await.expect("enqueue");
        let seen = Mutex::new(Vec::new());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let done_tx = Mutex::new(Some(done_tx));
        let stop = async {
            let _ = done_rx.await;
        };
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
}
