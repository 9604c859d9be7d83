//! Opaque cursors and page tokens. Clients see base64; the server sees a
//! tagged, versioned payload, so a token from one call is refused by another.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::ApiError;

const CURSOR_TAG: u8 = 0xC1;

/// A timeline cursor: "items with id < before_id".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Exclusive upper bound of the next page.
    pub before_id: u64,
}

impl Cursor {
    /// Encodes for the client.
    pub fn encode(&self) -> String {
        PageToken::encode(CURSOR_TAG, &self.before_id.to_be_bytes())
    }

    /// Decodes a client's cursor; empty means "from the newest item".
    pub fn decode(field: &str, s: &str) -> Result<Option<Self>, ApiError> {
        let Some(bytes) = PageToken::decode(field, CURSOR_TAG, s)? else {
            return Ok(None);
        };
        let arr: [u8; 8] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| ApiError::invalid(field, "malformed cursor"))?;
        Ok(Some(Self {
            before_id: u64::from_be_bytes(arr),
        }))
    }
}

/// A generic page token: a tag byte naming the listing, then its payload.
pub struct PageToken;

impl PageToken {
    /// Encodes `payload` for listing `tag`.
    pub fn encode(tag: u8, payload: &[u8]) -> String {
        let mut raw = Vec::with_capacity(payload.len() + 1);
        raw.push(tag);
        raw.extend_from_slice(payload);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes a token of listing `tag`; empty means "first page".
    pub fn decode(field: &str, tag: u8, s: &str) -> Result<Option<Vec<u8>>, ApiError> {
        if s.is_empty() {
            return Ok(None);
        }
        if s.len() > 1024 {
            return Err(ApiError::invalid(field, "too long"));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| ApiError::invalid(field, "not a token issued by this service"))?;
        match raw.split_first() {
            Some((t, payload)) if *t == tag => Ok(Some(payload.to_vec())),
            _ => Err(ApiError::invalid(field, "not a token issued for this listing")),
        }
    }

    /// Encodes a u64 resume point.
    pub fn encode_u64(tag: u8, v: u64) -> String {
        Self::encode(tag, &v.to_be_bytes())
    }

    /// Decodes a u64 resume point.
    pub fn decode_u64(field: &str, tag: u8, s: &str) -> Result<Option<u64>, ApiError> {
        match Self::decode(field, tag, s)? {
            None => Ok(None),
            Some(b) => {
                let arr: [u8; 8] = b
                    .as_slice()
                    .try_into()
                    .map_err(|_| ApiError::invalid(field, "malformed token"))?;
                Ok(Some(u64::from_be_bytes(arr)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn cursor_round_trips(id in any::<u64>()) {
            let c = Cursor { before_id: id };
            prop_assert_eq!(Cursor::decode("cursor", &c.encode()).unwrap(), Some(c));
        }

        #[test]
        fn garbage_never_panics(s in ".{0,64}") {
            let _ = Cursor::decode("cursor", &s);
            let _ = PageToken::decode_u64("page_token", 1, &s);
        }
    }

    #[test]
    fn empty_cursor_means_newest() {
        assert_eq!(Cursor::decode("cursor", "").unwrap(), None);
    }

    #[test]
    fn token_of_another_listing_is_refused() {
        let t = PageToken::encode_u64(7, 5);
        let err = PageToken::decode_u64("page_token", 8, &t).unwrap_err();
        assert!(err.to_string().contains("page_token"));
    }
}
