//! Activity validation fed arbitrary activities for a bounded number of
//! cases (the equivalent of a fuzz target run in CI): it never panics, a
//! refusal names a field of the activity, and what it accepts keeps every
//! limit it promises.

use feed_core::ApiError;
use feed_core::validate::MAX_USER_ID;
use feed_proto::publish::v1::NewActivity;
use proptest::prelude::*;
use publish::validate::{Limits, new_activity};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z_.-]{1,70}",
        "\\PC{0,300}",
        "[a-z]{1,8}:[ -~]{0,40}",
        Just("\0".to_owned()),
        Just("{}".to_owned()),
    ]
}

fn id() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        1u64..100,
        Just(MAX_USER_ID),
        Just(MAX_USER_ID + 1),
        Just(u64::MAX),
        any::<u64>()
    ]
}

fn activity() -> impl Strategy<Value = NewActivity> {
    (
        (id(), text(), text(), text(), text(), any::<i64>()),
        (
            proptest::collection::vec(text(), 0..20),
            -2i32..6,
            proptest::collection::vec(id(), 0..5),
            proptest::collection::vec(id(), 0..5),
            prop_oneof![
                Just(Vec::new()),
                Just(b"{\"a\":1}".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..64)
            ],
            proptest::collection::vec(id(), 0..60),
        ),
    )
        .prop_map(
            |((actor, verb, object, target, foreign_id, time_ms), (to, visibility, allow, deny, extra, mentions))| {
                NewActivity {
                    actor,
                    verb,
                    object,
                    target,
                    foreign_id,
                    time_ms,
                    to,
                    visibility,
                    allow_user_ids: allow,
                    deny_user_ids: deny,
                    extra,
                    mentions,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn any_activity_is_accepted_within_the_limits_or_refused_naming_its_field(a in activity()) {
        let limits = Limits::default();
        match new_activity(&a, &limits) {
            Ok(to) => {
                prop_assert!((1..=MAX_USER_ID).contains(&a.actor));
                prop_assert!(!a.verb.is_empty() && a.verb.chars().count() <= 64);
                prop_assert!(a.to.len() <= limits.max_to && to.len() <= a.to.len());
                prop_assert!(a.mentions.len() <= limits.max_mentions);
                prop_assert!(a.mentions.iter().chain(&a.allow_user_ids).chain(&a.deny_user_ids).all(|u| (1..=MAX_USER_ID).contains(u)));
                prop_assert!(a.extra.len() <= limits.max_extra_bytes);
                prop_assert!(a.time_ms >= 0);
            }
            Err(ApiError::InvalidArgument { field, .. }) => prop_assert!(field.starts_with("activity."), "{field}"),
            Err(other) => prop_assert!(false, "not a refusal by field: {other:?}"),
        }
    }
}
