//! The contract every [`InboxStore`] passes: each check runs as a test of
//! its own per backend (the macro at the end) on an empty store built with
//! [`contract_config`].

use crate::{InboxLimits, InboxStore};

/// Sizing the contract assumes: cap 5.
pub fn contract_config() -> InboxLimits {
    InboxLimits {
        cap: 5,
        ttl_ms: 60_000,
        cluster: false,
    }
}

/// Ids above 2^53 that differ only in their lowest bits (one millisecond,
/// one node): an f64 score would merge them.
fn id(n: u64) -> u64 {
    (1u64 << 60) + n
}

/// Contract check: marker first rebuild keeps pushes made while it ran.
pub async fn marker_first_rebuild_keeps_pushes_made_while_it_ran(s: &dyn InboxStore) {
    let provisional = id(100);
    assert!(s.mark_live(70, provisional).await.expect("mark"));
    assert!(
        !s.mark_live(70, provisional).await.expect("mark again"),
        "only one rebuilder creates it"
    );
    // Until the rebuild lands the inbox lacks what was pushed before the
    // marker: no reader may take it as live.
    assert!(!s.is_live(70).await.expect("live"), "live while being rebuilt");
    assert!(
        s.page(70, None, 10).await.expect("page").is_none(),
        "a page of an inbox being rebuilt"
    );
    // A push lands between the marker and the rebuild's outbox read.
    s.push(&[70], id(120)).await.expect("push during rebuild");
    assert!(s.page(70, None, 10).await.expect("page").is_none());
    s.rebuild(70, &[id(20), id(30)], id(20), Some(provisional))
        .await
        .expect("rebuild");
    let page = s.page(70, None, 10).await.expect("page").expect("live");
    assert_eq!(page.ids, vec![id(120), id(30), id(20)]);
    assert_eq!(
        page.floor,
        id(20),
        "the rebuild's own marker is replaced, not kept as a floor"
    );
}

/// Contract check: push reaches only live inboxes.
pub async fn push_reaches_only_live_inboxes(s: &dyn InboxStore) {
    s.rebuild(1, &[], 0, None).await.expect("rebuild");
    assert_eq!(s.push(&[1, 2], id(1)).await.expect("push"), 1);
    assert!(!s.is_live(2).await.expect("live"), "push never creates an inbox");
    assert!(s.page(2, None, 10).await.expect("page").is_none());
    assert!(!s.backfill(2, &[id(1)], 0).await.expect("backfill"));
    assert_eq!(s.page(1, None, 10).await.expect("page").expect("live").ids, vec![id(1)]);
}

/// Contract check: pages are exact and newest first.
pub async fn pages_are_exact_and_newest_first(s: &dyn InboxStore) {
    s.rebuild(10, &[id(1), id(2), id(3)], 0, None).await.expect("rebuild");
    let first = s.page(10, None, 2).await.expect("page").expect("live");
    assert_eq!(first.ids, vec![id(3), id(2)]);
    let next = s.page(10, Some(id(2)), 2).await.expect("page").expect("live");
    assert_eq!(next.ids, vec![id(1)], "the cursor is exclusive and exact");
    assert_eq!(next.floor, 0);
}

/// Contract check: trim raises the floor.
pub async fn trim_raises_the_floor(s: &dyn InboxStore) {
    s.rebuild(20, &[], 0, None).await.expect("rebuild");
    for n in 1..=7 {
        s.push(&[20], id(n)).await.expect("push");
    }
    let page = s.page(20, None, 10).await.expect("page").expect("live");
    assert_eq!(page.ids, (3..=7).rev().map(id).collect::<Vec<_>>());
    assert_eq!(page.floor, id(3), "complete only down to the oldest kept id");
}

/// Contract check: rebuild unions and keeps the lower floor.
pub async fn rebuild_unions_and_keeps_the_lower_floor(s: &dyn InboxStore) {
    s.rebuild(30, &[id(50), id(60)], id(50), None).await.expect("rebuild");
    s.push(&[30], id(70)).await.expect("push");
    // A second, deeper rebuild (e.g. racing a concurrent one) unions.
    s.rebuild(30, &[id(40), id(50)], id(40), None)
        .await
        .expect("rebuild again");
    let page = s.page(30, None, 10).await.expect("page").expect("live");
    assert_eq!(page.ids, vec![id(70), id(60), id(50), id(40)]);
    assert_eq!(page.floor, id(40));
    // A shallower one never raises the floor of a more complete inbox.
    s.rebuild(30, &[id(70)], id(65), None).await.expect("rebuild shallow");
    assert_eq!(s.page(30, None, 10).await.expect("page").expect("live").floor, id(40));
}

/// Contract check: ids below the floor are not added.
pub async fn ids_below_the_floor_are_not_added(s: &dyn InboxStore) {
    s.rebuild(40, &[id(10)], id(10), None).await.expect("rebuild");
    s.push(&[40], id(5)).await.expect("push old");
    assert!(s.backfill(40, &[id(4), id(11)], 0).await.expect("backfill"));
    let page = s.page(40, None, 10).await.expect("page").expect("live");
    assert_eq!(page.ids, vec![id(11), id(10)], "below the floor, outboxes serve");
    // A bounded backfill raises the floor to what it read down to.
    assert!(s.backfill(40, &[id(12), id(13)], id(12)).await.expect("backfill"));
    let page = s.page(40, None, 10).await.expect("page").expect("live");
    assert_eq!(page.floor, id(12));
    assert!(s.backfill(40, &[], id(1)).await.expect("backfill"));
    assert_eq!(
        s.page(40, None, 10).await.expect("page").expect("live").floor,
        id(12),
        "never lowered"
    );
}

/// Contract check: removal and eviction.
pub async fn removal_and_eviction(s: &dyn InboxStore) {
    s.rebuild(50, &[id(1), id(2), id(3)], 0, None).await.expect("rebuild");
    s.rebuild(51, &[id(2)], 0, None).await.expect("rebuild");
    s.remove(50, &[id(1)]).await.expect("remove");
    s.remove_from(&[50, 51, 52], id(2)).await.expect("remove from");
    assert_eq!(
        s.page(50, None, 10).await.expect("page").expect("live").ids,
        vec![id(3)]
    );
    let emptied = s.page(51, None, 10).await.expect("page").expect("still live");
    assert!(emptied.ids.is_empty(), "an emptied inbox stays live");
    s.evict(50).await.expect("evict");
    assert!(!s.is_live(50).await.expect("live"));
}

/// Contract check: replayed push changes nothing.
pub async fn replayed_push_changes_nothing(s: &dyn InboxStore) {
    s.rebuild(60, &[], 0, None).await.expect("rebuild");
    for _ in 0..3 {
        s.push(&[60], id(9)).await.expect("push");
    }
    assert_eq!(
        s.page(60, None, 10).await.expect("page").expect("live").ids,
        vec![id(9)]
    );
}

/// Contract check: touch reports liveness.
pub async fn touch_reports_liveness(s: &dyn InboxStore) {
    assert!(
        !s.touch(80).await.expect("touch"),
        "touching a cold user's inbox does not create it"
    );
    assert!(!s.is_live(80).await.expect("live"));
    s.rebuild(80, &[], 0, None).await.expect("rebuild");
    assert!(s.touch(80).await.expect("touch"));
}

/// One test per check of this contract for a backend:
/// `inbox_store_contract!(embedded, make)` where `make(check_name)` returns a
/// [`feed_testkit::Backend`] (see `feed_testkit::contract_tests`).
#[macro_export]
macro_rules! inbox_store_contract {
    ($backend:ident, $make:ident) => {
        feed_testkit::contract_tests!(
            $backend,
            $make,
            feed_inbox::contract,
            [
                push_reaches_only_live_inboxes,
                pages_are_exact_and_newest_first,
                trim_raises_the_floor,
                rebuild_unions_and_keeps_the_lower_floor,
                ids_below_the_floor_are_not_added,
                removal_and_eviction,
                replayed_push_changes_nothing,
                touch_reports_liveness,
                marker_first_rebuild_keeps_pushes_made_while_it_ran
            ]
        );
    };
}
