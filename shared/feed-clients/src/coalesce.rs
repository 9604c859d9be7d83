//! Concurrent lookups of one kind folded into batched calls.
//!
//! A home read asks follow-graph for one number (the reader's graph
//! version); at 64 reads in flight that was 64 calls, each costing both
//! processes a whole gRPC request. Here at most one call is in flight per
//! client: keys asked meanwhile wait and go together in the next call.
//!
//! Every answer comes from a call that started after its key was asked,
//! never from one already under way, so a lookup sees every write that
//! finished before it began (read-your-writes holds as with a call each).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use feed_core::ApiError;
use tokio::sync::oneshot;

type Reply<V> = oneshot::Sender<Result<V, ApiError>>;

struct State<K, V> {
    /// A driver task is calling (or about to).
    running: bool,
    waiting: Vec<(K, Reply<V>)>,
}

/// Folds concurrent [`Coalesced::get`] calls into batches of at most
/// `max_batch` distinct keys. Cheap to clone; clones share the batches.
pub struct Coalesced<K, V> {
    state: Arc<Mutex<State<K, V>>>,
    max_batch: usize,
}

impl<K, V> Clone for Coalesced<K, V> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            max_batch: self.max_batch,
        }
    }
}

impl<K, V> Coalesced<K, V>
where
    K: Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// Batches of at most `max_batch` distinct keys (the peer's cap).
    pub fn new(max_batch: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                running: false,
                waiting: Vec::new(),
            })),
            max_batch: max_batch.max(1),
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
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.waiting.push((key, tx));
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            // A task of its own: a caller that gives up (its request
            // cancelled) must not strand the others' answers.
            tokio::spawn(drive(self.state.clone(), self.max_batch, fetch));
        }
        rx.await
            .unwrap_or_else(|_| Err(ApiError::Internal("a batched lookup ended without an answer".into())))
    }
}

/// Ends the driver: if it unwinds, the waiting callers get an error (their
/// senders drop) instead of waiting on a driver that no longer runs.
/// A driver that returns normally disarms it first: by then another driver
/// may already own the state.
struct Stop<'a, K, V> {
    state: &'a Mutex<State<K, V>>,
    armed: bool,
}

impl<K, V> Drop for Stop<'_, K, V> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.running = false;
            state.waiting.clear();
        }
    }
}

async fn drive<K, V, F, Fut>(state: Arc<Mutex<State<K, V>>>, max_batch: usize, fetch: F)
where
    K: Ord + Clone,
    V: Clone,
    F: Fn(Vec<K>) -> Fut,
    Fut: Future<Output = Result<Vec<V>, ApiError>>,
{
    let mut stop = Stop {
        state: &state,
        armed: true,
    };
    loop {
        let batch: Vec<(K, Reply<V>)> = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if s.waiting.is_empty() {
                s.running = false;
                stop.armed = false;
                return;
            }
            // Distinct keys up to the cap; the rest wait for the next call.
            let mut keys = BTreeMap::new();
            let mut taken = 0;
            for (key, _) in &s.waiting {
                if !keys.contains_key(key) {
                    if keys.len() == max_batch {
                        break;
                    }
                    keys.insert(key.clone(), ());
                }
                taken += 1;
            }
            s.waiting.drain(..taken).collect()
        };
        let mut keys: Vec<K> = batch.iter().map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys.dedup();
        let answer = fetch(keys.clone()).await.and_then(|values| {
            if values.len() == keys.len() {
                Ok(values)
            } else {
                Err(ApiError::Internal(format!(
                    "a batched lookup of {} keys answered {}",
                    keys.len(),
                    values.len()
                )))
            }
        });
        for (key, reply) in batch {
            let value = match &answer {
                Ok(values) => keys
                    .binary_search(&key)
                    .map(|i| values[i].clone())
                    .map_err(|_| ApiError::Internal("a batched key went missing".into())),
                Err(e) => Err(e.clone()),
            };
            // A caller that gave up no longer listens.
            let _ = reply.send(value);
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
}
