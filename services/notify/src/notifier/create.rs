//! Announces and private messages: created once per event id, pushed live.

use feed_core::{ApiError, UserId, validate};
use feed_proto::notify::v1::{Link, NoteRecord, Notification, NotificationKind, PolicyAction, UserState};

use super::{Notifier, check_body, check_event_id, check_links, id_of, note_id};
use crate::store::EventClaim;

impl Notifier {
    pub(super) fn view(rec: &NoteRecord, state: &UserState) -> Notification {
        let mut n = rec.note.clone().unwrap_or_default();
        let kind = NotificationKind::try_from(n.kind).unwrap_or(NotificationKind::Unspecified);
        n.read = if kind == NotificationKind::Announce {
            rec.seq <= state.read_watermark || state.read_announces.contains(&n.id)
        } else {
            rec.seq <= state.read_watermark.max(rec.read_seq)
        };
        n.seen = rec.seq <= state.seen_watermark;
        n
    }

    /// Hands a delivered notification to the pusher of live copies and
    /// returns: the note is already durable, so a slow or unreachable live
    /// log (Redis) delays only the live copy, never the call that delivered
    /// it. A full queue drops the copy (counted; the user's lists have it).
    pub(super) fn push_live(&self, user: UserId, rec: &NoteRecord) {
        let n = Self::view(rec, &UserState::default());
        if let Err(e) = self.inner.live_queue.try_send((user, n)) {
            metrics::counter!("feed_notify_live_append_failures_total").increment(1);
            tracing::warn!(error = %e, user, "live copy not queued; the notification is stored");
        }
    }

    /// CreateAnnounce: stored once, pulled by every user.
    pub async fn create_announce(
        &self,
        event_id: &str,
        title: &str,
        content: &str,
        links: Vec<Link>,
        for_all_time: bool,
    ) -> Result<(u64, bool), ApiError> {
        check_event_id(event_id)?;
        validate::text("title", title, 200, false)?;
        check_body("content", content, self.cfg().max_content_chars, true)?;
        check_links(&links)?;
        let now = self.now();
        let fresh = note_id(now, event_id);
        let id = match self.inner.store.claim_event(event_id, fresh).await? {
            EventClaim::Claimed => fresh,
            EventClaim::Held(prev) => {
                if self.inner.store.announces(prev + 1, 1).await?.first().map(id_of) == Some(prev) {
                    return Ok((prev, true));
                }
                // Claimed by a call that died before writing: finish it under the claimed id.
                prev
            }
        };
        let rec = NoteRecord {
            note: Some(Notification {
                id,
                kind: NotificationKind::Announce as i32,
                title: title.into(),
                content: content.into(),
                links,
                created_at_ms: now as i64,
                updated_at_ms: now as i64,
                ..Default::default()
            }),
            seq: self.next_seq(),
            for_all_time,
            ..Default::default()
        };
        self.inner.store.put_announce(&rec).await?;
        metrics::counter!("feed_notify_created_total", "kind" => "announce").increment(1);
        Ok((id, false))
    }

    /// SendMessage: pushed to the recipient at once. Refused across a block;
    /// the recipient's policy may filter or drop it (a dropped message gets id 0).
    pub async fn send_message(
        &self,
        event_id: &str,
        sender: UserId,
        recipient: UserId,
        content: &str,
    ) -> Result<(u64, bool), ApiError> {
        check_event_id(event_id)?;
        let sender = validate::user_id("sender", sender)?;
        let recipient = validate::user_id("recipient", recipient)?;
        if sender == recipient {
            return Err(ApiError::invalid("recipient", "must not be the sender"));
        }
        check_body("content", content, self.cfg().max_content_chars, false)?;
        let rel = self
            .inner
            .graph
            .relations(sender, &[recipient])
            .await?
            .pop()
            .unwrap_or_default();
        if rel.blocked {
            return Err(ApiError::PermissionDenied(
                "recipient: a block stands between sender and recipient".into(),
            ));
        }
        let (to, from) = (self.state(recipient).await?, self.state(sender).await?);
        let act = self.decide(&to, rel, &from, false);
        let now = self.now();
        let fresh = if act == PolicyAction::Drop {
            0
        } else {
            note_id(now, event_id)
        };
        // Each sender's event ids are their own: in one namespace shared by
        // everyone, a user who claimed an id first would make another's
        // message with that id a "duplicate" that is never delivered.
        let claim = format!("message:{sender}:{event_id}");
        let id = match self.inner.store.claim_event(&claim, fresh).await? {
            EventClaim::Claimed => fresh,
            EventClaim::Held(0) => return Ok((0, true)),
            // Claimed before: stored already, or by a call that died before
            // storing it (finished now, at the same place).
            EventClaim::Held(prev) => prev,
        };
        if id == 0 {
            metrics::counter!("feed_notify_dropped_total", "kind" => "message").increment(1);
            return Ok((0, false));
        }
        let mut rec = NoteRecord {
            note: Some(Notification {
                id,
                kind: NotificationKind::Message as i32,
                content: content.into(),
                sender,
                created_at_ms: now as i64,
                updated_at_ms: now as i64,
                filtered: act == PolicyAction::Filter,
                ..Default::default()
            }),
            // Its origin: what tells this message from another note whose
            // id collides with its own.
            group_key: claim,
            seq: self.next_seq(),
            ..Default::default()
        };
        if !self.place_note(recipient, &mut rec).await? {
            return Ok((id_of(&rec), true));
        }
        if act == PolicyAction::Accept {
            self.push_live(recipient, &rec);
        }
        metrics::counter!("feed_notify_created_total", "kind" => "message").increment(1);
        Ok((id_of(&rec), false))
    }
}
