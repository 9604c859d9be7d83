//! The parsers every request goes through, fed arbitrary input for a
//! bounded number of cases (the equivalent of a fuzz target run in CI):
//! cursors, page tokens and feed refs never panic, refuse what they did not
//! issue by naming the field, and read back what they issued.

use feed_core::{ApiError, Cursor, FeedRef, PageToken};
use proptest::prelude::*;

fn names(e: &ApiError, field: &str) -> bool {
    matches!(e, ApiError::InvalidArgument { field: f, .. } if f == field)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn any_text_as_a_cursor_is_a_cursor_or_a_refusal_naming_the_field(s in ".{0,2000}") {
        if let Err(e) = Cursor::decode("cursor", &s) {
            prop_assert!(names(&e, "cursor"), "{e:?}");
        }
    }

    #[test]
    fn tampered_cursors_never_panic(before in any::<u64>(), flip in 0usize..16, byte in any::<u8>()) {
        let mut raw = Cursor { before_id: before }.encode().into_bytes();
        let at = flip % raw.len();
        raw[at] = byte;
        if let Ok(s) = String::from_utf8(raw)
            && let Err(e) = Cursor::decode("cursor", &s)
        {
            prop_assert!(names(&e, "cursor"), "{e:?}");
        }
    }

    #[test]
    fn cursors_and_tokens_read_back_what_they_issued(
        before in any::<u64>(),
        tag in any::<u8>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let own = Cursor { before_id: before };
        prop_assert_eq!(Cursor::decode("cursor", &own.encode()).expect("own cursor"), Some(own));
        let token = PageToken::encode(tag, &payload);
        prop_assert_eq!(PageToken::decode("page_token", tag, &token).expect("own token"), Some(payload.clone()));
        let refused = PageToken::decode("page_token", tag.wrapping_add(1), &token);
        prop_assert!(matches!(&refused, Err(e) if names(e, "page_token")), "another listing's token: {refused:?}");
    }

    #[test]
    fn any_text_as_a_feed_is_a_feed_that_prints_back_or_a_refusal(s in "\\PC{0,300}|[a-z]{1,10}:[ -~]{0,300}") {
        match FeedRef::parse_field("feed", &s) {
            Ok(f) => {
                prop_assert_eq!(FeedRef::parse(f.as_str()).expect("reparse"), f.clone());
                prop_assert_eq!(format!("{}:{}", f.kind(), f.key()), f.as_str());
            }
            Err(e) => prop_assert!(names(&e, "feed"), "{e:?}"),
        }
    }
}
