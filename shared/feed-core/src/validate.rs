//! Request validation helpers: each failure names the offending field.

use crate::{ApiError, UserId};

/// Largest valid user id: ids fit a signed 64-bit column (ScyllaDB bigint)
/// so that storage order is numeric order.
pub const MAX_USER_ID: u64 = i64::MAX as u64;

/// A user id must be in 1..=MAX_USER_ID.
pub fn user_id(field: &str, id: u64) -> Result<UserId, ApiError> {
    if id == 0 || id > MAX_USER_ID {
        return Err(ApiError::invalid(field, "must be a user id in 1..=2^63-1"));
    }
    Ok(id)
}

/// A page size: 0 takes `default`, above `max` is refused (never silently large).
pub fn page_size(field: &str, requested: u32, default: u32, max: u32) -> Result<usize, ApiError> {
    match requested {
        0 => Ok(default as usize),
        n if n > max => Err(ApiError::invalid(field, format!("must be at most {max}"))),
        n => Ok(n as usize),
    }
}

/// A batch must hold at most `max` entries.
pub fn batch_len<T>(field: &str, items: &[T], max: usize) -> Result<(), ApiError> {
    if items.len() > max {
        return Err(ApiError::invalid(field, format!("at most {max} entries")));
    }
    Ok(())
}

/// A text of 1..=max characters (or 0..=max when `optional`).
pub fn text(field: &str, value: &str, max: usize, optional: bool) -> Result<(), ApiError> {
    if value.is_empty() && !optional {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(ApiError::invalid(field, format!("at most {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_user_id_is_refused_by_name() {
        let err = user_id("follower_id", 0).unwrap_err();
        assert!(err.to_string().contains("follower_id"));
        assert!(user_id("user_id", u64::MAX).is_err());
        assert_eq!(user_id("user_id", MAX_USER_ID).unwrap(), MAX_USER_ID);
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size("page_size", 0, 100, 1000).unwrap(), 100);
        assert_eq!(page_size("page_size", 7, 100, 1000).unwrap(), 7);
        assert!(page_size("page_size", 1001, 100, 1000).is_err());
    }

    #[test]
    fn text_checks_emptiness_length_and_control_chars() {
        assert!(text("verb", "", 10, false).is_err());
        assert!(text("target", "", 10, true).is_ok());
        assert!(text("verb", "abcdefghijk", 10, false).is_err());
        assert!(text("verb", "a\nb", 10, false).is_err());
    }
}
