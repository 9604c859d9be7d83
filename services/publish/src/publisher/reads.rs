//! Reads: activities by id, outbox pages and items, merged outboxes for
//! the timeline, and a user's pending work.

use std::sync::Arc;

use feed_core::{ApiError, FeedRef, UserId, visibility};
use feed_proto::common::v1::{Activity, ActivityStatus, DeliveryMode, Visibility};
use feed_proto::publish::v1::OutboxItem;

use super::Publisher;
use crate::store::OutboxEntry;

/// Who reads activities by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// Another service of the platform: sees everything it asks for.
    Internal,
    /// An end user through the BFF (`None`: signed out).
    User(Option<UserId>),
}

impl Publisher {
    /// Activities by id in request order, and the ids not found; shared
    /// with the store's cache, so a reader copies only what it keeps.
    pub async fn get(&self, ids: &[u64], include_deleted: bool) -> Result<(Vec<Arc<Activity>>, Vec<u64>), ApiError> {
        let found = self.store.get(ids).await?;
        let mut out = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for (id, a) in ids.iter().zip(found) {
            match a {
                Some(a) if include_deleted || a.status != ActivityStatus::Deleted as i32 => out.push(a),
                _ => missing.push(*id),
            }
        }
        Ok((out, missing))
    }

    /// Activities by id as `reader` may see them: internal callers get every
    /// found one, an end user only what the visibility rules let them see
    /// (a followers-only item asks follow-graph whether they follow its
    /// author) and nothing by an author they block or who blocks them.
    /// Hidden ids are reported missing, as unknown ones are.
    pub async fn get_for(
        &self,
        reader: Reader,
        ids: &[u64],
        include_deleted: bool,
    ) -> Result<(Vec<Arc<Activity>>, Vec<u64>), ApiError> {
        let (found, mut missing) = self.get(ids, include_deleted).await?;
        let viewer = match reader {
            Reader::Internal => return Ok((found, missing)),
            Reader::User(viewer) => viewer,
        };
        // A block either way hides an author's activities from the other,
        // here as on every timeline and feed page.
        let blocked: foldhash::HashSet<UserId> = match viewer {
            Some(v) => {
                let actors = visibility::other_actors(found.iter().map(|a| &**a), v);
                let flags = self.graph.blocked(v, &actors).await?;
                actors
                    .into_iter()
                    .zip(flags)
                    .filter(|(_, b)| *b)
                    .map(|(a, _)| a)
                    .collect()
            }
            None => Default::default(),
        };
        let mut visible = Vec::with_capacity(found.len());
        for a in found {
            if blocked.contains(&a.actor) {
                missing.push(a.id);
                continue;
            }
            let follows = match viewer {
                Some(v) if a.visibility == Visibility::Followers as i32 => self
                    .graph
                    .follows(v, &[FeedRef::user(a.actor)])
                    .await?
                    .first()
                    .copied()
                    .unwrap_or(false),
                _ => false,
            };
            if visibility::can_see(&a, viewer, || follows) {
                visible.push(a);
            } else {
                missing.push(a.id);
            }
        }
        Ok((visible, missing))
    }

    /// A feed's newest outbox entries with what backfill and purge need.
    pub async fn outbox_items(&self, feed: &FeedRef, limit: usize) -> Result<Vec<OutboxItem>, ApiError> {
        let entries = self.store.outbox(feed, None, limit).await?;
        let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
        let mut items = self.items(&ids).await?;
        for (item, e) in items.iter_mut().zip(&entries) {
            item.mode = e.mode as i32;
        }
        Ok(items)
    }

    /// Activities by id with their push-mode sources; unknown ids left out.
    pub async fn items(&self, ids: &[u64]) -> Result<Vec<OutboxItem>, ApiError> {
        let activities = self.store.get(ids).await?;
        let mut out = Vec::with_capacity(ids.len());
        for a in activities.into_iter().flatten() {
            let mut push_sources = Vec::new();
            let mut sources = vec![FeedRef::user(a.actor)];
            sources.extend(a.to.iter().filter_map(|t| FeedRef::parse(t).ok()));
            for s in sources {
                if self.store.outbox_mode(&s, a.id).await? == Some(DeliveryMode::Push) {
                    push_sources.push(s.to_string());
                }
            }
            out.push(OutboxItem {
                id: a.id,
                actor: a.actor,
                to: a.to.clone(),
                mode: a.delivery_mode,
                private: a.visibility == Visibility::Private as i32,
                deleted: a.status == ActivityStatus::Deleted as i32,
                push_sources,
            });
        }
        Ok(out)
    }
}

impl Publisher {
    /// The newest entries below `before` across `feeds`, merged newest
    /// first, at most `limit` distinct ids; true when a feed may hold more.
    pub async fn read_outboxes(
        &self,
        feeds: &[FeedRef],
        before: Option<u64>,
        limit: usize,
        pull_only: bool,
    ) -> Result<(Vec<OutboxEntry>, bool), ApiError> {
        if pull_only {
            // Bare ids: most of them fall below the page, and only those
            // kept become entries (a feed clone each).
            let (which, lists): (Vec<usize>, Vec<Vec<u64>>) =
                self.store.pulled_many(feeds, before, limit).await?.into_iter().unzip();
            let more = lists.iter().any(|l| l.len() >= limit);
            let (merged, cut) = merge_newest(lists, |id| *id, limit);
            let entries = merged
                .into_iter()
                .map(|(list, id)| OutboxEntry {
                    feed: feeds[which[list]].clone(),
                    id,
                    mode: DeliveryMode::Pull,
                })
                .collect();
            return Ok((entries, more || cut));
        }
        let mut lists = Vec::new();
        for feed in feeds {
            let entries = self.store.outbox(feed, before, limit).await?;
            if !entries.is_empty() {
                lists.push(entries);
            }
        }
        let more = lists.iter().any(|l| l.len() >= limit);
        let (merged, cut) = merge_newest(lists, |e| e.id, limit);
        Ok((merged.into_iter().map(|(_, e)| e).collect(), more || cut))
    }
}

/// Merges lists that are each newest first, with distinct ids, into one,
/// newest first, keeping every entry of the first `limit` distinct ids (an
/// id may come from several feeds), each with its list's index; true when
/// entries were left out. A heap
/// of the lists' heads: a page takes `limit` ids from dozens of lists of
/// `limit` each, and looks at little more than what it keeps.
fn merge_newest<T>(mut lists: Vec<Vec<T>>, id_of: impl Fn(&T) -> u64, limit: usize) -> (Vec<(usize, T)>, bool) {
    // One list: its first `limit` entries are the answer (the common read:
    // the reader's own outbox, a single celebrity).
    if lists.len() <= 1 {
        let list = lists.pop().unwrap_or_default();
        let cut = list.len() > limit;
        return (list.into_iter().take(limit).map(|e| (0, e)).collect(), cut);
    }
    let mut lists: Vec<_> = lists.into_iter().map(|l| l.into_iter().peekable()).collect();
    let mut heads: std::collections::BinaryHeap<(u64, usize)> = lists
        .iter_mut()
        .enumerate()
        .filter_map(|(i, l)| l.peek().map(|e| (id_of(e), i)))
        .collect();
    let mut merged = Vec::with_capacity(limit + lists.len());
    let mut distinct = 0;
    let mut last = None;
    while let Some((id, i)) = heads.pop() {
        if last != Some(id) {
            if distinct == limit {
                return (merged, true);
            }
            distinct += 1;
            last = Some(id);
        }
        merged.extend(lists[i].next().map(|e| (i, e)));
        if let Some(next) = lists[i].peek() {
            heads.push((id_of(next), i));
        }
    }
    (merged, false)
}

impl Publisher {
    /// Work not yet reflected in `user`'s inbox (see [`crate::store::PendingWork`]).
    pub async fn pending_work(&self, user: UserId) -> Result<crate::store::PendingWork, ApiError> {
        Ok(self.store.pending_work(user).await?)
    }
}

/// What a home read's round needs from publish (`feed_inbox::home::gather`):
/// feedd's timeline calls it in process, ReadHome over gRPC.
#[async_trait::async_trait]
impl feed_inbox::home::Outboxes for Publisher {
    async fn pending(&self, user: UserId) -> Result<feed_inbox::home::Pending, ApiError> {
        self.pending_work(user).await
    }

    async fn read_outboxes(
        &self,
        feeds: &[FeedRef],
        before: Option<u64>,
        limit: usize,
        pull_only: bool,
    ) -> Result<(Vec<feed_inbox::home::Entry>, bool), ApiError> {
        let (entries, more) = Publisher::read_outboxes(self, feeds, before, limit, pull_only).await?;
        Ok((
            entries
                .into_iter()
                .map(|e| feed_inbox::home::Entry {
                    id: e.id,
                    feed: e.feed,
                    mode: e.mode,
                })
                .collect(),
            more,
        ))
    }

    async fn hydrate(&self, ids: &[u64]) -> Result<Vec<feed_proto::SharedActivity>, ApiError> {
        Ok(self.get(ids, false).await?.0.into_iter().map(Into::into).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(feed: &str, ids: &[u64]) -> Vec<OutboxEntry> {
        let feed = FeedRef::parse(feed).expect("feed");
        ids.iter()
            .map(|id| OutboxEntry {
                feed: feed.clone(),
                id: *id,
                mode: DeliveryMode::Pull,
            })
            .collect()
    }

    #[test]
    fn merged_outboxes_keep_the_newest_distinct_ids_with_every_feed_of_each() {
        let (merged, cut) = merge_newest(
            vec![
                list("user:1", &[90, 50, 10]),
                list("user:2", &[95, 50, 40]),
                list("tag:a", &[60]),
            ],
            |e| e.id,
            4,
        );
        let got: Vec<(u64, String)> = merged.iter().map(|(_, e)| (e.id, e.feed.to_string())).collect();
        let want = [
            (95, "user:2"),
            (90, "user:1"),
            (60, "tag:a"),
            (50, "user:1"),
            (50, "user:2"),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((id, feed), (wid, wfeed)) in got.iter().zip(want) {
            assert_eq!(*id, wid);
            if *id != 50 {
                assert_eq!(feed, wfeed);
            }
        }
        assert!(cut, "ids 40 and 10 were left out");
        let (all, cut) = merge_newest(vec![list("user:1", &[3, 1]), list("user:2", &[2])], |e| e.id, 10);
        assert_eq!(all.iter().map(|(_, e)| e.id).collect::<Vec<_>>(), vec![3, 2, 1]);
        assert!(!cut);
        let (one, cut) = merge_newest(vec![list("user:1", &[9, 7, 5])], |e| e.id, 2);
        assert_eq!(one.iter().map(|(_, e)| e.id).collect::<Vec<_>>(), vec![9, 7]);
        assert!(cut, "id 5 was left out");
        let (one, cut) = merge_newest(vec![list("user:1", &[9, 7])], |e| e.id, 2);
        assert_eq!((one.len(), cut), (2, false));
        assert_eq!(merge_newest(Vec::<Vec<u64>>::new(), |e| *e, 2), (vec![], false));
    }

    #[test]
    fn merging_many_lists_keeps_what_sorting_them_all_keeps() {
        // 30 lists of overlapping ids: the heap merge against a full sort.
        let lists: Vec<Vec<(u64, usize)>> = (0..30)
            .map(|l| {
                let mut ids: Vec<u64> = (0..50u64).map(|k| (k * 7919 + l as u64 * 104_729) % 400).collect();
                ids.sort_unstable_by(|a, b| b.cmp(a));
                ids.dedup();
                ids.into_iter().map(|id| (id, l)).collect()
            })
            .collect();
        for limit in [1, 5, 40, 1000] {
            let mut all: Vec<(u64, usize)> = lists.iter().flatten().copied().collect();
            all.sort_unstable_by(|a, b| b.cmp(a));
            let mut distinct: Vec<u64> = all.iter().map(|e| e.0).collect();
            distinct.dedup();
            let cut = distinct.len() > limit;
            let floor = distinct[limit.min(distinct.len()) - 1];
            all.retain(|e| e.0 >= floor);
            let (got, got_cut) = merge_newest(lists.clone(), |e| e.0, limit);
            assert!(got.iter().all(|(list, e)| *list == e.1), "each entry names its list");
            let mut got: Vec<(u64, usize)> = got.into_iter().map(|(_, e)| e).collect();
            assert!(got.is_sorted_by(|a, b| a.0 >= b.0), "newest first");
            got.sort_unstable_by(|a, b| b.cmp(a));
            assert_eq!((got, got_cut), (all, cut), "limit {limit}");
        }
    }
}
