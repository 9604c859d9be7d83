//! Byte layouts for embedded key-value stores: big-endian integers (byte
//! order is numeric order) and length-prefixed feed names.

use crate::FeedRef;

/// `len ‖ feed`: feed names are at most 161 bytes (validated), so one length
/// byte suffices, and the length keeps `tag:a` from prefixing `tag:ab`.
pub fn feed_prefix(feed: &FeedRef) -> Vec<u8> {
    let mut k = Vec::with_capacity(feed.as_str().len() + 9);
    push_feed_prefix(&mut k, feed);
    k
}

/// Appends [`feed_prefix`] to `out`: a caller checking many feeds reuses one buffer.
pub fn push_feed_prefix(out: &mut Vec<u8>, feed: &FeedRef) {
    let s = feed.as_str();
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// `len ‖ feed ‖ id` (big-endian).
pub fn feed_key(feed: &FeedRef, id: u64) -> Vec<u8> {
    let mut k = feed_prefix(feed);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// `a ‖ b`, both big-endian: a key ordered by `a`, then `b`.
pub fn u64_pair(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

/// FNV-1a of `bytes`: a hash that is the same on every replica and release
/// (std's hashers are seeded per process), for fingerprints and ids.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
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

    #[test]
    fn pairs_sort_by_their_first_then_second_number_and_hashes_are_fixed() {
        assert!(u64_pair(1, u64::MAX) < u64_pair(2, 0));
        assert_eq!(u64_at(&u64_pair(3, 4), 8), 4);
        // FNV-1a's published test vectors: the value must never change (stored ids use it).
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
