//! The contract every [`ActivityStore`] passes, run on an empty store.

use feed_core::FeedRef;
use feed_proto::common::v1::{Activity, ActivityStatus, DeliveryMode};
use feed_proto::events::v1::{FanoutJob, Job, job};
use feed_proto::publish::v1::{NewActivity, ScheduledActivity};

use super::{ActivityStore, ForeignClaim, ForeignRecord, OutboxEntry, PendingWork};

fn feed(s: &str) -> FeedRef {
    FeedRef::parse(s).expect("valid feed")
}

fn activity(id: u64, actor: u64) -> Activity {
    Activity {
        id,
        actor,
        verb: "post".into(),
        object: format!("post:{id}"),
        status: ActivityStatus::Active as i32,
        ..Activity::default()
    }
}

fn job(id: &str, created: i64) -> Job {
    Job {
        job_id: id.into(),
        created_at_ms: created,
        failed_at_ms: 0,
        bulk: false,
        kind: Some(job::Kind::Fanout(FanoutJob {
            activity_id: 1,
            feed: "user:1".into(),
            shard: None,
            actor: 1,
        })),
    }
}

/// Contract check: foreign ids are claimed once.
pub async fn foreign_ids_are_claimed_once(s: &dyn ActivityStore) {
    assert_eq!(
        s.claim_foreign(1, "f-1", 100, 7).await.expect("claim"),
        ForeignClaim::Claimed
    );
    assert_eq!(
        s.claim_foreign(1, "f-1", 101, 8).await.expect("claim again"),
        ForeignClaim::Held {
            id: 100,
            fingerprint: 7
        }
    );
    assert_eq!(
        s.claim_foreign(2, "f-1", 102, 7).await.expect("other actor"),
        ForeignClaim::Claimed
    );
    assert_eq!(
        s.find_foreign(1, "f-1").await.expect("find"),
        Some(ForeignRecord {
            id: 100,
            fingerprint: 7
        }),
        "the claim's id and payload fingerprint"
    );
    assert_eq!(s.find_foreign(1, "f-2").await.expect("find"), None);
}

/// Contract check: publish writes activity outbox and jobs together.
pub async fn publish_writes_activity_outbox_and_jobs_together(s: &dyn ActivityStore) {
    let a = activity(200, 1);
    let entries = [OutboxEntry {
        feed: feed("user:1"),
        id: 200,
        mode: DeliveryMode::Push,
    }];
    let jobs = [job("fan/200/user:1", 5)];
    s.commit_publish(&a, &entries, &jobs).await.expect("commit");
    s.commit_publish(&a, &entries, &jobs).await.expect("idempotent retry");
    assert_eq!(
        s.get(&[200, 999]).await.expect("get"),
        vec![Some(std::sync::Arc::new(a.clone())), None]
    );
    assert_eq!(
        s.outbox(&feed("user:1"), None, 10).await.expect("outbox"),
        entries.to_vec()
    );
    assert_eq!(
        s.job("fan/200/user:1").await.expect("job").expect("pending").job,
        jobs[0]
    );
    let deleted = Activity {
        status: ActivityStatus::Deleted as i32,
        ..a
    };
    s.replace(&deleted, &[]).await.expect("replace");
    assert_eq!(
        s.get(&[200]).await.expect("get")[0].as_ref().map(|a| a.status),
        Some(ActivityStatus::Deleted as i32)
    );
}

/// Contract check: outboxes page newest first and separate pull entries.
pub async fn outboxes_page_newest_first_and_separate_pull_entries(s: &dyn ActivityStore) {
    let f = feed("tag:contract");
    for id in [301u64, 302, 303, 304] {
        let mode = if id % 2 == 0 {
            DeliveryMode::Pull
        } else {
            DeliveryMode::Push
        };
        s.commit_publish(
            &activity(id, 3),
            &[OutboxEntry {
                feed: f.clone(),
                id,
                mode,
            }],
            &[],
        )
        .await
        .expect("commit");
    }
    let page: Vec<u64> = s
        .outbox(&f, Some(304), 2)
        .await
        .expect("outbox")
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(page, vec![303, 302]);
    assert_eq!(s.pulled(&f, None, 10).await.expect("pulled"), vec![304, 302]);
    assert_eq!(s.outbox_mode(&f, 304).await.expect("mode"), Some(DeliveryMode::Pull));
    assert_eq!(s.outbox_mode(&f, 303).await.expect("mode"), Some(DeliveryMode::Push));
    assert_eq!(s.outbox_mode(&f, 305).await.expect("mode"), None);
    assert_eq!(s.pulled(&f, Some(304), 10).await.expect("pulled"), vec![302]);
    // Many feeds at once: only those with pull-mode entries, by index.
    let many = [feed("tag:contrac"), f.clone(), feed("group:never-written")];
    assert_eq!(
        s.pulled_many(&many, None, 10).await.expect("pulled_many"),
        vec![(1, vec![304, 302])]
    );
    assert_eq!(
        s.pulled_many(&many, Some(304), 1).await.expect("pulled_many"),
        vec![(1, vec![302])]
    );
    assert!(
        s.outbox(&feed("tag:contrac"), None, 10)
            .await
            .expect("prefix")
            .is_empty(),
        "feeds do not prefix-match"
    );
}

/// Every id `read` yields, each call asking for the ids below the last one seen.
async fn page_through(mut read: impl AsyncFnMut(Option<u64>) -> Vec<u64>) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let ids = read(seen.last().copied()).await;
        if ids.is_empty() {
            return seen;
        }
        seen.extend(ids);
    }
}

/// A feed's pull-mode ids, read `page` at a time.
pub async fn every_pulled(s: &dyn ActivityStore, f: &FeedRef, page: usize) -> Vec<u64> {
    page_through(async |before| s.pulled(f, before, page).await.expect("pulled")).await
}

/// A feed's outbox ids, read `page` at a time.
pub async fn every_outbox_id(s: &dyn ActivityStore, f: &FeedRef, page: usize) -> Vec<u64> {
    page_through(async |before| {
        let entries = s.outbox(f, before, page).await.expect("outbox");
        entries.iter().map(|e| e.id).collect()
    })
    .await
}

/// Past any in-memory head a backend keeps: every id, in order, whatever
/// the order of the writes.
/// Contract check: pull entries page through every id of a long feed.
pub async fn pull_entries_page_through_every_id_of_a_long_feed(s: &dyn ActivityStore) {
    let f = feed("user:777");
    // 1,500 ids written out of order, most ten to a commit and some alone
    // (a commit is one batch, and CQL nodes refuse very large ones).
    let ids: Vec<u64> = (0..1_500u64).map(|i| 10_000 + (i * 7_919) % 1_500).collect();
    let entry = |id| OutboxEntry {
        feed: f.clone(),
        id,
        mode: DeliveryMode::Pull,
    };
    let (bulk, single) = ids.split_at(1_490);
    for (n, chunk) in bulk.chunks(10).enumerate() {
        s.commit_publish(
            &activity(9_000 + n as u64, 5),
            &chunk.iter().map(|id| entry(*id)).collect::<Vec<_>>(),
            &[],
        )
        .await
        .expect("commit");
    }
    for id in single {
        s.commit_publish(&activity(*id, 5), &[entry(*id)], &[])
            .await
            .expect("commit");
    }
    let want: Vec<u64> = (10_000..11_500).rev().collect();
    assert_eq!(
        every_pulled(s, &f, 97).await,
        want,
        "every pulled id once, newest first"
    );
    assert_eq!(
        s.pulled(&f, Some(10_005), 3).await.expect("pulled"),
        vec![10_004, 10_003, 10_002]
    );
    assert_eq!(s.pulled(&f, Some(10_000), 3).await.expect("pulled"), Vec::<u64>::new());
    // A write after the feed was read shows on the next read.
    s.commit_publish(&activity(11_600, 5), &[entry(11_600)], &[])
        .await
        .expect("commit");
    assert_eq!(s.pulled(&f, None, 2).await.expect("pulled"), vec![11_600, 11_499]);
    assert_eq!(
        s.outbox(&f, Some(11_601), 2)
            .await
            .expect("outbox")
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>(),
        vec![11_600, 11_499]
    );
}

/// Contract check: jobs complete fail and revive.
pub async fn jobs_complete_fail_and_revive(s: &dyn ActivityStore) {
    s.put_jobs(&[job("j/a", 10), job("j/b", 20)]).await.expect("put");
    // A sub-job keeps its root's creation time but counts as written when
    // it was recorded: a root run late spawns no job that is stale at once.
    let sub = job("j/a/0", 10);
    s.complete_job("j/a", std::slice::from_ref(&sub), 11)
        .await
        .expect("complete");
    assert!(s.job("j/a").await.expect("job").is_none(), "a done job is gone");
    assert!(s.job("j/a/0").await.expect("job").is_some(), "its sub-job is recorded");
    assert!(!s.fail_job("j/b", "boom", 2, 30).await.expect("fail 1"));
    let failed = s.job("j/b").await.expect("job").expect("pending");
    assert_eq!(failed.attempts, 1);
    assert_eq!(
        failed.job.failed_at_ms, 30,
        "a failure's time is kept (its backoff runs from it)"
    );
    assert!(s.fail_job("j/b", "boom again", 2, 31).await.expect("fail 2"));
    assert!(s.job("j/b").await.expect("job").is_none());
    let dead = s.dead_jobs("", 10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error, "boom again");
    assert!(
        !s.stale_jobs(11, 11, 100)
            .await
            .expect("stale")
            .iter()
            .any(|j| j.job_id == "j/a/0"),
        "not stale before it was recorded"
    );
    let stale = s.stale_jobs(12, 40, 100).await.expect("stale");
    assert!(stale.iter().any(|j| j.job_id == "j/a/0"), "recorded at 11");
    assert!(
        !s.stale_jobs(12, 41, 100)
            .await
            .expect("stale")
            .iter()
            .any(|j| j.job_id == "j/a/0"),
        "handed out once per staleness period"
    );
    assert!(
        s.stale_jobs(41, 41, 100)
            .await
            .expect("stale")
            .iter()
            .any(|j| j.job_id == "j/a/0"),
        "and again once stale again"
    );
    let revived = s.revive_jobs(&[], 40).await.expect("revive");
    assert_eq!(revived.len(), 1);
    assert!(s.job("j/b").await.expect("job").is_some());
    // A sweep's look moves a failed job's record time, not its failure's.
    s.put_jobs(&[job("j/c", 50)]).await.expect("put");
    assert!(!s.fail_job("j/c", "boom", 3, 60).await.expect("fail"));
    let swept = s.stale_jobs(70, 100, 100).await.expect("stale");
    assert!(swept.iter().any(|j| j.job_id == "j/c"), "stale after its failure");
    assert_eq!(
        s.job("j/c").await.expect("job").expect("pending").job.failed_at_ms,
        60,
        "the failure's time is kept for its backoff"
    );
    let stats = s.job_stats().await.expect("stats");
    assert!(stats.pending >= 2 && stats.dead == 0);
}

/// Contract check: scheduled items are listed due and removed.
pub async fn scheduled_items_are_listed_due_and_removed(s: &dyn ActivityStore) {
    let item = |id: &str, at: i64| ScheduledActivity {
        schedule_id: id.into(),
        publish_at_ms: at,
        activity: Some(NewActivity {
            actor: 9,
            verb: "post".into(),
            object: "x".into(),
            foreign_id: id.into(),
            ..NewActivity::default()
        }),
    };
    s.schedule(&item("s1", 100)).await.expect("schedule");
    s.schedule(&item("s2", 200)).await.expect("schedule");
    assert_eq!(s.list_scheduled(9, "", 10).await.expect("list").len(), 2);
    assert_eq!(s.list_scheduled(9, "s1", 10).await.expect("list")[0].schedule_id, "s2");
    let due: Vec<String> = s
        .due_scheduled(150, 10)
        .await
        .expect("due")
        .into_iter()
        .map(|i| i.schedule_id)
        .collect();
    assert_eq!(due, vec!["s1"]);
    assert!(!s.remove_scheduled(8, "s1").await.expect("not the owner"));
    assert!(s.remove_scheduled(9, "s1").await.expect("remove"));
    assert!(!s.remove_scheduled(9, "s1").await.expect("gone"));
    assert!(s.due_scheduled(150, 10).await.expect("due").is_empty());
}

/// Contract check: edge jobs advance the cursor with them.
pub async fn edge_jobs_advance_the_cursor_with_them(s: &dyn ActivityStore) {
    assert_eq!(s.edge_cursor().await.expect("cursor"), 0);
    s.record_edge_jobs(&[job("edge/1/user:2/3", 50)], 17)
        .await
        .expect("record");
    assert_eq!(s.edge_cursor().await.expect("cursor"), 17);
    assert!(s.job("edge/1/user:2/3").await.expect("job").is_some());
}

/// A root fanout job of `activity` from `feed`.
fn fan(activity: u64, feed: &str) -> Job {
    Job {
        job_id: format!("fan/{activity}/{feed}"),
        created_at_ms: 1,
        failed_at_ms: 0,
        bulk: false,
        kind: Some(job::Kind::Fanout(FanoutJob {
            activity_id: activity,
            feed: feed.into(),
            shard: None,
            actor: 1,
        })),
    }
}

/// User 90's backfill of tag:x.
fn backfill_90() -> Job {
    use feed_proto::events::v1::{EdgeJob, EdgeJobKind};
    Job {
        job_id: "edge/90/tag:x/1".into(),
        created_at_ms: 1,
        failed_at_ms: 0,
        bulk: false,
        kind: Some(job::Kind::Edge(EdgeJob {
            kind: EdgeJobKind::Backfill as i32,
            follower_id: 90,
            feed: "tag:x".into(),
            edge_version: 1,
        })),
    }
}

/// Contract check: pending work tracks unfinished fanout and backfill.
pub async fn pending_work_tracks_unfinished_fanout_and_backfill(s: &dyn ActivityStore) {
    // Finish whatever earlier checks left pending.
    for j in s.stale_jobs(i64::MAX, 0, 10_000).await.expect("stale") {
        s.complete_job(&j.job_id, &[], 0).await.expect("complete");
    }
    assert_eq!(s.pending_work(90).await.expect("pending").fanout_from, None);
    let backfill = backfill_90();
    s.put_jobs(&[fan(700, "user:1"), fan(500, "user:1"), backfill.clone()])
        .await
        .expect("put");
    let p = s.pending_work(90).await.expect("pending");
    assert_eq!(p.fanout_from, Some(500));
    assert_eq!(p.backfill_feeds, vec![feed("tag:x")]);
    assert!(s.pending_work(91).await.expect("pending").backfill_feeds.is_empty());
    s.complete_job("fan/500/user:1", &[], 0).await.expect("complete");
    s.complete_job(&backfill.job_id, &[], 0).await.expect("complete");
    let p = s.pending_work(90).await.expect("pending");
    assert_eq!(p.fanout_from, Some(700));
    assert!(p.backfill_feeds.is_empty());
    s.complete_job("fan/700/user:1", &[], 0).await.expect("complete");
    assert_eq!(s.pending_work(90).await.expect("pending").fanout_from, None);
}

/// Contract check: a dead-lettered fanout job leaves the global watermark
/// and stalls only its own feed, from its activity id; a replay puts it
/// back; a dead backfill keeps its entry.
pub async fn a_dead_fanout_stalls_only_its_feed_until_replayed(s: &dyn ActivityStore) {
    let backfill = backfill_90();
    s.put_jobs(&[
        fan(500, "user:1"),
        fan(400, "user:1"),
        fan(700, "tag:y"),
        backfill.clone(),
    ])
    .await
    .expect("put");
    assert!(s.fail_job("fan/400/user:1", "boom", 1, 2).await.expect("fail"));
    assert!(s.fail_job("fan/500/user:1", "boom", 1, 2).await.expect("fail"));
    assert!(s.fail_job(&backfill.job_id, "boom", 1, 2).await.expect("fail"));
    let p = s.pending_work(90).await.expect("pending");
    assert_eq!(p.fanout_from, Some(700), "dead jobs no longer pin the watermark");
    assert_eq!(p.stalled, vec![(feed("user:1"), 400)], "their feed, from its lowest id");
    assert_eq!(p.backfill_feeds, vec![feed("tag:x")], "a dead backfill still pends");
    let revived = s.revive_jobs(&["fan/400/user:1".into()], 3).await.expect("revive");
    assert_eq!(revived.len(), 1);
    let p = s.pending_work(90).await.expect("pending");
    assert_eq!(p.fanout_from, Some(400), "replayed: pending again");
    assert_eq!(p.stalled, vec![(feed("user:1"), 500)]);
    s.revive_jobs(&[], 4).await.expect("revive");
    for id in [
        "fan/400/user:1",
        "fan/500/user:1",
        "fan/700/tag:y",
        backfill.job_id.as_str(),
    ] {
        s.complete_job(id, &[], 5).await.expect("complete");
    }
    assert_eq!(s.pending_work(90).await.expect("pending"), PendingWork::default());
}

/// Contract check: the sweep finds jobs gone stale across many minutes of
/// writes, each once per stale period, never a finished one, and a limit
/// leaves the rest for the next sweep.
pub async fn the_sweep_finds_stale_jobs_across_minutes_once_per_period(s: &dyn ActivityStore) {
    const MIN: i64 = 60_000;
    let t0 = 1_700_000_000_000;
    let ids = |jobs: Vec<Job>| {
        let mut v: Vec<String> = jobs.into_iter().map(|j| j.job_id).collect();
        v.sort();
        v
    };
    s.put_jobs(&[job("m/0", t0), job("m/5", t0 + 5 * MIN), job("m/9", t0 + 9 * MIN)])
        .await
        .expect("put");
    s.complete_job("m/5", &[], t0 + 6 * MIN).await.expect("complete");
    let at = |now: i64, limit: usize| s.stale_jobs(now - MIN, now, limit);
    assert_eq!(ids(at(t0 + 3 * MIN, 100).await.expect("sweep")), ["m/0"]);
    assert!(
        at(t0 + 4 * MIN, 100).await.expect("sweep").is_empty(),
        "handed out a minute ago: not stale yet"
    );
    assert_eq!(
        ids(at(t0 + 20 * MIN, 100).await.expect("sweep")),
        ["m/0", "m/9"],
        "the finished job never"
    );
    let more: Vec<Job> = (0..5).map(|n| job(&format!("l/{n}"), t0 + 21 * MIN + n)).collect();
    s.put_jobs(&more).await.expect("put");
    let first = ids(at(t0 + 30 * MIN, 3).await.expect("sweep"));
    assert_eq!(first.len(), 3, "at most the limit");
    let rest = ids(at(t0 + 30 * MIN, 100).await.expect("sweep"));
    let mut all: Vec<String> = first.into_iter().chain(rest).collect();
    all.sort();
    assert_eq!(
        all,
        ["l/0", "l/1", "l/2", "l/3", "l/4", "m/0", "m/9"],
        "the rest, once each"
    );
}

/// One test per check of this contract for a backend:
/// `activity_store_contract!(embedded, make)` where `make(check_name)` returns a
/// [`feed_testkit::Backend`] (see `feed_testkit::contract_tests`).
#[macro_export]
macro_rules! activity_store_contract {
    ($backend:ident, $make:ident) => {
        feed_testkit::contract_tests!(
            $backend,
            $make,
            publish::store::contract,
            [
                foreign_ids_are_claimed_once,
                publish_writes_activity_outbox_and_jobs_together,
                outboxes_page_newest_first_and_separate_pull_entries,
                pull_entries_page_through_every_id_of_a_long_feed,
                jobs_complete_fail_and_revive,
                scheduled_items_are_listed_due_and_removed,
                edge_jobs_advance_the_cursor_with_them,
                pending_work_tracks_unfinished_fanout_and_backfill,
                a_dead_fanout_stalls_only_its_feed_until_replayed,
                the_sweep_finds_stale_jobs_across_minutes_once_per_period
            ]
        );
    };
}
