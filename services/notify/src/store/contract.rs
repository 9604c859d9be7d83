//! The contract every [`NotifyStore`] backend passes: each check runs as a
//! test of its own per backend (the macro at the end) on a fresh, empty store.

use feed_proto::notify::v1::{
    CreateRemindRequest, NoteRecord, Notification, NotificationKind, RemindJob, Subscription, UserState,
};

use super::{ALWAYS, EventClaim, GroupChange, NotifyStore, REMIND_LOG_RETENTION_MS};

fn note(id: u64, kind: NotificationKind, group: &str, seq: u64) -> NoteRecord {
    NoteRecord {
        note: Some(Notification {
            id,
            kind: kind as i32,
            updated_at_ms: seq as i64,
            ..Default::default()
        }),
        group_key: group.into(),
        seq,
        ..Default::default()
    }
}

fn sub(user: u64, object_id: &str, reason: &str) -> Subscription {
    Subscription {
        user_id: user,
        object_id: object_id.into(),
        object_type: "activity".into(),
        reason: reason.into(),
        created_at_ms: 5,
    }
}

fn ids(v: &[NoteRecord]) -> Vec<u64> {
    v.iter().map(|r| r.note.as_ref().map(|n| n.id).unwrap_or(0)).collect()
}

/// Contract check: an event id is claimed once.
pub async fn an_event_id_is_claimed_once(s: &dyn NotifyStore) {
    assert_eq!(s.claim_event("ev-1", 10).await.expect("claim"), EventClaim::Claimed);
    assert_eq!(s.claim_event("ev-1", 11).await.expect("claim"), EventClaim::Held(10));
    assert_eq!(s.claim_event("ev-2", 12).await.expect("claim"), EventClaim::Claimed);
}

/// Contract check: announces list newest first below the cursor.
pub async fn announces_list_newest_first_below_the_cursor(s: &dyn NotifyStore) {
    for id in [3, 1, 2] {
        s.put_announce(&note(id, NotificationKind::Announce, "", id))
            .await
            .expect("put");
    }
    s.put_announce(&note(2, NotificationKind::Announce, "", 2))
        .await
        .expect("idempotent");
    assert_eq!(ids(&s.announces(u64::MAX, 10).await.expect("list")), vec![3, 2, 1]);
    assert_eq!(ids(&s.announces(3, 1).await.expect("list")), vec![2]);
}

/// Contract check: notes insert once and page newest first.
pub async fn notes_insert_once_and_page_newest_first(s: &dyn NotifyStore) {
    let user = 7;
    for id in [100, 300, 200] {
        assert!(
            s.insert_note(user, &note(id, NotificationKind::Message, "", id))
                .await
                .expect("insert")
        );
    }
    assert!(
        !s.insert_note(user, &note(200, NotificationKind::Message, "", 999))
            .await
            .expect("again")
    );
    assert_eq!(s.note(user, 200).await.expect("get").map(|r| r.seq), Some(200));
    assert_eq!(ids(&s.notes(user, u64::MAX, 2).await.expect("page")), vec![300, 200]);
    assert_eq!(ids(&s.notes(user, 200, 10).await.expect("page")), vec![100]);
    assert!(s.notes(8, u64::MAX, 10).await.expect("other user").is_empty());
}

/// Contract check: a group counts each actor once.
pub async fn a_group_counts_each_actor_once(s: &dyn NotifyStore) {
    let user = 9;
    let first = note(500, NotificationKind::Remind, "activity/1/like/0", 10);
    let GroupChange::Changed(r) = s.add_to_group(user, 21, &first, 2).await.expect("add") else {
        panic!("a new group changes");
    };
    assert_eq!(r.note.as_ref().map(|n| n.actor_count), Some(1));
    // A later event for the same group carries another id: the group keeps its first.
    let later = |seq| note(600, NotificationKind::Remind, "activity/1/like/0", seq);
    assert_eq!(
        s.add_to_group(user, 21, &later(11), 2).await.expect("replay"),
        GroupChange::Unchanged
    );
    s.add_to_group(user, 22, &later(12), 2).await.expect("add");
    let GroupChange::Changed(r) = s.add_to_group(user, 23, &later(13), 2).await.expect("add") else {
        panic!("a new actor changes the group");
    };
    let n = r.note.expect("note");
    assert_eq!((n.id, n.actor_count, n.latest_actors.clone()), (500, 3, vec![23, 22]));
    assert_eq!(r.seq, 13);
    assert_eq!(ids(&s.notes(user, u64::MAX, 10).await.expect("list")), vec![500]);
    // Another user's group with the same key is separate.
    s.add_to_group(10, 21, &first, 2).await.expect("other user");
    let other = s.note(10, 500).await.expect("get").expect("note");
    assert_eq!(other.note.map(|n| n.actor_count), Some(1));
}

/// Contract check: a new group never takes (or joins) another note that
/// holds its id (ids of one millisecond collide): it takes a free one, and
/// later actors join it there.
pub async fn a_new_group_never_takes_the_id_of_another_note(s: &dyn NotifyStore) {
    let user = 11;
    let message = note(500, NotificationKind::Message, "message:2:e1", 10);
    assert!(s.insert_note(user, &message).await.expect("insert"));
    let remind = |seq| note(500, NotificationKind::Remind, "activity/1/like/0", seq);
    let GroupChange::Changed(first) = s.add_to_group(user, 21, &remind(11), 2).await.expect("add") else {
        panic!("a new group changes");
    };
    let group_id = first.note.as_ref().map(|n| n.id).unwrap_or(0);
    assert_ne!(group_id, 500, "the group took the message's id");
    let GroupChange::Changed(second) = s.add_to_group(user, 22, &remind(12), 2).await.expect("add") else {
        panic!("a new actor changes the group");
    };
    let n = second.note.expect("note");
    assert_eq!(
        (n.id, n.actor_count),
        (group_id, 2),
        "later actors join the group where it is"
    );
    let kept = s.note(user, 500).await.expect("get").expect("the message");
    assert_eq!(kept, message, "the message is untouched");
    let mut listed = ids(&s.notes(user, u64::MAX, 10).await.expect("list"));
    listed.sort_unstable();
    let mut want = vec![500, group_id];
    want.sort_unstable();
    assert_eq!(listed, want);
}

/// Contract check: read marks only rise.
pub async fn read_marks_only_rise(s: &dyn NotifyStore) {
    let user = 11;
    s.insert_note(user, &note(1, NotificationKind::Message, "", 50))
        .await
        .expect("insert");
    s.mark_notes_read(user, &[(1, 50), (2, 60)]).await.expect("mark");
    assert_eq!(s.note(user, 1).await.expect("get").map(|r| r.read_seq), Some(50));
    s.mark_notes_read(user, &[(1, 40)]).await.expect("mark lower");
    assert_eq!(s.note(user, 1).await.expect("get").map(|r| r.read_seq), Some(50));
    assert!(s.note(user, 2).await.expect("get").is_none(), "marking never creates");
}

/// Contract check: user state round trips.
pub async fn user_state_round_trips(s: &dyn NotifyStore) {
    assert!(s.user_state(12).await.expect("get").is_none());
    let mut st = UserState {
        read_watermark: 5,
        created_at_ms: 77,
        ..Default::default()
    };
    st.actions.insert("like".into(), false);
    s.put_user_state(12, &st).await.expect("put");
    assert_eq!(s.user_state(12).await.expect("get"), Some(st));
}

/// Contract check: subscriptions list both ways and unsubscribe by reason.
pub async fn subscriptions_list_both_ways_and_unsubscribe_by_reason(s: &dyn NotifyStore) {
    assert!(s.subscribe(&sub(30, "a1", "create_post"), 40).await.expect("sub"));
    assert!(!s.subscribe(&sub(30, "a1", "create_post"), 90).await.expect("again"));
    assert!(s.subscribe(&sub(30, "a1", "follow_object"), ALWAYS).await.expect("sub"));
    assert!(s.subscribe(&sub(31, "a1", "follow_object"), 50).await.expect("sub"));
    assert!(s.subscribe(&sub(30, "a10", "follow_object"), 60).await.expect("sub"));
    // Pages stop at a user boundary: one subscriber's reasons come together.
    let first = s.subscribers("activity", "a1", 0, 1).await.expect("page");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].user, 30);
    let reasons: Vec<(&str, i64)> = first[0].reasons.iter().map(|r| (r.name.as_str(), r.since_ms)).collect();
    assert_eq!(
        reasons,
        vec![("create_post", 40), ("follow_object", ALWAYS)],
        "each reason with its start; a repeat keeps the first"
    );
    let rest = s.subscribers("activity", "a1", 30, 10).await.expect("page");
    assert_eq!(rest.iter().map(|x| x.user).collect::<Vec<_>>(), vec![31]);
    let mine = s.subscriptions(30, None, 2).await.expect("list");
    assert_eq!(mine.len(), 2);
    let more = s.subscriptions(30, mine.last(), 10).await.expect("list");
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].object_id, "a10");
    assert_eq!(more[0].created_at_ms, 5);
    assert!(
        s.unsubscribe(30, "activity", "a1", Some("create_post"))
            .await
            .expect("unsub")
    );
    assert!(
        !s.unsubscribe(30, "activity", "a1", Some("create_post"))
            .await
            .expect("again")
    );
    let left = s.subscribers("activity", "a1", 0, 10).await.expect("page");
    assert_eq!(left[0].reasons.len(), 1);
    assert_eq!(left[0].reasons[0].name, "follow_object");
    assert!(s.unsubscribe(30, "activity", "a1", None).await.expect("all"));
    assert_eq!(s.subscribers("activity", "a1", 0, 10).await.expect("page").len(), 1);
}

/// Contract check: remind jobs are kept until deleted.
pub async fn remind_jobs_are_kept_until_deleted(s: &dyn NotifyStore) {
    let job = RemindJob {
        job_id: "r1".into(),
        after_user: 0,
        ..Default::default()
    };
    s.put_job_if_absent(&job).await.expect("put");
    let advanced = RemindJob {
        after_user: 40,
        ..job.clone()
    };
    s.put_job(&advanced).await.expect("advance");
    s.put_job_if_absent(&job).await.expect("no reset");
    assert_eq!(s.job("r1").await.expect("get"), Some(advanced));
    assert_eq!(s.jobs(10).await.expect("list").len(), 1);
    s.delete_job("r1").await.expect("delete");
    assert!(s.job("r1").await.expect("get").is_none());
}

fn logged(job_id: &str, object_id: &str, action: &str, at: i64) -> RemindJob {
    RemindJob {
        job_id: job_id.into(),
        remind: Some(CreateRemindRequest {
            event_id: job_id.into(),
            actor: 3,
            action: action.into(),
            object_type: "activity".into(),
            object_id: object_id.into(),
            ..Default::default()
        }),
        occurred_at_ms: at,
        ..Default::default()
    }
}

/// Contract check: reminds are logged per object and action in time order.
pub async fn reminds_are_logged_per_object_and_action_in_time_order(s: &dyn NotifyStore) {
    let now = 1_800_000_000_000;
    for (job, object, action, at) in [
        ("r-3", "log-1", "update", now + 30),
        ("r-1", "log-1", "update", now + 10),
        ("r-2", "log-1", "update", now + 20),
        ("r-2", "log-1", "update", now + 20),
        ("r-x", "log-1", "comment", now + 15),
        ("r-y", "log-10", "update", now + 15),
    ] {
        s.log_remind(&logged(job, object, action, at)).await.expect("log");
    }
    let got = |v: Vec<RemindJob>| v.into_iter().map(|j| j.job_id).collect::<Vec<_>>();
    let after = |t: i64, limit: usize| s.reminds_after("activity", "log-1", "update", t, limit);
    assert_eq!(got(after(now, 10).await.expect("all")), vec!["r-1", "r-2", "r-3"]);
    assert_eq!(
        got(after(now + 10, 10).await.expect("after")),
        vec!["r-2", "r-3"],
        "strictly after"
    );
    assert_eq!(got(after(now, 2).await.expect("limit")), vec!["r-1", "r-2"]);
    assert_eq!(
        got(s
            .reminds_after("activity", "log-1", "comment", 0, 10)
            .await
            .expect("other action")),
        vec!["r-x"]
    );
    assert!(
        s.reminds_after("activity", "log-2", "update", 0, 10)
            .await
            .expect("other object")
            .is_empty()
    );
    let whole = after(0, 1).await.expect("whole").pop().expect("one");
    assert_eq!(whole, logged("r-1", "log-1", "update", now + 10), "the job round-trips");
    // Kept for the retention period: an event re-driven days later still finds it.
    s.log_remind(&logged("r-4", "log-1", "update", now + REMIND_LOG_RETENTION_MS / 2))
        .await
        .expect("log later");
    assert_eq!(after(now, 10).await.expect("kept").len(), 4);
}

/// One test per check of this contract for a backend:
/// `notify_store_contract!(embedded, make)` where `make(check_name)` returns a
/// [`feed_testkit::Backend`] (see `feed_testkit::contract_tests`).
#[macro_export]
macro_rules! notify_store_contract {
    ($backend:ident, $make:ident) => {
        feed_testkit::contract_tests!(
            $backend,
            $make,
            notify::store::contract,
            [
                an_event_id_is_claimed_once,
                announces_list_newest_first_below_the_cursor,
                notes_insert_once_and_page_newest_first,
                a_group_counts_each_actor_once,
                a_new_group_never_takes_the_id_of_another_note,
                read_marks_only_rise,
                user_state_round_trips,
                subscriptions_list_both_ways_and_unsubscribe_by_reason,
                remind_jobs_are_kept_until_deleted,
                reminds_are_logged_per_object_and_action_in_time_order
            ]
        );
    };
}
