//! Byte layouts for embedded key-value stores: big-endian integers (byte
//! order is numeric order) and length-prefixed feed names.

use crate::FeedRef;

/// `len ‖ feed`: feed names are at most 161 bytes (validated), so one length
/// byte suffices, and the length keeps `tag:a` from prefixing `tag:ab`.
pub fn feed_prefix(feed: &FeedRef) -> Vec<u8> {
    let s = feed.to_string();
    let mut k = Vec::with_capacity(s.len() + 9);
    k.push(s.len() as u8);
    k.extend_from_slice(s.as_bytes());
    k
}

/// `len ‖ feed ‖ id` (big-endian).
pub fn feed_key(feed: &FeedRef, id: u64) -> Vec<u8> {
    let mut k = feed_prefix(feed);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The big-endian u64 at `at`, or 0 when the bytes are short.
pub fn u64_at(v: &[u8], at: usize) -> u64 {
    v.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_feeds_keys_never_prefix_anothers_and_ids_sort_numerically() {
        let a = FeedRef::parse("tag:a").expect("feed");
        let ab = FeedRef::parse("tag:ab").expect("feed");
        assert!(!feed_key(&ab, 1).starts_with(&feed_prefix(&a)));
        assert!(feed_key(&a, 255) < feed_key(&a, 256));
        assert_eq!(u64_at(&feed_key(&a, 7), feed_prefix(&a).len()), 7);
        assert_eq!(u64_at(&[1, 2], 0), 0);
    }
}
