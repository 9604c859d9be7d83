//! Fanout cost charged to the actor: each actor has a budget of fanout
//! jobs per minute (root fanout and purge jobs of their activities, edge
//! jobs of their follows, blocks and mutes). Within it their jobs travel in
//! the fast lane; past it, in the bulk lane (`feed_queue::Lanes`), so a
//! burst from one actor (a publish to many large tags, a loop of follow
//! toggles) waits behind everyone else's work instead of in front of it.
//! Nothing is refused: the bulk lane still moves (one receive in
//! `fanout.bulk_share`, all of them when the fast lane is idle).
//!
//! The budget is per publish replica (each holds its own buckets): with N
//! replicas an actor spreading a burst over all of them gets up to N
//! budgets in the fast lane.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use feed_core::UserId;
use feed_proto::events::v1::{Job, job};

/// Buckets kept before full ones are dropped (a full bucket is the same as
/// none): memory stays bounded however many actors publish.
const MAX_BUCKETS: usize = 100_000;

/// Per-actor token buckets of fanout jobs.
#[derive(Debug)]
pub struct FanoutBudget {
    /// Jobs per minute; 0 turns the budget off (every job fast).
    per_minute: f64,
    buckets: Mutex<HashMap<UserId, (f64, Instant)>>,
}

impl FanoutBudget {
    /// `per_minute` jobs per actor, a minute's worth at once.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: f64::from(per_minute),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Charges `cost` jobs to `actor` at `now`: true when their budget
    /// covers it (charged), false when they are past it (not charged, so
    /// an actor who stops recovers at the budget's rate).
    pub fn charge(&self, actor: UserId, cost: usize, now: Instant) -> bool {
        if self.per_minute <= 0.0 || cost == 0 {
            return true;
        }
        let cap = self.per_minute;
        let rate = cap / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < cap);
        }
        let (tokens, at) = buckets.entry(actor).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(cap);
        *at = now;
        if *tokens >= cost as f64 {
            *tokens -= cost as f64;
            return true;
        }
        false
    }

    /// Charges `actor` for `jobs` and puts them all in the bulk lane when
    /// the budget does not cover them (an activity's event job travels
    /// with its fanout, so a burst's notifications wait with it).
    pub fn route(&self, actor: UserId, jobs: &mut [Job], now: Instant) {
        let cost = jobs
            .iter()
            .filter(|j| !matches!(j.kind, Some(job::Kind::Event(_))))
            .count();
        if !self.charge(actor, cost, now) {
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

    #[test]
    fn an_actor_past_their_budget_goes_to_the_bulk_lane_and_recovers_at_its_rate() {
        let budget = FanoutBudget::new(60);
        let t0 = Instant::now();
        assert!(budget.charge(1, 40, t0));
        assert!(budget.charge(1, 20, t0), "a minute's worth at once");
        assert!(!budget.charge(1, 1, t0), "past the budget");
        assert!(budget.charge(2, 17, t0), "another actor has their own budget");
        assert!(
            !budget.charge(1, 2, t0 + Duration::from_secs(1)),
            "one job back per second"
        );
        assert!(budget.charge(1, 2, t0 + Duration::from_secs(2)));
        assert!(FanoutBudget::new(0).charge(1, 1_000_000, t0), "0 turns it off");
    }

    #[test]
    fn a_publish_to_many_feeds_costs_a_job_per_feed_and_its_event_travels_with_it() {
        let budget = FanoutBudget::new(10);
        let job = |kind| Job {
            kind: Some(kind),
            ..Job::default()
        };
        let fanout = || job(job::Kind::Fanout(feed_proto::events::v1::FanoutJob::default()));
        let mut sixteen_tags: Vec<Job> = (0..17).map(|_| fanout()).collect();
        sixteen_tags.push(job(job::Kind::Event(Default::default())));
        budget.route(1, &mut sixteen_tags, Instant::now());
        assert!(sixteen_tags.iter().all(|j| j.bulk), "17 jobs exceed a budget of 10");
        let mut one = vec![fanout(), job(job::Kind::Event(Default::default()))];
        budget.route(1, &mut one, Instant::now());
        assert!(one.iter().all(|j| !j.bulk), "not charged for the refused burst");
    }
}
