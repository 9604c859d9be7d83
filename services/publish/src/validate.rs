//! Validation of new activities: every failure names its field.

use feed_core::{ApiError, FeedRef, validate};
use feed_proto::common::v1::Visibility;
use feed_proto::publish::v1::NewActivity;

/// Limits on a new activity.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes of `extra`.
    pub max_extra_bytes: usize,
    /// Most `to` feeds.
    pub max_to: usize,
    /// Most allow / deny list entries.
    pub max_list: usize,
    /// Most mentions.
    pub max_mentions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_extra_bytes: 8 * 1024,
            max_to: 16,
            max_list: 1000,
            max_mentions: 50,
        }
    }
}

fn verb(field: &str, v: &str) -> Result<(), ApiError> {
    validate::text(field, v, 64, false)?;
    if !v
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(ApiError::invalid(field, "only a-z 0-9 _ . - allowed"));
    }
    Ok(())
}

/// Checks a new activity (prefix `activity.` on field names); returns its
/// parsed `to` feeds.
pub fn new_activity(a: &NewActivity, limits: &Limits) -> Result<Vec<FeedRef>, ApiError> {
    validate::user_id("activity.actor", a.actor)?;
    verb("activity.verb", &a.verb)?;
    validate::text("activity.object", &a.object, 256, false)?;
    validate::text("activity.target", &a.target, 256, true)?;
    validate::text("activity.foreign_id", &a.foreign_id, 128, false)?;
    if a.time_ms < 0 {
        return Err(ApiError::invalid("activity.time_ms", "must not be negative"));
    }
    validate::batch_len("activity.to", &a.to, limits.max_to)?;
    let mut to = Vec::with_capacity(a.to.len());
    for (i, raw) in a.to.iter().enumerate() {
        let f = FeedRef::parse_nth("activity.to", i, raw)?;
        if !to.contains(&f) {
            to.push(f);
        }
    }
    visibility(a)?;
    validate::batch_len("activity.allow_user_ids", &a.allow_user_ids, limits.max_list)?;
    validate::batch_len("activity.deny_user_ids", &a.deny_user_ids, limits.max_list)?;
    validate::batch_len("activity.mentions", &a.mentions, limits.max_mentions)?;
    for (field, ids) in [
        ("activity.allow_user_ids", &a.allow_user_ids),
        ("activity.deny_user_ids", &a.deny_user_ids),
        ("activity.mentions", &a.mentions),
    ] {
        for (i, id) in ids.iter().enumerate() {
            validate::user_id(&format!("{field}[{i}]"), *id)?;
        }
    }
    extra(&a.extra, limits)?;
    Ok(to)
}

/// The visibility enum must be known.
pub fn visibility(a: &NewActivity) -> Result<Visibility, ApiError> {
    Visibility::try_from(a.visibility).map_err(|_| ApiError::invalid("activity.visibility", "unknown value"))
}

/// `extra` is JSON of bounded size.
pub fn extra(bytes: &[u8], limits: &Limits) -> Result<(), ApiError> {
    if bytes.len() > limits.max_extra_bytes {
        return Err(ApiError::invalid(
            "activity.extra",
            format!("at most {} bytes", limits.max_extra_bytes),
        ));
    }
    if !bytes.is_empty() && serde_json::from_slice::<serde_json::Value>(bytes).is_err() {
        return Err(ApiError::invalid("activity.extra", "must be JSON"));
    }
    Ok(())
}

/// Validates a verb on its own (updates).
pub fn verb_field(v: &str) -> Result<(), ApiError> {
    verb("values.verb", v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> NewActivity {
        NewActivity {
            actor: 1,
            verb: "post".into(),
            object: "post:1".into(),
            foreign_id: "f1".into(),
            ..NewActivity::default()
        }
    }

    fn field_of(a: NewActivity) -> String {
        new_activity(&a, &Limits::default()).expect_err("invalid").to_string()
    }

    #[test]
    fn bad_fields_are_named() {
        assert!(
            field_of(NewActivity {
                verb: String::new(),
                ..ok()
            })
            .contains("activity.verb")
        );
        assert!(
            field_of(NewActivity {
                verb: "Post".into(),
                ..ok()
            })
            .contains("activity.verb")
        );
        assert!(
            field_of(NewActivity {
                foreign_id: "x".repeat(129),
                ..ok()
            })
            .contains("activity.foreign_id")
        );
        assert!(
            field_of(NewActivity {
                to: vec!["bogus:1".into()],
                ..ok()
            })
            .contains("activity.to[0]")
        );
        assert!(
            field_of(NewActivity {
                extra: vec![b'{'; 9000],
                ..ok()
            })
            .contains("activity.extra")
        );
        assert!(
            field_of(NewActivity {
                extra: b"{nope".to_vec(),
                ..ok()
            })
            .contains("activity.extra")
        );
        assert!(field_of(NewActivity { visibility: 99, ..ok() }).contains("activity.visibility"));
        assert!(field_of(NewActivity { actor: 0, ..ok() }).contains("activity.actor"));
    }

    #[test]
    fn valid_activity_passes_with_deduplicated_targets() {
        let a = NewActivity {
            to: vec!["tag:rust".into(), "tag:rust".into()],
            extra: br#"{"k": [1, 2]}"#.to_vec(),
            ..ok()
        };
        assert_eq!(new_activity(&a, &Limits::default()).expect("valid").len(), 1);
    }
}
