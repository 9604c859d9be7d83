//! Who may see an activity: one rule for every reader (timeline, feed
//! pages, hydration), enforced at read time (DESIGN Invariant 5).

use feed_proto::common::v1::{Activity, ActivityStatus, Visibility};

use crate::UserId;

/// The distinct authors of `activities` other than `viewer`, sorted: the
/// users a reader's relations (blocks, mutes) are looked up for.
pub fn other_actors<'a>(activities: impl IntoIterator<Item = &'a Activity>, viewer: UserId) -> Vec<UserId> {
    let mut actors: Vec<UserId> = activities
        .into_iter()
        .map(|a| a.actor)
        .filter(|a| *a != viewer)
        .collect();
    actors.sort_unstable();
    actors.dedup();
    actors
}

/// Whether `viewer` (None = anonymous) may see `a`. `viewer_follows_actor`
/// answers "does the viewer follow user:<actor>" and is only asked for
/// followers-only items.
pub fn can_see(a: &Activity, viewer: Option<UserId>, viewer_follows_actor: impl FnOnce() -> bool) -> bool {
    if a.status == ActivityStatus::Deleted as i32 {
        return false;
    }
    if viewer == Some(a.actor) {
        return true;
    }
    match Visibility::try_from(a.visibility).unwrap_or(Visibility::Public) {
        Visibility::Unspecified | Visibility::Public => true,
        Visibility::Followers => viewer.is_some() && viewer_follows_actor(),
        Visibility::AllowList => viewer.is_some_and(|v| a.allow_user_ids.contains(&v)),
        // Anonymous readers see public items only: a denied user could
        // otherwise read the item logged out.
        Visibility::DenyList => viewer.is_some_and(|v| !a.deny_user_ids.contains(&v)),
        Visibility::Private => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_actors_are_distinct_sorted_and_leave_out_the_viewer() {
        let by = |actor| Activity {
            actor,
            ..Activity::default()
        };
        let activities = [by(9), by(3), by(7), by(3), by(9)];
        assert_eq!(other_actors(&activities, 7), vec![3, 9]);
    }

    fn act(v: Visibility) -> Activity {
        Activity {
            id: 1,
            actor: 10,
            visibility: v as i32,
            allow_user_ids: vec![20],
            deny_user_ids: vec![30],
            status: ActivityStatus::Active as i32,
            ..Activity::default()
        }
    }

    #[test]
    fn each_visibility_admits_exactly_its_readers() {
        assert!(can_see(&act(Visibility::Public), None, || false));
        assert!(can_see(&act(Visibility::Followers), Some(5), || true));
        assert!(!can_see(&act(Visibility::Followers), Some(5), || false));
        assert!(can_see(&act(Visibility::AllowList), Some(20), || false));
        assert!(!can_see(&act(Visibility::AllowList), Some(21), || true));
        assert!(!can_see(&act(Visibility::DenyList), Some(30), || true));
        assert!(can_see(&act(Visibility::DenyList), Some(31), || false));
        assert!(!can_see(&act(Visibility::Private), Some(20), || true));
        assert!(
            can_see(&act(Visibility::Private), Some(10), || false),
            "the actor sees their own"
        );
    }

    #[test]
    fn anonymous_readers_see_public_items_only() {
        assert!(can_see(&act(Visibility::Public), None, || true));
        for v in [
            Visibility::Followers,
            Visibility::AllowList,
            Visibility::DenyList,
            Visibility::Private,
        ] {
            assert!(!can_see(&act(v), None, || true), "{v:?}");
        }
    }

    #[test]
    fn deleted_items_are_hidden_from_everyone() {
        let mut a = act(Visibility::Public);
        a.status = ActivityStatus::Deleted as i32;
        assert!(!can_see(&a, Some(10), || true));
    }
}
