//! Feed references: `kind:key`, e.g. `user:42`, `tag:rust`, `group:7`.

use std::fmt;
use std::str::FromStr;

use crate::{ApiError, UserId};

/// The feed kinds the platform knows. A kind outside this list is refused,
/// so a typo (`usr:1`) fails loudly instead of creating a feed nobody reads.
pub const KNOWN_KINDS: &[&str] = &["user", "tag", "group", "company", "object", "profile"];

const MAX_KEY: usize = 128;

/// A validated feed reference. Cloning is a reference count: every home
/// read copies the reader's followed feeds around.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeedRef {
    /// `kind:key`. No kind is a prefix of another, so the text orders as
    /// (kind, key) does.
    text: std::sync::Arc<str>,
    /// Where the `:` is.
    colon: usize,
}

/// Why a feed reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedRefError {
    /// No `:` separator.
    #[error("must be kind:key (e.g. user:42, tag:rust)")]
    Syntax,
    /// The kind is not one of [`KNOWN_KINDS`].
    #[error("unknown feed kind {0:?}; known kinds: user, tag, group, company, object, profile")]
    UnknownKind(String),
    /// The key is empty, too long or has a character outside `[A-Za-z0-9_.-]`.
    #[error("key must be 1..128 characters of A-Z a-z 0-9 _ . -")]
    Key,
    /// A `user:` key is not a non-zero decimal user id.
    #[error("a user feed key must be a non-zero decimal user id")]
    UserKey,
}

impl FeedRef {
    /// The personal feed of a user: `user:<id>`.
    pub fn user(id: UserId) -> Self {
        Self {
            text: format!("user:{id}").into(),
            colon: 4,
        }
    }

    /// Parses and validates `kind:key`.
    pub fn parse(s: &str) -> Result<Self, FeedRefError> {
        let (kind, key) = s.split_once(':').ok_or(FeedRefError::Syntax)?;
        if !KNOWN_KINDS.contains(&kind) {
            return Err(FeedRefError::UnknownKind(kind.chars().take(32).collect()));
        }
        let key_ok = !key.is_empty()
            && key.len() <= MAX_KEY
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !key_ok {
            return Err(FeedRefError::Key);
        }
        if kind == "user" {
            // Canonical form only, so `user:042` and `user:42` cannot be two feeds.
            match key.parse::<u64>() {
                Ok(id) if id != 0 && id <= crate::validate::MAX_USER_ID && id.to_string() == key => {}
                _ => return Err(FeedRefError::UserKey),
            }
        }
        Ok(Self {
            text: s.into(),
            colon: kind.len(),
        })
    }

    /// Parses a request field, naming it in the error.
    pub fn parse_field(field: &str, s: &str) -> Result<Self, ApiError> {
        Self::parse(s).map_err(|e| ApiError::invalid(field, e.to_string()))
    }

    /// Parses item `i` of the list `field`; the error names `field[i]`
    /// (formatted only then: lists of feeds come with every home read).
    pub fn parse_nth(field: &str, i: usize, s: &str) -> Result<Self, ApiError> {
        Self::parse(s).map_err(|e| ApiError::invalid(format!("{field}[{i}]"), e.to_string()))
    }

    /// The kind (`user`, `tag`...).
    pub fn kind(&self) -> &str {
        &self.text[..self.colon]
    }

    /// The key within the kind.
    pub fn key(&self) -> &str {
        &self.text[self.colon + 1..]
    }

    /// `kind:key`, as [`Display`](fmt::Display) writes it, without allocating.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The owner, when this is a user's personal feed.
    pub fn user_id(&self) -> Option<UserId> {
        if self.kind() == "user" {
            self.key().parse().ok()
        } else {
            None
        }
    }
}

impl fmt::Display for FeedRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for FeedRef {
    type Err = FeedRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_known_kinds() {
        assert_eq!(FeedRef::parse("user:42").unwrap().user_id(), Some(42));
        assert_eq!(FeedRef::parse("tag:rust").unwrap().to_string(), "tag:rust");
        assert_eq!(FeedRef::parse("object:book-9").unwrap().key(), "book-9");
    }

    #[test]
    fn feeds_order_by_kind_then_key_and_show_as_parsed() {
        let names = ["user:5", "tag:b", "tag:ab", "company:x", "user:10", "group:a"];
        let mut refs: Vec<FeedRef> = names.iter().map(|n| FeedRef::parse(n).unwrap()).collect();
        refs.sort();
        let mut pairs: Vec<(&str, &str)> = names.iter().map(|n| n.split_once(':').unwrap()).collect();
        pairs.sort();
        let back: Vec<(&str, &str)> = refs.iter().map(|r| (r.kind(), r.key())).collect();
        assert_eq!(back, pairs);
        assert_eq!(FeedRef::user(7), FeedRef::parse("user:7").unwrap());
        assert_eq!(FeedRef::user(7).as_str(), "user:7");
        assert_eq!(FeedRef::parse("tag:rust").unwrap().to_string(), "tag:rust");
    }

    #[test]
    fn refuses_malformed_feeds() {
        assert_eq!(FeedRef::parse("no colon"), Err(FeedRefError::Syntax));
        assert!(matches!(FeedRef::parse("usr:1"), Err(FeedRefError::UnknownKind(_))));
        assert_eq!(FeedRef::parse("tag:"), Err(FeedRefError::Key));
        assert_eq!(FeedRef::parse("tag:a b"), Err(FeedRefError::Key));
        assert_eq!(FeedRef::parse("user:0"), Err(FeedRefError::UserKey));
        assert_eq!(FeedRef::parse("user:042"), Err(FeedRefError::UserKey));
        assert_eq!(FeedRef::parse("user:abc"), Err(FeedRefError::UserKey));
        assert_eq!(
            FeedRef::parse(&format!("tag:{}", "a".repeat(129))),
            Err(FeedRefError::Key)
        );
    }

    #[test]
    fn parse_field_names_the_field() {
        let err = FeedRef::parse_field("feed", "no colon").unwrap_err();
        assert!(err.to_string().contains("feed"));
    }

    proptest! {
        #[test]
        fn display_round_trips(kind in prop::sample::select(KNOWN_KINDS.to_vec()), key in "[A-Za-z0-9_.-]{1,128}", uid in 1u64..=crate::validate::MAX_USER_ID) {
            let s = if kind == "user" { format!("user:{uid}") } else { format!("{kind}:{key}") };
            let parsed = FeedRef::parse(&s).unwrap();
            prop_assert_eq!(parsed.to_string(), s);
        }
    }
}
