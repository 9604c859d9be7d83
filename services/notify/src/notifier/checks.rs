//! Checks on request fields, each error naming its field.

use feed_core::{ApiError, validate};
use feed_proto::notify::v1::Link;

pub(super) fn check_event_id(id: &str) -> Result<(), ApiError> {
    validate::text("event_id", id, 128, false)
}

/// Object types and actions are short lowercase names.
pub(super) fn check_name(field: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.is_empty() || s.len() > max {
        return Err(ApiError::invalid(field, format!("must be 1..={max} characters")));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(ApiError::invalid(field, "only a-z, 0-9, '_', '-' and '.'"));
    }
    Ok(())
}

/// Bodies may hold newlines and tabs, not other control characters.
pub(super) fn check_body(field: &str, s: &str, max: usize, optional: bool) -> Result<(), ApiError> {
    if s.trim().is_empty() && !optional {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if s.chars().count() > max {
        return Err(ApiError::invalid(field, format!("at most {max} characters")));
    }
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

pub(super) fn check_links(links: &[Link]) -> Result<(), ApiError> {
    validate::batch_len("links", links, 10)?;
    for (i, l) in links.iter().enumerate() {
        validate::text(&format!("links[{i}].title"), &l.title, 200, true)?;
        validate::text(&format!("links[{i}].url"), &l.url, 2048, false)?;
        if !(l.url.starts_with("https://") || l.url.starts_with("http://")) {
            return Err(ApiError::invalid(format!("links[{i}].url"), "must be an http(s) URL"));
        }
    }
    Ok(())
}
