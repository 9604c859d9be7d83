//! Fanout cost charged to the actor: each actor has a budget of fanout
//! units per minute. A publish costs one unit per pushed feed plus one per
//! 1,000 of that feed's followers (a page of inbox writes; pulled feeds cost
//! nothing), an update's re-fanout or a delete's purge one per job, and
//! each follow, block or mute change (and its lifting) one. Within the
//! budget an actor's jobs travel in the fast lane; past it, in the bulk lane
//! (`feed_queue::Lanes`), so a burst from one actor (a publish to many large
//! tags, a loop of follow toggles) waits behind everyone else's work
//! instead of in front of it. Nothing is refused: the bulk lane still moves
//! (one receive in `fanout.bulk_share`, all of them when the fast lane is
//! idle).
//!
//! With Redis configured, the budget is shared by every publish replica:
//! each actor's bucket is a Redis hash charged by one script, on Redis's
//! clock, so a burst spread over N replicas gets one budget, not N. While
//! Redis does not answer, each replica charges a bucket of its own (the
//! jobs would not reach a stream then anyway; the sweeper re-drives them).

use std::time::Instant;

use feed_core::UserId;
use feed_proto::events::v1::{Job, job};
use feed_server::quotas::TokenBuckets;

use crate::graph::Reach;

/// Followers per unit of a publish's cost: a page of inbox writes.
const FOLLOWERS_PER_UNIT: u64 = 1000;

/// What a publish to feeds of `reach` costs: one unit per pushed feed and
/// one per [`FOLLOWERS_PER_UNIT`] of its followers.
pub fn fanout_cost(reach: &[Reach]) -> usize {
    reach
        .iter()
        .filter(|r| !r.celebrity)
        .map(|r| 1 + (r.followers / FOLLOWERS_PER_UNIT) as usize)
        .sum()
}

/// One unit per job that is not an event (re-fanouts and purges).
pub fn job_cost(jobs: &[Job]) -> usize {
    jobs.iter()
        .filter(|j| !matches!(j.kind, Some(job::Kind::Event(_))))
        .count()
}

/// KEYS: the actor's bucket. ARGV: burst (units), refill (units per ms),
/// cost. 1 when charged; 0 when the bucket holds less (nothing taken).
/// Redis's clock, not the callers': replicas' clocks differ.
const CHARGE: &str = r"
local burst, rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local charged = tokens >= cost
if charged then
  tokens = tokens - cost
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
-- A bucket untouched this long is full again: the same as no bucket.
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate))
if charged then
  return 1
end
return 0
";

/// Per-actor token buckets of fanout units.
pub struct FanoutBudget {
    per_minute: u32,
    /// This replica's buckets: the budget without Redis, or while it is away.
    local: TokenBuckets<UserId>,
    /// The buckets every replica shares, and the script that charges them
    /// (hashed once, not on every publish).
    shared: Option<(feed_redis::Redis, redis::Script)>,
}

impl std::fmt::Debug for FanoutBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanoutBudget")
            .field("per_minute", &self.per_minute)
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

/// The Redis key of `actor`'s bucket (its own hash slot).
fn bucket_key(actor: UserId) -> String {
    format!("feed:budget:{{{actor}}}")
}

impl FanoutBudget {
    /// `per_minute` units per actor, a minute's worth at once, held by
    /// this replica; 0 turns the budget off (a rate of 0 lets everything
    /// through).
    pub fn new(per_minute: u32) -> Self {
        let rate = f64::from(per_minute);
        Self {
            per_minute,
            local: TokenBuckets::new(rate / 60.0, rate),
            shared: None,
        }
    }

    /// The same budget, held in `redis` for every replica that uses it.
    pub fn shared(per_minute: u32, redis: feed_redis::Redis) -> Self {
        Self {
            shared: Some((redis, redis::Script::new(CHARGE))),
            ..Self::new(per_minute)
        }
    }

    /// Charges `cost` units to `actor` (`now` for this replica's own
    /// buckets): true when their budget covers it (charged), false when
    /// they are past it (not charged, so an actor who stops recovers at
    /// the budget's rate).
    pub async fn charge(&self, actor: UserId, cost: usize, now: Instant) -> bool {
        if cost == 0 || self.per_minute == 0 {
            return true;
        }
        if let Some((redis, script)) = &self.shared {
            let burst = f64::from(self.per_minute);
            let mut conn = redis.clone();
            let charged: redis::RedisResult<i64> = script
                .key(bucket_key(actor))
                .arg(burst)
                .arg(burst / 60_000.0)
                .arg(cost)
                .invoke_async(&mut conn)
                .await;
            match charged {
                Ok(c) => return c == 1,
                Err(e) => {
                    metrics::counter!("feed_fanout_budget_local_total").increment(1);
                    tracing::debug!(error = %e, "shared fanout budget unavailable; charging this replica's");
                }
            }
        }
        self.local.take(actor, cost as f64, now).is_ok()
    }

    /// Charges `actor` `cost` units for `jobs` and puts them all in the
    /// bulk lane when the budget does not cover it (an activity's event
    /// job travels with its fanout, so a burst's notifications wait with it).
    pub async fn route(&self, actor: UserId, cost: usize, jobs: &mut [Job], now: Instant) {
        if !self.charge(actor, cost, now).await {
            metrics::counter!("feed_fanout_bulk_jobs_total").increment(jobs.len() as u64);
            for j in jobs {
                j.bulk = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn an_actor_past_their_budget_goes_to_the_bulk_lane_and_recovers_at_its_rate() {
        let budget = FanoutBudget::new(60);
        let t0 = Instant::now();
        assert!(budget.charge(1, 40, t0).await);
        assert!(budget.charge(1, 20, t0).await, "a minute's worth at once");
        assert!(!budget.charge(1, 1, t0).await, "past the budget");
        assert!(budget.charge(2, 17, t0).await, "another actor has their own budget");
        assert!(
            !budget.charge(1, 2, t0 + Duration::from_secs(1)).await,
            "one job back per second"
        );
        assert!(budget.charge(1, 2, t0 + Duration::from_secs(2)).await);
        assert!(FanoutBudget::new(0).charge(1, 1_000_000, t0).await, "0 turns it off");
    }

    #[test]
    fn a_publish_costs_a_unit_per_pushed_feed_and_per_thousand_followers() {
        let feed = |celebrity, followers| Reach { celebrity, followers };
        let sixteen_small_tags: Vec<Reach> = (0..17).map(|_| feed(false, 10)).collect();
        assert_eq!(fanout_cost(&sixteen_small_tags), 17);
        assert_eq!(
            fanout_cost(&[feed(false, 25_000)]),
            26,
            "a page of inbox writes per unit"
        );
        assert_eq!(fanout_cost(&[feed(true, 5_000_000)]), 0, "a pulled feed pushes nothing");
    }

    #[tokio::test]
    async fn jobs_past_the_budget_all_take_the_bulk_lane_with_their_event() {
        let budget = FanoutBudget::new(10);
        let job = |kind| Job {
            kind: Some(kind),
            ..Job::default()
        };
        let fanout = || job(job::Kind::Fanout(feed_proto::events::v1::FanoutJob::default()));
        let mut burst: Vec<Job> = (0..17).map(|_| fanout()).collect();
        burst.push(job(job::Kind::Event(Default::default())));
        assert_eq!(job_cost(&burst), 17, "the event job costs nothing");
        budget.route(1, 17, &mut burst, Instant::now()).await;
        assert!(burst.iter().all(|j| j.bulk), "17 units exceed a budget of 10");
        let mut one = vec![fanout(), job(job::Kind::Event(Default::default()))];
        budget.route(1, 1, &mut one, Instant::now()).await;
        assert!(one.iter().all(|j| !j.bulk), "not charged for the refused burst");
    }
}
