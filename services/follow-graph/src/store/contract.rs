//! The contract every [`GraphStore`] backend passes: each check runs as a
//! test of its own per backend (the macro at the end) on a fresh, empty
//! store built with [`contract_policy`].

use feed_core::FeedRef;

use super::{Cause, GraphPolicy, GraphStore, SHARD_BITS, StoreError};

/// The policy the contract assumes: celebrity at 3 followers, back below 2.
pub fn contract_policy() -> GraphPolicy {
    GraphPolicy::new(3, 0.5, 50).with_pair_limits(5, 5)
}

fn feed(s: &str) -> FeedRef {
    FeedRef::parse(s).expect("valid feed in contract")
}

/// Contract check: follow is idempotent and counted once.
pub async fn follow_is_idempotent_and_counted_once(s: &dyn GraphStore) {
    let f = feed("tag:contract-a");
    let first = s.follow(1, &f).await.expect("follow");
    assert!(first.changed && first.edge.following);
    let again = s.follow(1, &f).await.expect("follow again");
    assert!(!again.changed);
    assert_eq!(
        again.edge.version, first.edge.version,
        "a retry does not bump the version"
    );
    assert_eq!(
        s.feed_counts(std::slice::from_ref(&f)).await.expect("counts")[0].followers,
        1
    );
    assert_eq!(s.following_counts(&[1]).await.expect("counts"), vec![1]);
    assert_eq!(
        s.is_following(1, std::slice::from_ref(&f)).await.expect("is_following"),
        vec![true]
    );
}

/// Contract check: unfollow is idempotent and versions only grow.
pub async fn unfollow_is_idempotent_and_versions_only_grow(s: &dyn GraphStore) {
    let f = feed("tag:contract-b");
    let v1 = s.follow(2, &f).await.expect("follow").edge.version;
    let un = s.unfollow(2, &f).await.expect("unfollow");
    assert!(un.changed && !un.edge.following);
    assert!(un.edge.version > v1);
    assert!(!s.unfollow(2, &f).await.expect("unfollow again").changed);
    let v3 = s.follow(2, &f).await.expect("refollow").edge.version;
    assert!(v3 > un.edge.version);
    let states = s.edge_states(&[(2, f.clone()), (3, f.clone())]).await.expect("states");
    assert_eq!(states[0].version, v3);
    assert!(states[0].following);
    assert_eq!(states[1].version, 0, "an edge that never existed has version 0");
    assert_eq!(s.feed_counts(&[f]).await.expect("counts")[0].followers, 1);
}

/// Contract check: block removes follows both ways and prevents new ones.
pub async fn block_removes_follows_both_ways_and_prevents_new_ones(s: &dyn GraphStore) {
    let (a, b) = (10, 11);
    s.follow(a, &FeedRef::user(b)).await.expect("a follows b");
    s.follow(b, &FeedRef::user(a)).await.expect("b follows a");
    let block = s.block(a, b).await.expect("block");
    assert!(block.changed);
    assert_eq!(block.removed.len(), 2);
    assert!(block.removed.iter().all(|e| !e.following));
    assert!(!s.block(a, b).await.expect("block again").changed);
    let rel = s.relationships(a, &[b]).await.expect("rel")[0];
    assert!(rel.blocking && !rel.following && !rel.followed_by);
    assert!(s.relationships(b, &[a]).await.expect("rel")[0].blocked_by);
    assert_eq!(
        s.blocks_and_mutes(a, &[b, 12]).await.expect("blocks"),
        vec![(true, false), (false, false)]
    );
    assert_eq!(
        s.blocks_and_mutes(b, &[a]).await.expect("blocks"),
        vec![(true, false)],
        "either way"
    );
    for (x, y) in [(a, b), (b, a)] {
        let err = s.follow(x, &FeedRef::user(y)).await.expect_err("blocked follow");
        assert!(matches!(err, StoreError::Blocked { .. }), "{err:?}");
    }
    assert_eq!(
        s.feed_counts(&[FeedRef::user(a), FeedRef::user(b)])
            .await
            .expect("counts")[0]
            .followers,
        0
    );
    assert!(s.unblock(a, b).await.expect("unblock"));
    assert!(!s.unblock(a, b).await.expect("unblock again"));
    assert!(
        s.follow(b, &FeedRef::user(a))
            .await
            .expect("follow after unblock")
            .changed
    );
}

/// Contract check: mute keeps the follow and marks the follower.
pub async fn mute_keeps_the_follow_and_marks_the_follower(s: &dyn GraphStore) {
    let (u, t) = (20, 21);
    let f = FeedRef::user(t);
    let v0 = s.follow(u, &f).await.expect("follow").edge.version;
    let m = s.set_mute(u, t, true).await.expect("mute");
    assert!(m.changed && m.edge.following && m.edge.muted && m.edge.version > v0);
    assert!(!s.set_mute(u, t, true).await.expect("mute again").changed);
    let followers = s.list_followers(&f, 0, 10).await.expect("followers");
    assert_eq!(followers.len(), 1);
    assert!(followers[0].muted);
    assert!(s.relationships(u, &[t]).await.expect("rel")[0].muting);
    assert!(
        s.relationships(t, &[u]).await.expect("rel")[0].muted_by,
        "the muted side sees who mutes it"
    );
    assert_eq!(s.blocks_and_mutes(u, &[t]).await.expect("mutes"), vec![(false, true)]);
    assert_eq!(s.blocks_and_mutes(t, &[u]).await.expect("mutes"), vec![(false, false)]);
    let un = s.set_mute(u, t, false).await.expect("unmute");
    assert!(un.changed && !un.edge.muted && un.edge.version > m.edge.version);
    assert!(!s.list_followers(&f, 0, 10).await.expect("followers")[0].muted);
    // Muting someone you do not follow is remembered for a later follow.
    s.set_mute(u, 22, true).await.expect("mute unfollowed");
    assert!(s.follow(u, &FeedRef::user(22)).await.expect("follow").edge.muted);
}

/// Contract check: followers page in id order without skips or repeats.
pub async fn followers_page_in_id_order_without_skips_or_repeats(s: &dyn GraphStore) {
    let f = feed("group:contract-paging");
    for u in (100..130).rev() {
        s.follow(u, &f).await.expect("follow");
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = s.list_followers(&f, after, 7).await.expect("page");
        if page.is_empty() {
            break;
        }
        // Edges change between pages: a removal behind the cursor and an
        // insert ahead of it must neither repeat nor skip an item.
        if seen.is_empty() {
            s.unfollow(100, &f).await.expect("unfollow behind");
            s.follow(200, &f).await.expect("follow ahead");
        }
        after = page.last().expect("non-empty").user;
        seen.extend(page.iter().map(|x| x.user));
    }
    let mut expected: Vec<u64> = (100..130).collect();
    expected.push(200);
    assert_eq!(seen, expected);
}

/// Contract check: following pages in feed order.
pub async fn following_pages_in_feed_order(s: &dyn GraphStore) {
    let names = ["tag:b", "tag:a", "user:5", "company:x", "tag:ab"];
    for n in names {
        s.follow(30, &feed(n)).await.expect("follow");
    }
    let mut all = Vec::new();
    let mut after: Option<FeedRef> = None;
    loop {
        let page = s.list_following(30, after.as_ref(), 2).await.expect("page");
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        all.extend(page.into_iter().map(|f| f.to_string()));
    }
    let mut sorted: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    sorted.sort();
    assert_eq!(all, sorted);
}

/// A backend that keeps whole lists must drop them on every edge change,
/// including the follows a block removes on the other side.
/// Contract check: whole follow lists show every change at once.
pub async fn whole_follow_lists_show_every_change_at_once(s: &dyn GraphStore) {
    let all = async |user| -> Vec<String> {
        let list = s.list_following(user, None, 100).await.expect("list");
        list.iter().map(|f| f.to_string()).collect()
    };
    assert!(all(40).await.is_empty());
    s.follow(40, &feed("user:41")).await.expect("follow");
    assert_eq!(all(40).await, ["user:41"]);
    s.follow(40, &feed("tag:lists")).await.expect("follow");
    assert_eq!(all(40).await, ["tag:lists", "user:41"]);
    s.unfollow(40, &feed("tag:lists")).await.expect("unfollow");
    assert_eq!(all(40).await, ["user:41"]);
    // 41 blocks 40: 40's follow of 41 goes, though 40 wrote nothing.
    s.block(41, 40).await.expect("block");
    assert!(all(40).await.is_empty());
    s.unblock(41, 40).await.expect("unblock");
    s.follow(40, &feed("user:41")).await.expect("follow again");
    assert_eq!(all(40).await, ["user:41"]);
    assert_eq!(
        s.list_following(40, None, 1).await.expect("short page").len(),
        1,
        "a page shorter than the list"
    );
}

/// Contract check: shards address follower ranges.
pub async fn shards_address_follower_ranges(s: &dyn GraphStore) {
    let f = feed("tag:contract-shards");
    let ids = [
        5u64,
        6,
        (1 << SHARD_BITS) + 1,
        (3 << SHARD_BITS) + 9,
        (3 << SHARD_BITS) + 10,
    ];
    for u in ids {
        s.follow(u, &f).await.expect("follow");
    }
    assert_eq!(s.follower_shards(&f).await.expect("shards"), vec![0, 1, 3]);
    let p = s.page_shard(&f, 3, 0, 1).await.expect("page");
    assert_eq!(
        p.iter().map(|x| x.user).collect::<Vec<_>>(),
        vec![(3 << SHARD_BITS) + 9]
    );
    let p = s.page_shard(&f, 3, p[0].user, 10).await.expect("page");
    assert_eq!(
        p.iter().map(|x| x.user).collect::<Vec<_>>(),
        vec![(3 << SHARD_BITS) + 10]
    );
    assert!(s.page_shard(&f, 2, 0, 10).await.expect("empty shard").is_empty());
    s.unfollow((1 << SHARD_BITS) + 1, &f).await.expect("unfollow");
    // A backend may keep listing an emptied shard (a fanout sub-job over it
    // finds nothing); it must never lose a non-empty one.
    let shards = s.follower_shards(&f).await.expect("shards");
    assert!(shards.contains(&0) && shards.contains(&3));
    assert!(s.page_shard(&f, 1, 0, 10).await.expect("emptied shard").is_empty());
}

/// Contract check: celebrity flag has hysteresis.
pub async fn celebrity_flag_has_hysteresis(s: &dyn GraphStore) {
    // contract_policy: celebrity at 3, stays one down to 2.
    let f = feed("tag:contract-celebrity");
    for u in 40..42 {
        s.follow(u, &f).await.expect("follow");
    }
    assert!(!s.feed_counts(std::slice::from_ref(&f)).await.expect("c")[0].celebrity);
    s.follow(42, &f).await.expect("follow");
    assert!(s.feed_counts(std::slice::from_ref(&f)).await.expect("c")[0].celebrity);
    s.unfollow(42, &f).await.expect("unfollow");
    assert!(
        s.feed_counts(std::slice::from_ref(&f)).await.expect("c")[0].celebrity,
        "hysteresis keeps it at 2"
    );
    s.unfollow(41, &f).await.expect("unfollow");
    assert!(!s.feed_counts(std::slice::from_ref(&f)).await.expect("c")[0].celebrity);
    s.follow(41, &f).await.expect("follow");
    assert!(
        !s.feed_counts(&[f]).await.expect("c")[0].celebrity,
        "re-entry needs the full threshold"
    );
}

/// Contract check: follow limit is enforced.
pub async fn follow_limit_is_enforced(s: &dyn GraphStore) {
    let max = contract_policy().max_following;
    for i in 0..max {
        s.follow(50, &feed(&format!("tag:limit-{i}")))
            .await
            .expect("follow under limit");
    }
    let err = s.follow(50, &feed("tag:limit-over")).await.expect_err("over limit");
    assert_eq!(err, StoreError::TooManyFollows(max));
    assert_eq!(s.following_counts(&[50]).await.expect("count"), vec![max]);
}

/// Contract check: the blocks and mutes one user holds are capped; the
/// same block or mute again, and a new one after lifting one, still work.
pub async fn blocks_and_mutes_per_user_are_capped(s: &dyn GraphStore) {
    let (max_blocks, max_mutes) = (contract_policy().max_blocks, contract_policy().max_mutes);
    for t in 0..max_blocks {
        s.block(80, 1000 + t).await.expect("block under the cap");
    }
    assert_eq!(
        s.block(80, 2000).await.expect_err("one more"),
        StoreError::TooManyBlocks(max_blocks)
    );
    assert!(!s.block(80, 1000).await.expect("the same block again").changed);
    assert!(s.unblock(80, 1000).await.expect("unblock"));
    assert!(s.block(80, 2000).await.expect("room again").changed);
    for t in 0..max_mutes {
        s.set_mute(81, 1000 + t, true).await.expect("mute under the cap");
    }
    assert_eq!(
        s.set_mute(81, 2000, true).await.expect_err("one more"),
        StoreError::TooManyMutes(max_mutes)
    );
    assert!(!s.set_mute(81, 1000, true).await.expect("the same mute again").changed);
    assert!(s.set_mute(81, 1000, false).await.expect("unmute").changed);
    assert!(s.set_mute(81, 2000, true).await.expect("room again").changed);
}

/// Contract check: membership is its own relation: set and lifted once,
/// apart from following, listed in id order per feed.
pub async fn membership_is_its_own_relation_listed_per_feed(s: &dyn GraphStore) {
    let group = feed("group:contract");
    let other = feed("group:other");
    assert!(s.set_member(&group, 92, true).await.expect("add"));
    assert!(!s.set_member(&group, 92, true).await.expect("again"), "idempotent");
    assert!(s.set_member(&group, 90, true).await.expect("add"));
    assert!(s.set_member(&group, 91, true).await.expect("add"));
    assert_eq!(
        s.is_member(92, &[group.clone(), other.clone()]).await.expect("is"),
        [true, false]
    );
    assert_eq!(
        s.is_following(92, std::slice::from_ref(&group)).await.expect("follows"),
        [false],
        "not a follow"
    );
    s.follow(93, &group).await.expect("follow");
    assert_eq!(
        s.is_member(93, std::slice::from_ref(&group)).await.expect("is"),
        [false],
        "a follow is not membership"
    );
    assert_eq!(s.list_members(&group, 0, 10).await.expect("list"), [90, 91, 92]);
    assert_eq!(s.list_members(&group, 90, 1).await.expect("page"), [91]);
    assert!(s.list_members(&other, 0, 10).await.expect("none").is_empty());
    assert!(s.set_member(&group, 91, false).await.expect("remove"));
    assert!(!s.set_member(&group, 91, false).await.expect("again"));
    assert_eq!(s.list_members(&group, 0, 10).await.expect("list"), [90, 92]);
}

/// Contract check: graph version bumps on every change.
pub async fn graph_version_bumps_on_every_change(s: &dyn GraphStore) {
    let read = || async { s.graph_versions(&[60, 61]).await.expect("versions") };
    let v0 = read().await;
    s.follow(60, &feed("tag:gv")).await.expect("follow");
    let v1 = read().await;
    assert!(v1[0] > v0[0]);
    s.set_mute(60, 61, true).await.expect("mute");
    let v2 = read().await;
    assert!(v2[0] > v1[0]);
    s.block(61, 60).await.expect("block");
    let v3 = read().await;
    assert!(v3[0] > v2[0] && v3[1] > v2[1], "a block changes both users' graphs");
    s.follow(60, &feed("tag:gv")).await.expect("idempotent follow");
    assert_eq!(read().await, v3, "a no-op changes no version");
}

/// Contract check: every edge change is logged in order.
pub async fn every_edge_change_is_logged_in_order(s: &dyn GraphStore) {
    let all = s.edge_changes(0, 100_000).await.expect("log");
    let last = all.last().map(|c| c.seq).unwrap_or(0);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "positions only grow");
    let f = FeedRef::user(71);
    s.follow(70, &f).await.expect("follow");
    s.follow(70, &f).await.expect("idempotent follow logs nothing");
    s.set_mute(70, 71, true).await.expect("mute");
    s.unfollow(70, &f).await.expect("unfollow");
    s.follow(72, &FeedRef::user(70)).await.expect("follow");
    s.block(70, 72).await.expect("block");
    let tail = s.edge_changes(last, 100).await.expect("tail");
    let causes: Vec<(u64, Cause, bool)> = tail
        .iter()
        .map(|c| (c.follower_id, Cause::try_from(c.cause).expect("cause"), c.following))
        .collect();
    assert_eq!(
        causes,
        vec![
            (70, Cause::Follow, true),
            (70, Cause::Mute, true),
            (70, Cause::Unfollow, false),
            (72, Cause::Follow, true),
            (72, Cause::Block, false),
        ]
    );
    assert!(tail[0].edge_version < tail[1].edge_version && tail[1].edge_version < tail[2].edge_version);
    assert_eq!(
        s.edge_changes(tail[3].seq, 100).await.expect("resume").len(),
        1,
        "resuming skips what was read"
    );
    // A lifted block is logged for both sides, on the edge to the other's
    // user feed, with a version above every earlier change of that edge.
    s.unblock(70, 72).await.expect("unblock");
    let lifted = s.edge_changes(tail[4].seq, 100).await.expect("unblock tail");
    let got: Vec<(u64, String, Cause, bool)> = lifted
        .iter()
        .map(|c| {
            let cause = Cause::try_from(c.cause).expect("cause");
            (c.follower_id, c.feed.clone(), cause, c.following)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (70, "user:72".to_string(), Cause::Unblock, false),
            (72, "user:70".to_string(), Cause::Unblock, false),
        ]
    );
    assert!(
        lifted[1].edge_version > tail[4].edge_version,
        "the block's edge moved on"
    );
    let states = s
        .edge_states(&[(70, FeedRef::user(72)), (72, FeedRef::user(70))])
        .await
        .expect("states");
    assert_eq!(
        states.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![lifted[0].edge_version, lifted[1].edge_version]
    );
}

/// Contract check: trimming removes the changes below a position and keeps
/// every change at or above it.
pub async fn the_edge_log_is_trimmed_below_a_position(s: &dyn GraphStore) {
    for u in 80..85 {
        s.follow(u, &FeedRef::user(90)).await.expect("follow");
    }
    let all: Vec<u64> = s
        .edge_changes(0, 100_000)
        .await
        .expect("log")
        .iter()
        .map(|c| c.seq)
        .collect();
    let cut = all[all.len() - 2];
    s.trim_edge_log(cut).await.expect("trim");
    let seqs = |v: Vec<crate::store::EdgeLogEntry>| v.iter().map(|c| c.seq).collect::<Vec<u64>>();
    assert_eq!(
        seqs(s.edge_changes(0, 100_000).await.expect("log")),
        all[all.len() - 2..].to_vec(),
        "the two newest are kept"
    );
    s.trim_edge_log(cut).await.expect("trim again");
    s.trim_edge_log(0).await.expect("trim nothing");
    assert_eq!(s.edge_changes(0, 100_000).await.expect("log").len(), 2);
}

/// One test per check of this contract for a backend:
/// `graph_store_contract!(embedded, make)` where `make(check_name)` returns a
/// [`feed_testkit::Backend`] (see `feed_testkit::contract_tests`).
#[macro_export]
macro_rules! graph_store_contract {
    ($backend:ident, $make:ident) => {
        feed_testkit::contract_tests!(
            $backend,
            $make,
            follow_graph::store::contract,
            [
                follow_is_idempotent_and_counted_once,
                unfollow_is_idempotent_and_versions_only_grow,
                block_removes_follows_both_ways_and_prevents_new_ones,
                mute_keeps_the_follow_and_marks_the_follower,
                followers_page_in_id_order_without_skips_or_repeats,
                following_pages_in_feed_order,
                whole_follow_lists_show_every_change_at_once,
                shards_address_follower_ranges,
                celebrity_flag_has_hysteresis,
                follow_limit_is_enforced,
                blocks_and_mutes_per_user_are_capped,
                membership_is_its_own_relation_listed_per_feed,
                graph_version_bumps_on_every_change,
                every_edge_change_is_logged_in_order,
                the_edge_log_is_trimmed_below_a_position
            ]
        );
    };
}
