//! Pages of a single feed (a profile, a tag, a group), filtered for the viewer.

use foldhash::HashSet;

use feed_core::{ApiError, FeedRef, UserId, visibility};
use feed_proto::common::v1::DeliveryMode;

use super::{Item, Page, Timeline};

impl Timeline {
    /// One page of a single feed (a profile, a tag, a group) as `viewer` may see it.
    pub async fn feed(
        &self,
        feed: &FeedRef,
        viewer: Option<UserId>,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Page, ApiError> {
        let mut page = Page::default();
        let mut upper = before;
        let mut scanned = 0usize;
        let batch = (limit * 2).clamp(10, 1000);
        let viewer_following: HashSet<FeedRef> = match viewer {
            Some(v) => self.sources.following(v).await?.into_iter().collect(),
            None => HashSet::default(),
        };
        loop {
            let (entries, more) = self
                .sources
                .read_outboxes(std::slice::from_ref(feed), upper, batch, false)
                .await?;
            let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
            scanned += ids.len();
            let activities = self.sources.hydrate(&ids).await?;
            // Blocked authors are hidden everywhere; muted ones everywhere
            // but their own profile feed, which stays readable.
            let hidden: HashSet<UserId> = match viewer {
                Some(v) => {
                    let actors = visibility::other_actors(activities.iter().map(AsRef::as_ref), v);
                    let rel = self.sources.relations(v, &actors).await?;
                    actors
                        .into_iter()
                        .zip(rel)
                        .filter(|(a, r)| r.blocked || (r.muted && feed.user_id() != Some(*a)))
                        .map(|(a, _)| a)
                        .collect()
                }
                None => HashSet::default(),
            };
            for a in activities {
                if page.items.len() == limit {
                    break;
                }
                let follows = viewer_following.contains(&FeedRef::user(a.actor));
                if hidden.contains(&a.actor) || !visibility::can_see(a.as_ref(), viewer, || follows) {
                    continue;
                }
                let mode = entries
                    .iter()
                    .find(|e| e.id == a.id)
                    .map(|e| e.mode)
                    .unwrap_or(DeliveryMode::Push);
                page.items.push(Item {
                    activity: a,
                    source: feed.clone(),
                    mode,
                });
            }
            if page.items.len() == limit {
                page.next_before = page.items.last().map(|i| i.activity.id);
                return Ok(page);
            }
            let Some(last) = entries.last().map(|e| e.id) else {
                return Ok(page);
            };
            if !more {
                return Ok(page);
            }
            upper = Some(last);
            if scanned >= limit * self.cfg.scan_factor.max(1) {
                page.has_more = true;
                page.next_before = Some(last);
                return Ok(page);
            }
        }
    }
}
