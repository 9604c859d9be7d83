//! Concurrent calls of one kind folded into batched calls.
//!
//! A home read asks follow-graph for one number (the reader's graph
//! version) and publish for one round; at 64 reads in flight that was 64
//! calls of each, each costing both processes a whole gRPC request. Here a
//! client has at most a few calls in flight (one for lookups): requests made
//! while they all are wait and go together in the next call ([`Batched`]);
//! lookups of keys also share the answer of a key asked twice
//! ([`Coalesced`]).
//!
//! Every answer comes from a call that started after it was asked, never
//! from one already under way, so a lookup sees every write that finished
//! before it began (read-your-writes holds as with a call each).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use feed_core::ApiError;
use tokio::sync::oneshot;

type Reply<A> = oneshot::Sender<Result<A, ApiError>>;

/// How many of the waiting requests (oldest first) the next call takes; at
/// least one is taken whatever it says.
type Take<Q> = dyn Fn(&mut dyn Iterator<Item = &Q>) -> usize + Send + Sync;

struct State<Q, A> {
    /// Driver tasks calling (or about to), each with one call in flight.
    running: usize,
    waiting: Vec<(Q, Reply<A>)>,
}

/// Folds concurrent [`Batched::call`]s into calls of as many requests as
/// its `take` allows, each answered on its own. Cheap to clone; clones
/// share the batches.
pub struct Batched<Q, A> {
    state: Arc<Mutex<State<Q, A>>>,
    take: Arc<Take<Q>>,
    in_flight: usize,
}

impl<Q, A> Clone for Batched<Q, A> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            take: self.take.clone(),
            in_flight: self.in_flight,
        }
    }
}

impl<Q, A> Batched<Q, A>
where
    Q: Send + 'static,
    A: Send + 'static,
{
    /// Batches of as many waiting requests as `take` counts (the peer's
    /// caps), at most `in_flight` calls at a time: requests wait only while
    /// that many are under way, and the calls spread over the peer's
    /// replicas and threads.
    pub fn new(in_flight: usize, take: impl Fn(&mut dyn Iterator<Item = &Q>) -> usize + Send + Sync + 'static) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                running: 0,
                waiting: Vec::new(),
            })),
            take: Arc::new(take),
            in_flight: in_flight.max(1),
        }
    }

    /// The answer to `request`. `fetch` answers a batch of requests with
    /// one result each, in order; when no call is under way it is the one
    /// that runs, for this request and those made while it runs.
    pub async fn call<F, Fut>(&self, request: Q, fetch: F) -> Result<A, ApiError>
    where
        F: Fn(Vec<Q>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Result<A, ApiError>>, ApiError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.waiting.push((request, tx));
            let start = state.running < self.in_flight;
            if start {
                state.running += 1;
            }
            start
        };
        if start {
            // A task of its own: a caller that gives up (its request
            // cancelled) must not strand the others' answers.
            tokio::spawn(drive(self.state.clone(), self.take.clone(), fetch));
        }
        rx.await
            .unwrap_or_else(|_| Err(ApiError::Internal("a batched call ended without an answer".into())))
    }
}

/// Folds concurrent [`Coalesced::get`] calls into batches of at most
/// `max_batch` distinct keys. Cheap to clone; clones share the batches.
pub struct Coalesced<K, V> {
    inner: Batched<K, V>,
}

impl<K, V> Clone for Coalesced<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> Coalesced<K, V>
where
    K: Ord + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
{
    /// Batches of at most `max_batch` distinct keys (the peer's cap), one
    /// call at a time.
    pub fn new(max_batch: usize) -> Self {
        let max_batch = max_batch.max(1);
        Self {
            inner: Batched::new(1, move |waiting| {
                // Distinct keys up to the cap; the rest wait for the next call.
                let mut keys = BTreeSet::new();
                let mut taken = 0;
                for key in waiting {
                    if !keys.contains(key) {
                        if keys.len() == max_batch {
                            break;
                        }
                        keys.insert(key);
                    }
                    taken += 1;
                }
                taken
            }),
        }
    }

    /// The value of `key`. `fetch` answers distinct sorted keys with their
    /// values in the same order; when no call is under way it is the one
    /// that runs, for this key and those asked while it runs.
    pub async fn get<F, Fut>(&self, key: K, fetch: F) -> Result<V, ApiError>
    where
        F: Fn(Vec<K>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<V>, ApiError>> + Send + 'static,
    {
        self.inner
            .call(key, move |asked: Vec<K>| {
                let mut keys = asked.clone();
                keys.sort();
                keys.dedup();
                let values = fetch(keys.clone());
                async move {
                    let values = values.await?;
                    if values.len() != keys.len() {
                        return Err(ApiError::Internal(format!(
                            "a batched lookup of {} keys answered {}",
                            keys.len(),
                            values.len()
                        )));
                    }
                    Ok(asked
                        .iter()
                        .map(|k| {
                            keys.binary_search(k)
                                .map(|i| values[i].clone())
                                .map_err(|_| ApiError::Internal("a batched key went missing".into()))
                        })
                        .collect())
                }
            })
            .await
    }
}

/// Ends the driver: if it unwinds and was the last, the waiting callers get
/// an error (their senders drop) instead of waiting on a driver that no
/// longer runs. A driver that returns normally disarms it first.
struct Stop<'a, Q, A> {
    state: &'a Mutex<State<Q, A>>,
    armed: bool,
}

impl<Q, A> Drop for Stop<'_, Q, A> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.running -= 1;
            if state.running == 0 {
                state.waiting.clear();
            }
        }
    }
}

async fn drive<Q, A, F, Fut>(state: Arc<Mutex<State<Q, A>>>, take: Arc<Take<Q>>, fetch: F)
where
    F: Fn(Vec<Q>) -> Fut,
    Fut: Future<Output = Result<Vec<Result<A, ApiError>>, ApiError>>,
{
    let mut stop = Stop {
        state: &state,
        armed: true,
    };
    loop {
        let (requests, replies): (Vec<Q>, Vec<Reply<A>>) = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if s.waiting.is_empty() {
                s.running -= 1;
                stop.armed = false;
                return;
            }
            let n = take(&mut s.waiting.iter().map(|(q, _)| q)).clamp(1, s.waiting.len());
            s.waiting.drain(..n).unzip()
        };
        let asked = requests.len();
        match fetch(requests).await {
            Ok(answers) if answers.len() == asked => {
                for (answer, reply) in answers.into_iter().zip(replies) {
                    // A caller that gave up no longer listens.
                    let _ = reply.send(answer);
                }
            }
            outcome => {
                let e = match outcome {
                    Err(e) => e,
                    Ok(answers) => ApiError::Internal(format!("a batch of {asked} answered {}", answers.len())),
                };
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    type Answer = std::pin::Pin<Box<dyn Future<Output = Result<Vec<u64>, ApiError>> + Send>>;

    /// A fetch that answers each key with key * 1000 + the call's number,
    /// recording each call's keys, and holding each call for `hold`.
    fn counting(calls: Arc<Mutex<Vec<Vec<u64>>>>, hold: Duration) -> impl Fn(Vec<u64>) -> Answer + Send + 'static {
        move |keys: Vec<u64>| {
            let calls = calls.clone();
            Box::pin(async move {
                let n = {
                    let mut c = calls.lock().unwrap();
                    c.push(keys.clone());
                    c.len() as u64
                };
                tokio::time::sleep(hold).await;
                Ok(keys.iter().map(|k| k * 1000 + n).collect())
            })
        }
    }

    #[tokio::test]
    async fn concurrent_lookups_share_calls_and_each_gets_its_own_value() {
        let c = Coalesced::<u64, u64>::new(100);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for key in 0..64u64 {
            let (c, calls) = (c.clone(), calls.clone());
            handles.push(tokio::spawn(async move {
                c.get(key % 20, counting(calls, Duration::from_millis(20))).await
            }));
        }
        for (key, h) in handles.into_iter().enumerate() {
            let v = h.await.unwrap().unwrap();
            assert_eq!(v / 1000, key as u64 % 20, "each lookup gets its own key's value");
        }
        let calls = calls.lock().unwrap();
        assert!(calls.len() < 10, "64 lookups took {} calls", calls.len());
        for keys in calls.iter() {
            assert!(
                keys.windows(2).all(|w| w[0] < w[1]),
                "keys are distinct and sorted: {keys:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_lookup_asked_during_a_call_is_answered_by_a_later_call() {
        let c = Coalesced::<u64, u64>::new(100);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let first = {
            let (c, calls) = (c.clone(), calls.clone());
            tokio::spawn(async move { c.get(1, counting(calls, Duration::from_millis(100))).await })
        };
        // The first call is under way; this key was asked after it began.
        while calls.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let second = c
            .get(1, counting(calls.clone(), Duration::from_millis(100)))
            .await
            .unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1001);
        assert_eq!(second, 1002, "answered by the call that started after it was asked");
    }

    #[tokio::test]
    async fn batches_hold_at_most_max_batch_distinct_keys() {
        let c = Coalesced::<u64, u64>::new(3);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let gate = {
            let (c, calls) = (c.clone(), calls.clone());
            tokio::spawn(async move { c.get(99, counting(calls, Duration::from_millis(50))).await })
        };
        while calls.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut handles = Vec::new();
        for key in [1u64, 2, 1, 3, 4, 5, 4] {
            let (c, calls) = (c.clone(), calls.clone());
            handles.push(tokio::spawn(async move {
                c.get(key, counting(calls, Duration::from_millis(1))).await
            }));
        }
        gate.await.unwrap().unwrap();
        for h in handles {
            h.await.unwrap().unwrap();
        }
        let calls = calls.lock().unwrap();
        assert!(calls.iter().all(|k| k.len() <= 3), "{calls:?}");
        assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 6, "99 then 1..5 once each");
    }

    #[tokio::test]
    async fn a_failed_call_fails_every_lookup_it_carried_and_the_next_call_runs() {
        let c = Coalesced::<u64, u64>::new(100);
        let failing = |_keys: Vec<u64>| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err::<Vec<u64>, _>(ApiError::Unavailable("follow-graph: down".into()))
        };
        let (a, b) = tokio::join!(c.get(1, failing), c.get(2, failing));
        assert_eq!(a, Err(ApiError::Unavailable("follow-graph: down".into())));
        assert_eq!(b, Err(ApiError::Unavailable("follow-graph: down".into())));
        let calls = Arc::new(Mutex::new(Vec::new()));
        assert_eq!(c.get(7, counting(calls, Duration::ZERO)).await, Ok(7001));
    }

    #[tokio::test]
    async fn a_fetch_that_panics_fails_its_lookups_and_does_not_wedge_the_next() {
        let c = Coalesced::<u64, u64>::new(100);
        let r = c
            .get(1, |_keys: Vec<u64>| async {
                panic!("fetch bug");
                #[allow(unreachable_code)]
                Ok(vec![])
            })
            .await;
        assert!(matches!(r, Err(ApiError::Internal(_))), "{r:?}");
        let calls = Arc::new(Mutex::new(Vec::new()));
        assert_eq!(c.get(2, counting(calls, Duration::ZERO)).await, Ok(2001));
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_strand_the_others() {
        let c = Coalesced::<u64, u64>::new(100);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let leader = c.get(1, counting(calls.clone(), Duration::from_millis(50)));
        // The first caller starts the call and is dropped mid-way.
        let _ = tokio::time::timeout(Duration::from_millis(5), leader).await;
        let v = c.get(2, counting(calls.clone(), Duration::from_millis(1))).await;
        assert_eq!(v.map(|v| v / 1000), Ok(2));
    }

    type Echo = std::pin::Pin<Box<dyn Future<Output = Result<Vec<Result<u64, ApiError>>, ApiError>> + Send>>;

    /// A batch fetch that answers each request with itself, recording each
    /// call's requests and holding each call for `hold`.
    fn echoing(calls: Arc<Mutex<Vec<Vec<u64>>>>, hold: Duration) -> impl Fn(Vec<u64>) -> Echo + Clone + Send + 'static {
        move |requests: Vec<u64>| {
            calls.lock().unwrap().push(requests.clone());
            Box::pin(async move {
                tokio::time::sleep(hold).await;
                Ok(requests.iter().map(|r| Ok(*r)).collect())
            })
        }
    }

    #[tokio::test]
    async fn each_request_of_a_batch_gets_its_own_answer_or_error() {
        let b = Batched::<u64, u64>::new(1, |waiting| waiting.count());
        let calls = Arc::new(Mutex::new(0usize));
        let fetch = {
            let calls = calls.clone();
            move |requests: Vec<u64>| {
                *calls.lock().unwrap() += 1;
                async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok(requests
                        .iter()
                        .map(|r| {
                            if r.is_multiple_of(2) {
                                Ok(r * 10)
                            } else {
                                Err(ApiError::NotFound(format!("{r}")))
                            }
                        })
                        .collect())
                }
            }
        };
        let answers = futures::future::join_all((0..20u64).map(|r| b.call(r, fetch.clone()))).await;
        for (r, a) in answers.into_iter().enumerate() {
            let r = r as u64;
            if r.is_multiple_of(2) {
                assert_eq!(a, Ok(r * 10));
            } else {
                assert_eq!(
                    a,
                    Err(ApiError::NotFound(format!("{r}"))),
                    "an error answers its own request only"
                );
            }
        }
        assert!(
            *calls.lock().unwrap() < 20,
            "20 requests, {} calls",
            calls.lock().unwrap()
        );
    }

    #[tokio::test]
    async fn a_batch_takes_only_what_its_take_allows_and_at_least_one() {
        // Requests weigh their value; a call carries at most 5 in all.
        let b = Batched::<u64, u64>::new(1, |waiting| {
            let mut sum = 0;
            waiting
                .take_while(|w| {
                    sum += **w;
                    sum <= 5
                })
                .count()
        });
        let calls = Arc::new(Mutex::new(Vec::new()));
        let fetch = echoing(calls.clone(), Duration::from_millis(20));
        let gate = {
            let (b, fetch) = (b.clone(), fetch.clone());
            tokio::spawn(async move { b.call(1, fetch).await })
        };
        while calls.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let queued = futures::future::join_all([3u64, 3, 1, 9].map(|w| b.call(w, fetch.clone())));
        assert_eq!(queued.await, vec![Ok(3), Ok(3), Ok(1), Ok(9)]);
        gate.await.unwrap().unwrap();
        assert_eq!(*calls.lock().unwrap(), vec![vec![1], vec![3], vec![3, 1], vec![9]]);
    }

    #[tokio::test]
    async fn requests_wait_only_while_every_allowed_call_is_in_flight() {
        let b = Batched::<u64, u64>::new(2, |waiting| waiting.count());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let fetch = echoing(calls.clone(), Duration::from_millis(30));
        let started = |n: usize| {
            let calls = calls.clone();
            async move {
                while calls.lock().unwrap().len() < n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        let first = tokio::spawn({
            let (b, f) = (b.clone(), fetch.clone());
            async move { b.call(1, f).await }
        });
        started(1).await;
        let second = tokio::spawn({
            let (b, f) = (b.clone(), fetch.clone());
            async move { b.call(2, f).await }
        });
        started(2).await;
        // Both calls under way: these wait and go together.
        let rest = futures::future::join_all([3u64, 4, 5].map(|r| b.call(r, fetch.clone()))).await;
        assert_eq!(rest, vec![Ok(3), Ok(4), Ok(5)]);
        assert_eq!((first.await.unwrap(), second.await.unwrap()), (Ok(1), Ok(2)));
        assert_eq!(*calls.lock().unwrap(), vec![vec![1], vec![2], vec![3, 4, 5]]);
    }
}
