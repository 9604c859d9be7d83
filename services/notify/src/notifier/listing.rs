//! Listing, counts and read state (read and seen watermarks).

use std::collections::VecDeque;

use feed_core::{ApiError, UserId, validate};
use feed_proto::notify::v1::{KindCounts, NoteRecord, NotificationKind, UserState};

use super::{Notifier, id_of};
use feed_proto::notify::v1::Notification;

/// Ids one MarkRead may name.
const MAX_MARK_IDS: usize = 500;
/// Read marks on announces kept per user above the watermark.
const READ_ANNOUNCES: usize = 500;

/// A page of notifications.
#[derive(Debug, Clone, Default)]
pub struct NotePage {
    /// Newest first.
    pub notes: Vec<Notification>,
    /// Cursor of the next page, when more may follow.
    pub next_before: Option<u64>,
}

/// A listing request.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Kinds to list (empty: all).
    pub kinds: Vec<NotificationKind>,
    /// Only unread ones.
    pub unread_only: bool,
    /// The filtered ones instead of the accepted ones.
    pub filtered: bool,
    /// Page size.
    pub limit: usize,
    /// Ids below this.
    pub before: Option<u64>,
}

impl Notifier {
    /// Announces the user may see: newer than the account, or for all time.
    fn announce_visible(rec: &NoteRecord, state: &UserState) -> bool {
        rec.for_all_time
            || rec
                .note
                .as_ref()
                .is_some_and(|n| n.created_at_ms >= state.created_at_ms)
    }

    /// Walks the user's notes and visible announces newest first (below
    /// `before`), merged by id, calling `visit` until it returns false or
    /// `max_scan` items were seen. Returns (last id visited, exhausted).
    async fn walk(
        &self,
        user: UserId,
        state: &UserState,
        before: u64,
        announces: bool,
        mut visit: impl FnMut(&NoteRecord) -> bool,
    ) -> Result<(Option<u64>, bool), ApiError> {
        const CHUNK: usize = 64;
        let store = &self.inner.store;
        let (mut notes, mut notes_before, mut notes_done) = (VecDeque::new(), before, false);
        let (mut anns, mut anns_before, mut anns_done) = (VecDeque::new(), before, !announces);
        let mut last = None;
        for _ in 0..self.cfg().max_scan {
            if notes.is_empty() && !notes_done {
                let page = store.notes(user, notes_before, CHUNK).await?;
                notes_done = page.len() < CHUNK;
                notes_before = page.last().map(id_of).unwrap_or(notes_before);
                notes.extend(page);
            }
            if anns.is_empty() && !anns_done {
                let page = store.announces(anns_before, CHUNK).await?;
                anns_done = page.len() < CHUNK;
                anns_before = page.last().map(id_of).unwrap_or(anns_before);
                anns.extend(page.into_iter().filter(|r| Self::announce_visible(r, state)));
                if anns.is_empty() && !anns_done {
                    continue;
                }
            }
            let take_note = match (notes.front(), anns.front()) {
                (Some(n), Some(a)) => id_of(n) > id_of(a),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return Ok((last, true)),
            };
            let rec = if take_note { notes.pop_front() } else { anns.pop_front() };
            let Some(rec) = rec else { break };
            last = Some(id_of(&rec));
            if !visit(&rec) {
                let exhausted = notes.is_empty() && anns.is_empty() && notes_done && anns_done;
                return Ok((last, exhausted));
            }
        }
        Ok((last, false))
    }

    /// ListNotifications: newest first, merged across kinds.
    pub async fn list(&self, user: UserId, q: ListQuery) -> Result<NotePage, ApiError> {
        let state = self.state(user).await?;
        let want = |k: i32| q.kinds.is_empty() || q.kinds.iter().any(|x| *x as i32 == k);
        let announces = want(NotificationKind::Announce as i32) && !q.filtered;
        let mut out = Vec::new();
        let limit = q.limit.max(1);
        let (last, exhausted) = self
            .walk(user, &state, q.before.unwrap_or(u64::MAX), announces, |rec| {
                let n = Self::view(rec, &state);
                if want(n.kind) && n.filtered == q.filtered && !(q.unread_only && n.read) {
                    out.push(n);
                }
                out.len() < limit
            })
            .await?;
        Ok(NotePage {
            notes: out,
            next_before: if exhausted { None } else { last },
        })
    }

    /// GetUnreadCounts: unread and unseen per kind (filtered ones do not count).
    pub async fn counts(&self, user: UserId) -> Result<Vec<KindCounts>, ApiError> {
        let state = self.state(user).await?;
        let kinds = [
            NotificationKind::Announce,
            NotificationKind::Remind,
            NotificationKind::Message,
        ];
        let mut counts: Vec<KindCounts> = kinds
            .iter()
            .map(|k| KindCounts {
                kind: *k as i32,
                unread: 0,
                unseen: 0,
            })
            .collect();
        self.walk(user, &state, u64::MAX, true, |rec| {
            let n = Self::view(rec, &state);
            if let Some(c) = counts.iter_mut().find(|c| c.kind == n.kind)
                && !n.filtered
            {
                c.unread += u64::from(!n.read);
                c.unseen += u64::from(!n.seen);
            }
            true
        })
        .await?;
        Ok(counts)
    }

    /// MarkRead: the listed ids, or everything (down to `down_to` when given).
    pub async fn mark_read(&self, user: UserId, ids: &[u64], all: bool, down_to: Option<u64>) -> Result<(), ApiError> {
        if ids.is_empty() && !all {
            return Err(ApiError::invalid("ids", "name notifications, or set all"));
        }
        validate::batch_len("ids", ids, MAX_MARK_IDS)?;
        let _g = self.lock(user).await;
        let mut state = self.state(user).await?;
        let mut marks = Vec::new();
        let mut announces = Vec::new();
        for id in ids {
            if let Some(rec) = self.inner.store.note(user, *id).await? {
                marks.push((*id, rec.seq));
            } else if self
                .inner
                .store
                .announces(id.saturating_add(1), 1)
                .await?
                .first()
                .map(id_of)
                == Some(*id)
            {
                announces.push(*id);
            } else {
                return Err(ApiError::NotFound(format!("ids: notification {id}")));
            }
        }
        if all {
            match down_to {
                None => {
                    state.read_watermark = self.next_seq();
                    state.read_announces.clear();
                }
                Some(bound) => {
                    self.walk(user, &state, u64::MAX, true, |rec| {
                        let id = id_of(rec);
                        if id < bound {
                            return false;
                        }
                        match rec.note.as_ref().map(|n| n.kind) {
                            Some(k) if k == NotificationKind::Announce as i32 => announces.push(id),
                            _ => marks.push((id, rec.seq)),
                        }
                        true
                    })
                    .await?;
                }
            }
        }
        self.inner.store.mark_notes_read(user, &marks).await?;
        if !announces.is_empty() || all {
            state.read_announces.extend(announces);
            state.read_announces.sort_unstable_by(|a, b| b.cmp(a));
            state.read_announces.dedup();
            state.read_announces.truncate(READ_ANNOUNCES);
            self.inner.store.put_user_state(user, &state).await?;
        }
        Ok(())
    }

    /// MarkSeen: everything delivered so far is seen.
    pub async fn mark_seen(&self, user: UserId) -> Result<(), ApiError> {
        let _g = self.lock(user).await;
        let mut state = self.state(user).await?;
        state.seen_watermark = self.next_seq();
        self.inner.store.put_user_state(user, &state).await?;
        Ok(())
    }
}
