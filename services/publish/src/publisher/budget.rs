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
//! The budget is per publish replica (each holds its own buckets): with N
//! replicas an actor spreading a burst over all of them gets up to N
//! budgets in the fast lane.

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

/// Per-actor token buckets of fanout units.
#[derive(Debug)]
pub struct FanoutBudget {
    buckets: TokenBuckets<UserId>,
}

impl FanoutBudget {
    /// `per_minute` units per actor, a minute's worth at once; 0 turns the
    /// budget off (a rate of 0 lets everything through).
    pub fn new(per_minute: u32) -> Self {
        let per_minute = f64::from(per_minute);
        Self {
            buckets: TokenBuckets::new(per_minute / 60.0, per_minute),
        }
    }

    /// Charges `cost` units to `actor` at `now`: true when their budget
    /// covers it (charged), false when they are past it (not charged, so
    /// an actor who stops recovers at the budget's rate).
    pub fn charge(&self, actor: UserId, cost: usize, now: Instant) -> bool {
        cost == 0 || self.buckets.take(actor, cost as f64, now).is_ok()
    }

    /// Charges `actor` `cost` units for `jobs` and puts them all in the
    /// bulk lane when the budget does not cover it (an activity's event
    /// job travels with its fanout, so a burst's notifications wait with it).
    pub fn route(&self, actor: UserId, cost: usize, jobs: &mut [Job], now: Instant) {
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

    #[test]
    fn jobs_past_the_budget_all_take_the_bulk_lane_with_their_event() {
        let budget = FanoutBudget::new(10);
        let job = |kind| Job {
            kind: Some(kind),
            ..Job::default()
        };
        let fanout = || job(job::Kind::Fanout(feed_proto::events::v1::FanoutJob::default()));
        let mut burst: Vec<Job> = (0..17).map(|_| fanout()).collect();
        burst.push(job(job::Kind::Event(Default::default())));
        assert_eq!(job_cost(&burst), 17, "the event job costs nothing");
        budget.route(1, 17, &mut burst, Instant::now());
        assert!(burst.iter().all(|j| j.bulk), "17 units exceed a budget of 10");
        let mut one = vec![fanout(), job(job::Kind::Event(Default::default()))];
        budget.route(1, 1, &mut one, Instant::now());
        assert!(one.iter().all(|j| !j.bulk), "not charged for the refused burst");
    }
}
