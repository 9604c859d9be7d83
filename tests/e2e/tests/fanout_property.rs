//! Property: for random follow graphs and random publish / update / delete /
//! follow / unfollow / refollow / mute / unmute / block / rebuild sequences,
//! run through a job queue the test reorders, delays and duplicates, every
//! live inbox holds exactly what the rules say once the jobs drain:
//!
//! above its floor, user u's inbox holds exactly the items that are not
//! deleted, not private, not u's own, and were pushed through a feed u
//! follows (an outbox entry in push mode; celebrity feeds are pulled).

use feed_e2e::model::{Harness, op};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn live_inboxes_hold_exactly_what_the_rules_say_once_jobs_drain(ops in prop::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut h = Harness::new().await;
            for op in &ops {
                h.apply(op).await;
            }
            h.drain().await;
            h.check_inboxes(&ops).await;
        });
    }
}
