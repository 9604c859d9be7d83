//! The contract every [`JobQueue`] passes: each check runs as a test of its
//! own per backend (the macro at the end) on a fresh, empty queue.

use std::time::Duration;

use crate::JobQueue;

/// The message the contract sends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TestJob {
    /// Names the job in assertions.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Travels in the bulk lane.
    #[prost(bool, tag = "2")]
    pub bulk: bool,
}

impl crate::QueueMessage for TestJob {
    fn record_id(&self) -> &str {
        &self.id
    }

    fn bulk(&self) -> bool {
        self.bulk
    }
}

fn job(id: &str) -> TestJob {
    TestJob {
        id: id.into(),
        bulk: false,
    }
}

fn ids(d: &[crate::Delivery<TestJob>]) -> Vec<&str> {
    d.iter().map(|d| d.job.id.as_str()).collect()
}

const SHORT: Duration = Duration::from_millis(50);

/// Contract check: jobs are received in the order they were enqueued, each by one consumer once.
pub async fn jobs_are_received_in_order_and_once(q: &dyn JobQueue<TestJob>) {
    q.enqueue(&[job("a"), job("b"), job("c")]).await.expect("enqueue");
    let first = q.receive("w1", 2, SHORT).await.expect("receive");
    assert_eq!(ids(&first), ["a", "b"], "at most `max`, oldest first");
    let second = q.receive("w2", 10, SHORT).await.expect("receive");
    assert_eq!(ids(&second), ["c"], "another consumer gets only what is left");
    assert!(q.receive("w1", 10, SHORT).await.expect("receive").is_empty());
}

/// Contract check: a receive that is waiting gets a job enqueued meanwhile.
pub async fn a_waiting_receive_gets_a_job_enqueued_meanwhile(q: &dyn JobQueue<TestJob>) {
    let late = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        q.enqueue(&[job("late")]).await.expect("enqueue");
    };
    let (got, ()) = tokio::join!(q.receive("w1", 10, Duration::from_secs(5)), late);
    assert_eq!(ids(&got.expect("receive")), ["late"]);
}

/// Contract check: a job delivered and not acknowledged is taken over once idle; an acknowledged one never is.
pub async fn unacknowledged_jobs_are_reclaimed_once_idle(q: &dyn JobQueue<TestJob>) {
    q.enqueue(&[job("done"), job("held")]).await.expect("enqueue");
    let got = q.receive("w1", 10, SHORT).await.expect("receive");
    assert_eq!(ids(&got), ["done", "held"]);
    q.ack(&got[0]).await.expect("ack");
    assert!(
        q.reclaim("w2", Duration::from_secs(60), 10)
            .await
            .expect("reclaim")
            .is_empty(),
        "nothing is idle that long yet"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let taken = q.reclaim("w2", Duration::from_millis(50), 10).await.expect("reclaim");
    assert_eq!(ids(&taken), ["held"], "the dead worker's job, not the finished one");
    q.ack(&taken[0]).await.expect("ack");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        q.reclaim("w3", Duration::from_millis(50), 10)
            .await
            .expect("reclaim")
            .is_empty(),
        "acknowledged after the takeover: done for good"
    );
}

/// Contract check: a stalled job is taken over even behind more busy ones
/// than one reclaim takes (a backlog of retries waiting out their backoff
/// starved the deliveries after it).
pub async fn a_stalled_job_behind_many_busy_ones_is_reclaimed(q: &dyn JobQueue<TestJob>) {
    const IDLE: Duration = Duration::from_millis(1_000);
    let all: Vec<TestJob> = (0..400).map(|n| job(&format!("j{n:03}"))).collect();
    q.enqueue(&all).await.expect("enqueue");
    assert_eq!(q.receive("dead", 400, SHORT).await.expect("receive").len(), 400);
    tokio::time::sleep(IDLE + Duration::from_millis(100)).await;
    // The first half is taken over by a live worker and stays in its hands.
    let busy = q.reclaim("busy", IDLE, 200).await.expect("reclaim");
    assert_eq!(busy.len(), 200);
    let busy_ids: std::collections::HashSet<&str> = ids(&busy).into_iter().collect();
    // Well within IDLE of that takeover: the busy half is not idle, the rest is.
    let mut taken = Vec::new();
    for _ in 0..3 {
        taken.extend(q.reclaim("w2", IDLE, 16).await.expect("reclaim"));
        if !taken.is_empty() {
            break;
        }
    }
    assert!(!taken.is_empty(), "no stalled job reached behind 200 busy ones");
    assert!(
        ids(&taken).iter().all(|id| !busy_ids.contains(id)),
        "a busy job was taken: {:?}",
        ids(&taken)
    );
}

/// Contract check: trimming keeps every job not yet acknowledged.
pub async fn trim_keeps_pending_jobs(q: &dyn JobQueue<TestJob>) {
    q.enqueue(&[job("acked"), job("pending")]).await.expect("enqueue");
    let got = q.receive("w1", 10, SHORT).await.expect("receive");
    q.ack(&got[0]).await.expect("ack");
    q.enqueue(&[job("waiting")]).await.expect("enqueue");
    q.trim().await.expect("trim");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let taken = q.reclaim("w2", Duration::from_millis(50), 10).await.expect("reclaim");
    assert_eq!(ids(&taken), ["pending"]);
    let next = q.receive("w2", 10, SHORT).await.expect("receive");
    assert_eq!(ids(&next), ["waiting"], "undelivered jobs survive a trim");
}

/// Contract check: a dead-lettered job is accepted and no longer delivered once acknowledged.
pub async fn dead_lettered_jobs_leave_the_queue_when_acknowledged(q: &dyn JobQueue<TestJob>) {
    q.enqueue(&[job("poison")]).await.expect("enqueue");
    let got = q.receive("w1", 10, SHORT).await.expect("receive");
    q.dead_letter(&got[0].job, "kept failing").await.expect("dead letter");
    q.ack(&got[0]).await.expect("ack");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        q.reclaim("w2", Duration::from_millis(50), 10)
            .await
            .expect("reclaim")
            .is_empty()
    );
    assert!(q.receive("w2", 10, SHORT).await.expect("receive").is_empty());
}

/// Contract check: a record is held from its enqueue until its newest
/// message is acknowledged (dead-lettered or done), not before.
pub async fn a_record_is_held_until_its_newest_message_is_acknowledged(q: &dyn JobQueue<TestJob>) {
    let held = |ids: &'static [&'static str]| async move { q.held(ids).await.expect("held") };
    assert_eq!(held(&["a"]).await, [false], "an empty queue holds nothing");
    q.enqueue(&[job("a"), job("b"), job("a")]).await.expect("enqueue");
    assert_eq!(held(&["a", "b", "c"]).await, [true, true, false], "waiting");
    let got = q.receive("w1", 10, SHORT).await.expect("receive");
    assert_eq!(ids(&got), ["a", "b", "a"]);
    assert_eq!(held(&["a", "b"]).await, [true, true], "in a consumer's hands");
    q.ack(&got[0]).await.expect("ack");
    assert_eq!(
        held(&["a"]).await,
        [true],
        "the second message for `a` is not acknowledged"
    );
    q.dead_letter(&got[1].job, "kept failing").await.expect("dead letter");
    q.ack(&got[1]).await.expect("ack");
    q.ack(&got[2]).await.expect("ack");
    assert_eq!(held(&["a", "b"]).await, [false, false], "all acknowledged");
    let none: &[&str] = &[];
    assert!(q.held(none).await.expect("held").is_empty());
}

/// One test per check of this contract for a backend:
/// `job_queue_contract!(memory, make)` where `make(check_name)` returns a
/// `feed_testkit::Backend<dyn JobQueue<TestJob>>`.
#[macro_export]
macro_rules! job_queue_contract {
    ($backend:ident, $make:ident) => {
        feed_testkit::contract_tests!(
            $backend,
            $make,
            feed_queue::contract,
            [
                jobs_are_received_in_order_and_once,
                a_waiting_receive_gets_a_job_enqueued_meanwhile,
                unacknowledged_jobs_are_reclaimed_once_idle,
                a_stalled_job_behind_many_busy_ones_is_reclaimed,
                trim_keeps_pending_jobs,
                dead_lettered_jobs_leave_the_queue_when_acknowledged,
                a_record_is_held_until_its_newest_message_is_acknowledged,
            ]
        );
    };
}
