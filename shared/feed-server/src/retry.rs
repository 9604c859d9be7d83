//! Retries of idempotent internal calls, within a budget.
//!
//! A replica killed or restarting fails the calls it holds and the next
//! few the balancer still sends it (until its health probe takes it out,
//! 250 ms): for reads, asking again a moment later almost always reaches a
//! live replica. Unbounded retries are how a fleet amplifies an outage,
//! so retries draw on a budget (as Finagle's and Linkerd's): every first
//! attempt deposits a tenth of a retry, a trickle of ten per second keeps
//! a quiet client able to ride out one restart, and a retry takes one
//! whole token. When a peer is down for good, retries stay under 10 % of
//! the calls plus that trickle, instead of tripling the load.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::{Code, Status};

/// Retries a call may make after its first attempt.
const MAX_RETRIES: u32 = 2;
/// Upper bound of the first retry's delay (full jitter); doubled for the next.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// Tokens each first attempt deposits.
const RATIO: f64 = 0.1;
/// Tokens deposited per second regardless of traffic.
const PER_SECOND: f64 = 10.0;
/// Most tokens kept: one burst of retries, not a stock for a long outage.
const CAP: f64 = 50.0;

/// One peer's retry budget (clones of a client share it through an `Arc`).
#[derive(Debug)]
pub struct RetryBudget {
    peer: &'static str,
    state: Mutex<Tokens>,
}

#[derive(Debug)]
struct Tokens {
    left: f64,
    at: Instant,
}

impl RetryBudget {
    /// A budget for calls to `peer` (the metric's label), starting with a
    /// second's trickle.
    pub fn new(peer: &'static str) -> Self {
        Self {
            peer,
            state: Mutex::new(Tokens {
                left: PER_SECOND,
                at: Instant::now(),
            }),
        }
    }

    fn deposit(&self) {
        let mut t = self.state.lock().unwrap_or_else(|e| e.into_inner());
        t.left = (t.left + RATIO).min(CAP);
    }

    fn withdraw(&self) -> bool {
        let mut t = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        t.left = (t.left + PER_SECOND * now.duration_since(t.at).as_secs_f64()).min(CAP);
        t.at = now;
        if t.left >= 1.0 {
            t.left -= 1.0;
            true
        } else {
            false
        }
    }

    /// Runs `call`, and again (at most [`MAX_RETRIES`] times, after a short
    /// jittered pause) while it fails as [`worth_retrying`] says and the
    /// budget allows. Only for calls that may run twice with the effect of
    /// once: reads, and writes that are idempotent by key.
    pub async fn idempotent<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.deposit();
        let mut backoff = FIRST_BACKOFF;
        let mut retries = 0;
        loop {
            let status = match call().await {
                Ok(answer) => return Ok(answer),
                Err(status) => status,
            };
            if !worth_retrying(&status) || retries == MAX_RETRIES {
                return Err(status);
            }
            if !self.withdraw() {
                metrics::counter!("feed_client_retries_total", "peer" => self.peer, "result" => "over_budget")
                    .increment(1);
                return Err(status);
            }
            metrics::counter!("feed_client_retries_total", "peer" => self.peer, "result" => "retried").increment(1);
            retries += 1;
            let pause = backoff.mul_f64(rand::random::<f64>());
            tokio::time::sleep(pause).await;
            backoff *= 2;
        }
    }
}

/// UNAVAILABLE (a refused connection, or a peer whose own dependency is
/// down: another replica may answer), and a call the connection lost
/// under it (CANCELLED or UNKNOWN raised by the transport, not answered
/// by the peer: a connection closed as it opened, a process killed
/// mid-answer). Not a deadline that passed (also CANCELLED, "Timeout
/// expired"): the time is spent.
pub fn worth_retrying(status: &Status) -> bool {
    use std::error::Error as _;
    match status.code() {
        Code::Unavailable => true,
        Code::Cancelled | Code::Unknown => {
            let mut source = status.source();
            let lost = source.is_some();
            while let Some(err) = source {
                if err.is::<tonic::TimeoutExpired>() {
                    return false;
                }
                source = err.source();
            }
            lost
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn an_unavailable_call_is_asked_again_until_it_answers() {
        let budget = RetryBudget::new("peer");
        let calls = AtomicU32::new(0);
        let answer = budget
            .idempotent(|| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        Err(Status::unavailable("connection refused"))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(answer.expect("the third attempt answers"), 2);
    }

    #[tokio::test]
    async fn answers_from_the_peer_and_passed_deadlines_are_not_retried() {
        let budget = RetryBudget::new("peer");
        for code in [
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Internal,
        ] {
            let calls = AtomicU32::new(0);
            let status = budget
                .idempotent(|| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move { Err::<(), _>(Status::new(code, "no")) }
                })
                .await
                .expect_err("fails");
            assert_eq!(status.code(), code);
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{code:?} was retried");
        }
    }

    #[test]
    fn a_lost_connection_is_worth_retrying_but_a_passed_deadline_or_an_answer_is_not() {
        let lost = Status::from_error(Box::new(std::io::Error::other("connection closed")));
        assert_eq!(lost.code(), Code::Unknown);
        assert!(worth_retrying(&lost));
        let timeout = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(timeout.code(), Code::Cancelled);
        assert!(!worth_retrying(&timeout));
        assert!(!worth_retrying(&Status::cancelled("the peer cancelled")));
        assert!(!worth_retrying(&Status::unknown("the peer failed")));
        assert!(worth_retrying(&Status::unavailable("its Redis is down")));
    }

    #[tokio::test]
    async fn a_peer_that_stays_down_gets_at_most_three_attempts_per_call() {
        let budget = RetryBudget::new("peer");
        let calls = AtomicU32::new(0);
        let status = budget
            .idempotent(|| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(Status::unavailable("down")) }
            })
            .await
            .expect_err("down");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(calls.load(Ordering::SeqCst), 1 + MAX_RETRIES);
    }

    #[tokio::test]
    async fn retries_against_a_dead_peer_stay_within_a_tenth_of_the_calls_plus_the_trickle() {
        let budget = RetryBudget::new("peer");
        let attempts = AtomicU32::new(0);
        let started = Instant::now();
        let calls = 1_000u32;
        for _ in 0..calls {
            let _ = budget
                .idempotent(|| {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    async { Err::<(), _>(Status::unavailable("down")) }
                })
                .await;
        }
        let retries = f64::from(attempts.load(Ordering::SeqCst) - calls);
        // The starting second, the trickle over the run, a tenth of the calls.
        let allowed = PER_SECOND * (1.0 + started.elapsed().as_secs_f64()) + RATIO * f64::from(calls);
        assert!(retries <= allowed + 1.0, "{retries} retries, allowed {allowed}");
        assert!(
            retries >= f64::from(calls) * RATIO,
            "{retries} retries: the budget was not used"
        );
    }
}
