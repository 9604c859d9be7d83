//! Property: after every step of a random scenario (follows, unfollows,
//! blocks, mutes, deletes, private and widened items, celebrities crossing
//! the threshold, cold users, lost inboxes, jobs reordered and delayed across
//! steps), the concatenated pages of every user's home timeline equal the
//! pull model computed from the durable stores — all of it, past the inbox
//! cap — while fanout, backfill and purge jobs are still pending.

use feed_e2e::model::{Harness, USERS, op};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    #[test]
    fn paged_timelines_equal_the_pull_model_after_every_step_with_jobs_pending(
        ops in prop::collection::vec(op(), 1..40),
        page_size in 1usize..5,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut h = Harness::new().await;
            let timeline = h.timeline();
            for (step, op) in ops.iter().enumerate() {
                h.apply(op).await;
                // The edge log becomes jobs promptly (publish tails it every
                // 200 ms); the jobs themselves stay delayed and reordered.
                h.publisher.ingest_edges().await.expect("ingest");
                for user in 1..=USERS {
                    let mut got = Vec::new();
                    let mut before = None;
                    loop {
                        let page = timeline.home(user, page_size, before).await.expect("timeline");
                        got.extend(page.items.iter().map(|i| i.activity.id));
                        match page.next_before {
                            Some(b) => before = Some(b),
                            None => break,
                        }
                    }
                    let want = h.expected_timeline(user).await;
                    assert_eq!(got, want, "user {user} after step {step}: {:?}", &ops[..=step]);
                }
            }
        });
    }
}
