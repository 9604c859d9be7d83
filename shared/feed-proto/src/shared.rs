//! [`SharedActivity`]: an activity on its way through a response, encoded
//! from wherever it is held instead of copied into the message first.

use std::sync::Arc;

use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, decode_varint, encode_key, encode_varint};

use crate::common::v1::Activity;

/// Tags of `Activity` a passed-through activity leaves undecoded: its
/// verb, object, target, foreign id, extra and mentions. No read-time rule
/// looks at them, and they are most of its allocations.
const CARRIED_ONLY: [u32; 6] = [3, 4, 5, 6, 12, 14];

/// An activity in the `feed_proto::wire` messages, which are the public
/// messages on the wire (same tags, same bytes) with this type in place of
/// [`Activity`]. It is one of:
///
/// - **held**: a shared activity (the store's cached copy), encoded
///   straight from the `Arc`: a response no longer deep-copies each
///   activity into itself before encoding it;
/// - **passed through**: an activity decoded from a peer's answer, kept as
///   the bytes it arrived as and re-sent as they are. Only the fields
///   read-time rules need are decoded into its view (id, actor, times,
///   `to`, visibility and its lists, status, delivery mode); the others
///   (verb, object, target, foreign id, extra, mentions) read as empty
///   through [`std::ops::Deref`] and travel on in the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct SharedActivity {
    view: Arc<Activity>,
    /// The whole encoded activity, when passed through.
    encoded: Option<Vec<u8>>,
}

impl SharedActivity {
    /// Whether this activity is carried as the bytes it arrived as (its
    /// view then lacks the fields listed on the type).
    pub fn is_passed_through(&self) -> bool {
        self.encoded.is_some()
    }

    /// The whole activity (decoded from its bytes when passed through).
    pub fn into_activity(self) -> Result<Activity, prost::DecodeError> {
        match self.encoded {
            Some(bytes) => Activity::decode(bytes.as_slice()),
            None => Ok(Arc::unwrap_or_clone(self.view)),
        }
    }
}

impl From<Arc<Activity>> for SharedActivity {
    fn from(view: Arc<Activity>) -> Self {
        Self { view, encoded: None }
    }
}

impl From<Activity> for SharedActivity {
    fn from(a: Activity) -> Self {
        Arc::new(a).into()
    }
}

impl std::ops::Deref for SharedActivity {
    type Target = Activity;

    fn deref(&self) -> &Activity {
        &self.view
    }
}

impl AsRef<Activity> for SharedActivity {
    fn as_ref(&self) -> &Activity {
        &self.view
    }
}

impl Message for SharedActivity {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match &self.encoded {
            Some(bytes) => buf.put_slice(bytes),
            None => self.view.encode_raw(buf),
        }
    }

    /// Decoding keeps every field's bytes as they came and decodes the
    /// fields the view keeps from them.
    // prost 0.14 has no other way to build a `DecodeError` for a malformed
    // field than its deprecated (hidden) constructor.
    #[allow(deprecated)]
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        let encoded = self.encoded.get_or_insert_with(|| Vec::with_capacity(128));
        encode_key(tag, wire_type, encoded);
        let start = encoded.len();
        let fixed = match wire_type {
            WireType::Varint => {
                encode_varint(decode_varint(buf)?, encoded);
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => {
                let len = decode_varint(buf)?;
                encode_varint(len, encoded);
                usize::try_from(len).map_err(|_| prost::DecodeError::new("field length overflows"))?
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(prost::DecodeError::new("activity fields are never groups"));
            }
        };
        if fixed > buf.remaining() {
            return Err(prost::DecodeError::new("buffer underflow"));
        }
        let payload = encoded.len();
        encoded.resize(payload + fixed, 0);
        buf.copy_to_slice(&mut encoded[payload..]);
        if CARRIED_ONLY.contains(&tag) {
            return Ok(());
        }
        let mut field = &encoded[start..];
        Arc::make_mut(&mut self.view).merge_field(tag, wire_type, &mut field, ctx)
    }

    fn encoded_len(&self) -> usize {
        match &self.encoded {
            Some(bytes) => bytes.len(),
            None => self.view.encoded_len(),
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::v1::{ActivityStatus, Visibility};

    fn full() -> Activity {
        Activity {
            id: 1 << 40,
            actor: 7,
            verb: "post".into(),
            object: "post:9".into(),
            target: "board:3".into(),
            foreign_id: "f-1".into(),
            time_ms: 1_700_000_000_000,
            to: vec!["tag:rust".into(), "group:2".into()],
            visibility: Visibility::DenyList as i32,
            allow_user_ids: vec![3],
            deny_user_ids: vec![4, 5],
            extra: br#"{"k":"v"}"#.to_vec(),
            status: ActivityStatus::Active as i32,
            mentions: vec![8, 9],
            delivery_mode: 2,
            created_at_ms: 1_700_000_000_001,
            updated_at_ms: 1_700_000_000_002,
        }
    }

    #[test]
    fn a_held_activity_encodes_as_the_activity_itself() {
        let a = full();
        let shared = SharedActivity::from(Arc::new(a.clone()));
        assert_eq!(shared.encode_to_vec(), a.encode_to_vec());
        assert!(!shared.is_passed_through());
        assert_eq!(shared.into_activity().expect("held"), a);
    }

    #[test]
    fn a_passed_through_activity_is_resent_byte_for_byte_with_the_rules_fields_decoded() {
        let a = full();
        let bytes = a.encode_to_vec();
        let shared = SharedActivity::decode(bytes.as_slice()).expect("decodes");
        assert!(shared.is_passed_through());
        assert_eq!(shared.encode_to_vec(), bytes, "re-sent as it came");
        assert_eq!(shared.encoded_len(), bytes.len());
        // What read-time rules look at is there.
        assert_eq!((shared.id, shared.actor, shared.time_ms), (a.id, a.actor, a.time_ms));
        assert_eq!(shared.to, a.to);
        assert_eq!(shared.visibility, a.visibility);
        assert_eq!(
            (&shared.allow_user_ids, &shared.deny_user_ids),
            (&a.allow_user_ids, &a.deny_user_ids)
        );
        assert_eq!((shared.status, shared.delivery_mode), (a.status, a.delivery_mode));
        assert_eq!(
            (shared.created_at_ms, shared.updated_at_ms),
            (a.created_at_ms, a.updated_at_ms)
        );
        // The rest travels undecoded, and nothing is lost on the way.
        assert!(shared.verb.is_empty() && shared.extra.is_empty() && shared.mentions.is_empty());
        assert_eq!(shared.into_activity().expect("decodes"), a);
    }

    #[test]
    fn a_message_of_passed_through_activities_decodes_as_the_public_one() {
        use crate::timeline::v1 as public;
        use crate::wire::timeline::v1 as wire;
        let item = |id| public::TimelineItem {
            activity: Some(Activity { id, ..full() }),
            source_feed: "user:7".into(),
            delivery_mode: 1,
        };
        let page = public::GetTimelineResponse {
            items: vec![item(3), item(2)],
            next_cursor: "c".into(),
            has_more: true,
            ..public::GetTimelineResponse::default()
        };
        let through = wire::GetTimelineResponse::decode(page.encode_to_vec().as_slice()).expect("wire decodes");
        assert_eq!(through.items[1].activity.as_ref().map(|a| a.id), Some(2));
        let back = public::GetTimelineResponse::decode(through.encode_to_vec().as_slice()).expect("public decodes");
        assert_eq!(back, page);
    }

    #[test]
    fn a_truncated_field_is_a_decode_error_not_a_panic() {
        let bytes = full().encode_to_vec();
        for cut in 1..bytes.len() {
            // Either an error or a shorter activity, never a panic.
            let _ = SharedActivity::decode(&bytes[..cut]);
        }
        // A length past the end.
        assert!(SharedActivity::decode(&[0x1a, 0x7f, b'x'][..]).is_err());
    }
}
