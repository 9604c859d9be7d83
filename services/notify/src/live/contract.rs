//! The contract every [`LiveLog`] passes: each check runs as a test of its
//! own per backend (the macro at the end) on a fresh log keeping
//! [`CONTRACT_CAP`] entries per user.

use std::time::Duration;

use feed_proto::notify::v1::Notification;

use super::LiveLog;

/// Entries per user the contract's logs keep.
pub const CONTRACT_CAP: usize = 5;

fn note(id: u64) -> Notification {
    Notification {
        id,
        title: format!("n{id}"),
        ..Default::default()
    }
}

fn ids(entries: &[(super::EventId, Notification)]) -> Vec<u64> {
    entries.iter().map(|(_, n)| n.id).collect()
}

/// Contract check: entries read back oldest first, from after any id, at most `max`.
pub async fn entries_read_back_in_order_after_any_id(l: &dyn LiveLog) {
    let mut appended = Vec::new();
    for id in 1..=3 {
        appended.push(l.append(7, &note(id)).await.expect("append"));
    }
    assert!(appended.windows(2).all(|w| w[0] < w[1]), "event ids grow");
    assert_eq!(ids(&l.read_after(7, None, 10).await.expect("read")), [1, 2, 3]);
    assert_eq!(
        ids(&l.read_after(7, Some(appended[0]), 10).await.expect("read")),
        [2, 3]
    );
    assert_eq!(ids(&l.read_after(7, None, 2).await.expect("read")), [1, 2]);
    assert!(l.read_after(7, Some(appended[2]), 10).await.expect("read").is_empty());
    assert_eq!(l.last_id(7).await.expect("last"), Some(appended[2]));
}

/// Contract check: each user's log is their own.
pub async fn each_user_reads_only_their_own_log(l: &dyn LiveLog) {
    l.append(1, &note(10)).await.expect("append");
    l.append(2, &note(20)).await.expect("append");
    assert_eq!(ids(&l.read_after(1, None, 10).await.expect("read")), [10]);
    assert_eq!(ids(&l.read_after(2, None, 10).await.expect("read")), [20]);
    assert!(l.read_after(3, None, 10).await.expect("read").is_empty());
    assert_eq!(l.last_id(3).await.expect("last"), None);
}

/// Contract check: a log keeps at least its newest cap entries, contiguous
/// (Redis trims approximately, in whole stream nodes, so it may keep more).
pub async fn a_log_keeps_at_least_its_newest_cap_entries(l: &dyn LiveLog) {
    let last = CONTRACT_CAP as u64 + 3;
    for id in 1..=last {
        l.append(4, &note(id)).await.expect("append");
    }
    let kept = ids(&l.read_after(4, None, 100).await.expect("read"));
    assert!(kept.len() >= CONTRACT_CAP, "kept {kept:?}");
    let first = last + 1 - kept.len() as u64;
    assert_eq!(
        kept,
        (first..=last).collect::<Vec<_>>(),
        "the newest, in order, without gaps"
    );
}

/// Contract check: an append wakes that user's watchers, not other users'.
pub async fn an_append_wakes_that_users_watchers_only(l: &dyn LiveLog) {
    let mut mine = l.wake(5);
    let mut other = l.wake(6);
    // Redis subscribes in the background: an append right away may race it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    mine.borrow_and_update();
    other.borrow_and_update();
    l.append(5, &note(1)).await.expect("append");
    tokio::time::timeout(Duration::from_secs(5), mine.changed())
        .await
        .expect("woken in time")
        .expect("wake channel open");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), other.changed())
            .await
            .is_err(),
        "another user's watcher is not woken"
    );
}

/// One test per check of this contract for a backend:
/// `live_log_contract!(memory, make)` where `make(check_name)` returns a
/// `feed_testkit::Backend<dyn LiveLog>` keeping [`CONTRACT_CAP`] entries.
#[macro_export]
macro_rules! live_log_contract {
    ($backend:ident, $make:ident) => {
        feed_testkit::contract_tests!(
            $backend,
            $make,
            notify::live::contract,
            [
                entries_read_back_in_order_after_any_id,
                each_user_reads_only_their_own_log,
                a_log_keeps_at_least_its_newest_cap_entries,
                an_append_wakes_that_users_watchers_only,
            ]
        );
    };
}
