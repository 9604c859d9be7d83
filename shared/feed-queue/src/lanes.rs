//! Two lanes over one kind of message: the fast lane, and the bulk lane
//! where a message goes when it says so ([`QueueMessage::bulk`]: fanout
//! jobs of an actor past their fanout budget). A burst in the bulk lane
//! does not delay the fast lane: a consumer takes the fast lane first in
//! all but one receive of every `share`, and in that one takes the bulk
//! lane first, so the bulk lane always moves too, and takes it alone once
//! the fast lane is idle; a receive from the bulk lane takes `1 / share` of
//! the batch, so a consumer holding a batch of the burst comes back to the
//! fast lane soon. One FIFO would make everyone wait behind the burst.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::{Delivery, JobQueue, QueueError, QueueMessage};

/// A fast and a bulk lane behind one [`JobQueue`].
pub struct Lanes<M: QueueMessage> {
    fast: Arc<dyn JobQueue<M>>,
    bulk: Arc<dyn JobQueue<M>>,
    share: usize,
    turn: AtomicUsize,
}

impl<M: QueueMessage> Lanes<M> {
    /// Lanes over two queues; one receive in `share` (at least 2) takes
    /// the bulk lane first.
    pub fn new(fast: Arc<dyn JobQueue<M>>, bulk: Arc<dyn JobQueue<M>>, share: usize) -> Self {
        Self {
            fast,
            bulk,
            share: share.max(2),
            turn: AtomicUsize::new(0),
        }
    }

    fn lane(&self, job: &M) -> &dyn JobQueue<M> {
        if job.bulk() {
            self.bulk.as_ref()
        } else {
            self.fast.as_ref()
        }
    }
}

#[async_trait]
impl<M: QueueMessage> JobQueue<M> for Lanes<M> {
    async fn enqueue(&self, jobs: &[M]) -> Result<(), QueueError> {
        let (bulk, fast): (Vec<M>, Vec<M>) = jobs.iter().cloned().partition(|j| j.bulk());
        if !fast.is_empty() {
            self.fast.enqueue(&fast).await?;
        }
        if !bulk.is_empty() {
            self.bulk.enqueue(&bulk).await?;
        }
        Ok(())
    }

    async fn receive(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Delivery<M>>, QueueError> {
        let bulk_first = self.turn.fetch_add(1, Ordering::Relaxed).is_multiple_of(self.share);
        let (first, second) = if bulk_first {
            (&self.bulk, &self.fast)
        } else {
            (&self.fast, &self.bulk)
        };
        // A batch is finished before its consumer receives again: bulk
        // batches are kept small, so a consumer busy with the burst comes
        // back to the fast lane soon.
        let bulk_max = (max / self.share).max(1);
        for lane in [first, second] {
            let n = if Arc::ptr_eq(lane, &self.bulk) { bulk_max } else { max };
            let got = lane.receive(consumer, n, Duration::ZERO).await?;
            if !got.is_empty() {
                return Ok(got);
            }
        }
        // Both idle: wait where the burst is not. A bulk message enqueued
        // meanwhile waits at most `wait` (the next receive looks again).
        self.fast.receive(consumer, max, wait).await
    }

    async fn ack(&self, delivery: &Delivery<M>) -> Result<(), QueueError> {
        self.lane(&delivery.job).ack(delivery).await
    }

    async fn reclaim(&self, consumer: &str, min_idle: Duration, max: usize) -> Result<Vec<Delivery<M>>, QueueError> {
        let mut got = self.fast.reclaim(consumer, min_idle, max).await?;
        if got.len() < max {
            got.extend(self.bulk.reclaim(consumer, min_idle, max - got.len()).await?);
        }
        Ok(got)
    }

    async fn trim(&self) -> Result<(), QueueError> {
        self.fast.trim().await?;
        self.bulk.trim().await
    }

    async fn held(&self, record_ids: &[&str]) -> Result<Vec<bool>, QueueError> {
        let fast = self.fast.held(record_ids).await?;
        let bulk = self.bulk.held(record_ids).await?;
        Ok(fast.into_iter().zip(bulk).map(|(a, b)| a || b).collect())
    }

    /// One dead-letter stream for both lanes (the fast lane's): operators'
    /// tooling reads one place.
    async fn dead_letter(&self, job: &M, error: &str) -> Result<(), QueueError> {
        self.fast.dead_letter(job, error).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryQueue;
    use crate::contract::TestJob;

    fn lanes(share: usize) -> Lanes<TestJob> {
        Lanes::new(
            Arc::new(MemoryQueue::<TestJob>::default()),
            Arc::new(MemoryQueue::<TestJob>::default()),
            share,
        )
    }

    fn job(id: &str, bulk: bool) -> TestJob {
        TestJob { id: id.into(), bulk }
    }

    /// Receives one at a time until both lanes are empty, acknowledging each.
    async fn drain(q: &Lanes<TestJob>) -> Vec<String> {
        let mut order = Vec::new();
        loop {
            let got = q.receive("w", 1, Duration::ZERO).await.expect("receive");
            if got.is_empty() {
                return order;
            }
            for d in got {
                q.ack(&d).await.expect("ack");
                order.push(d.job.id);
            }
        }
    }

    #[tokio::test]
    async fn a_burst_in_the_bulk_lane_does_not_delay_the_fast_lane_and_still_moves() {
        let q = lanes(4);
        let burst: Vec<TestJob> = (0..100).map(|i| job(&format!("burst-{i}"), true)).collect();
        q.enqueue(&burst).await.expect("enqueue");
        q.enqueue(&[job("ordinary-1", false), job("ordinary-2", false)])
            .await
            .expect("enqueue");
        let order = drain(&q).await;
        assert_eq!(order.len(), 102, "everything delivered once");
        let at = |id: &str| order.iter().position(|o| o == id).expect("delivered");
        assert!(
            at("ordinary-2") < 4,
            "the ordinary jobs came before the burst's fourth: {:?}",
            &order[..6]
        );
        assert_eq!(order[0], "burst-0", "the first receive is the bulk lane's turn");
        let burst_order: Vec<&String> = order.iter().filter(|o| o.starts_with("burst")).collect();
        assert!(burst_order.windows(2).all(|w| {
            let n = |s: &str| s.trim_start_matches("burst-").parse::<u32>().expect("n");
            n(w[0]) < n(w[1])
        }));
    }

    #[tokio::test]
    async fn the_bulk_lane_gets_one_receive_in_share_while_the_fast_lane_is_busy() {
        let q = lanes(4);
        q.enqueue(&(0..40).map(|i| job(&format!("f{i}"), false)).collect::<Vec<_>>())
            .await
            .expect("enqueue");
        q.enqueue(&(0..40).map(|i| job(&format!("b{i}"), true)).collect::<Vec<_>>())
            .await
            .expect("enqueue");
        let order = drain(&q).await;
        let bulk_in_first_40 = order[..40].iter().filter(|o| o.starts_with('b')).count();
        assert_eq!(
            bulk_in_first_40, 10,
            "one in four while both lanes hold work: {order:?}"
        );
    }

    #[tokio::test]
    async fn acks_reclaims_and_holds_reach_the_lane_that_carries_the_job() {
        let q = lanes(2);
        q.enqueue(&[job("fast", false), job("slow", true)])
            .await
            .expect("enqueue");
        assert_eq!(
            q.held(&["fast", "slow", "none"]).await.expect("held"),
            [true, true, false]
        );
        let mut got = q.receive("w1", 10, Duration::ZERO).await.expect("receive");
        got.extend(q.receive("w1", 10, Duration::ZERO).await.expect("receive"));
        assert_eq!(got.len(), 2);
        // Neither acknowledged: both are taken over once idle.
        let stalled = q.reclaim("w2", Duration::ZERO, 10).await.expect("reclaim");
        let mut ids: Vec<&str> = stalled.iter().map(|d| d.job.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["fast", "slow"]);
        for d in &stalled {
            q.ack(d).await.expect("ack");
        }
        assert_eq!(q.held(&["fast", "slow"]).await.expect("held"), [false, false]);
    }
}
