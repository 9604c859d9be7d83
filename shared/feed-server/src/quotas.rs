//! Per-user rate limits of bff callers: a token bucket per (token, user)
//! and class of call. A call past its bucket is RESOURCE_EXHAUSTED with a
//! `google.rpc.RetryInfo` in the status details saying when to retry.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use feed_core::UserId;
use prost::Message;
use tonic::{Code, Status};

use crate::config::QuotaConfig;

/// What a call costs against: reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// `Get*`, `List*`, `Read*`, `Stream*`, `Watch`.
    Read,
    /// Every other RPC.
    Write,
}

impl Class {
    /// The class of the RPC at `path` (`/package.Service/Method`).
    pub fn of_path(path: &str) -> Self {
        let method = path.rsplit('/').next().unwrap_or("");
        if ["Get", "List", "Read", "Stream", "Watch"]
            .iter()
            .any(|p| method.starts_with(p))
        {
            Class::Read
        } else {
            Class::Write
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before full ones are dropped (a full bucket is the same as
/// none): memory stays bounded however many keys call.
const MAX_BUCKETS: usize = 100_000;

/// Token buckets by key, each holding up to `burst` and refilled at `rate`
/// per second: the quotas below, and publish's fanout budget per actor.
#[derive(Debug)]
pub struct TokenBuckets<K> {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq> TokenBuckets<K> {
    /// Buckets of `burst` (at least 1) refilled at `rate` per second; a
    /// rate of 0 or less lets everything through.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `cost` from `key`'s bucket at `now`; when it holds less,
    /// takes nothing and answers how long until it holds `cost`.
    pub fn take(&self, key: K, cost: f64, now: Instant) -> Result<(), Duration> {
        let (rate, burst) = (self.rate, self.burst);
        if rate <= 0.0 {
            return Ok(());
        }
        let refilled = |b: &Bucket| (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| refilled(b) < burst);
        }
        let b = buckets.entry(key).or_insert(Bucket { tokens: burst, at: now });
        b.tokens = refilled(b);
        b.at = now;
        if b.tokens >= cost {
            b.tokens -= cost;
            return Ok(());
        }
        Err(Duration::from_secs_f64((cost - b.tokens) / rate))
    }
}

/// Whose bucket within a class: the token's digest and the user.
type BucketKey = ([u8; 32], UserId);

/// The buckets of one process.
#[derive(Debug)]
pub struct Quotas {
    reads: TokenBuckets<BucketKey>,
    writes: TokenBuckets<BucketKey>,
}

impl Quotas {
    /// Limits from configuration.
    pub fn new(cfg: &QuotaConfig) -> Self {
        Self {
            reads: TokenBuckets::new(cfg.reads_per_sec, cfg.read_burst),
            writes: TokenBuckets::new(cfg.writes_per_sec, cfg.write_burst),
        }
    }

    /// Takes one call of `class` from the bucket of (`token`, `user`) at
    /// `now`; when it is empty, how long until it holds one again.
    pub fn take(&self, token: [u8; 32], user: UserId, class: Class, now: Instant) -> Result<(), Duration> {
        let buckets = match class {
            Class::Read => &self.reads,
            Class::Write => &self.writes,
        };
        buckets.take((token, user), 1.0, now)
    }
}

/// `google.rpc.Status`, the body of gRPC's `grpc-status-details-bin`.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, Message)]
pub struct RetryInfo {
    /// When to retry.
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<prost_types::Duration>,
}

/// The `type_url` of [`RetryInfo`] in status details.
pub const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// RESOURCE_EXHAUSTED for a call past its bucket, retry after `wait`.
pub fn exhausted(class: Class, wait: Duration) -> Status {
    let what = match class {
        Class::Read => "reads",
        Class::Write => "writes",
    };
    let message = format!(
        "rate limit: this user's {what} are over quota; retry after {} ms",
        wait.as_millis().max(1)
    );
    with_retry_info(message, wait)
}

/// RESOURCE_EXHAUSTED for a caller holding `max` calls in flight on this
/// replica (its share of the concurrency limit): retry shortly, or elsewhere.
pub fn crowded(max: usize) -> Status {
    let wait = Duration::from_millis(50);
    with_retry_info(
        format!(
            "this caller has {max} calls in flight on this replica (its share of server.concurrency_limit); retry after {} ms",
            wait.as_millis()
        ),
        wait,
    )
}

fn with_retry_info(message: String, wait: Duration) -> Status {
    let retry = RetryInfo {
        retry_delay: Some(prost_types::Duration {
            seconds: wait.as_secs() as i64,
            nanos: wait.subsec_nanos() as i32,
        }),
    };
    let details = RpcStatus {
        code: Code::ResourceExhausted as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: RETRY_INFO_TYPE.into(),
            value: retry.encode_to_vec(),
        }],
    };
    Status::with_details(Code::ResourceExhausted, message, details.encode_to_vec().into())
}

/// The [`RetryInfo`] delay in a status's details, if any (for clients and tests).
pub fn retry_delay(status: &Status) -> Option<Duration> {
    let details = RpcStatus::decode(status.details()).ok()?;
    let any = details.details.iter().find(|d| d.type_url == RETRY_INFO_TYPE)?;
    let d = RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay?;
    Some(Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas() -> Quotas {
        Quotas::new(&QuotaConfig {
            reads_per_sec: 2.0,
            read_burst: 3.0,
            writes_per_sec: 0.0,
            write_burst: 1.0,
        })
    }

    #[test]
    fn a_user_gets_the_burst_then_the_rate_and_others_their_own_buckets() {
        let q = quotas();
        let t0 = Instant::now();
        let me = ([1; 32], 7);
        for _ in 0..3 {
            q.take(me.0, me.1, Class::Read, t0).expect("within the burst");
        }
        let wait = q.take(me.0, me.1, Class::Read, t0).expect_err("past the burst");
        assert!((wait.as_secs_f64() - 0.5).abs() < 0.01, "{wait:?}");
        q.take(me.0, 8, Class::Read, t0).expect("another user's bucket");
        q.take([2; 32], me.1, Class::Read, t0).expect("another token's bucket");
        q.take(me.0, me.1, Class::Write, t0)
            .expect("a rate of 0: writes are not limited");
        q.take(me.0, me.1, Class::Read, t0 + Duration::from_millis(500))
            .expect("refilled at the rate");
        assert!(
            q.take(me.0, me.1, Class::Read, t0 + Duration::from_millis(500))
                .is_err()
        );
    }

    #[test]
    fn methods_are_classed_by_their_names() {
        for read in [
            "/feed.x.v1.S/GetTimeline",
            "/a.B/ListFollowers",
            "/a.B/Watch",
            "/a.B/ReadHome",
            "/a.B/StreamFollowers",
        ] {
            assert_eq!(Class::of_path(read), Class::Read, "{read}");
        }
        for write in ["/a.B/Follow", "/a.B/Publish", "/a.B/MarkRead", "/a.B/Subscribe"] {
            assert_eq!(Class::of_path(write), Class::Write, "{write}");
        }
    }

    #[test]
    fn an_exhausted_answer_carries_its_retry_delay_in_the_details() {
        let s = exhausted(Class::Write, Duration::from_millis(1500));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(retry_delay(&s), Some(Duration::from_millis(1500)));
        assert!(s.message().contains("retry after 1500 ms"), "{}", s.message());
    }
}
