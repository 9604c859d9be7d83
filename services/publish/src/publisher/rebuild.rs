//! Inbox rebuild for a user who comes back after being inactive.

use feed_core::{ApiError, FeedRef, UserId, id::min_id_at};
use feed_inbox::InboxStore;
use feed_proto::common::v1::{ActivityStatus, DeliveryMode, Visibility};

use super::Publisher;

impl Publisher {
    /// Rebuilds the user's inbox from the feeds follow-graph says they follow.
    pub async fn rebuild(&self, inbox: &dyn InboxStore, user: UserId) -> Result<usize, ApiError> {
        let following = self.graph.following(user).await?;
        self.rebuild_inbox(inbox, user, &following).await
    }

    /// Rebuilds a user's inbox from the push-mode outbox entries of the feeds
    /// they follow: marker first, bounded per feed, floor at what the read
    /// can guarantee (Invariant 1). Returns the number of ids written.
    pub async fn rebuild_inbox(
        &self,
        inbox: &dyn InboxStore,
        user: UserId,
        following: &[FeedRef],
    ) -> Result<usize, ApiError> {
        let cap = self.cfg.inbox_cap;
        // Ids minted up to a minute before the marker may still be in flight
        // through a slow publish; the provisional floor admits their pushes.
        let provisional = min_id_at(self.clock.now_ms().saturating_sub(60_000));
        let created = inbox.mark_live(user, provisional).await?;
        let mut floor = 0u64;
        let mut ids = Vec::new();
        for feed in following {
            let entries = self.store.outbox(feed, None, cap).await?;
            if entries.len() == cap
                && let Some(last) = entries.last()
            {
                // This feed may hold more below: complete only down to here.
                floor = floor.max(last.id);
            }
            ids.extend(entries.iter().filter(|e| e.mode == DeliveryMode::Push).map(|e| e.id));
        }
        let activities = self.store.get(&ids).await?;
        let mut ids: Vec<u64> = ids
            .into_iter()
            .zip(activities)
            .filter(|(_, a)| {
                a.as_ref().is_some_and(|a| {
                    a.visibility != Visibility::Private as i32
                        && a.status != ActivityStatus::Deleted as i32
                        && a.actor != user
                })
            })
            .map(|(id, _)| id)
            .filter(|id| *id >= floor)
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        if ids.len() > cap {
            ids.truncate(cap);
            floor = floor.max(*ids.last().unwrap_or(&0));
        }
        inbox.rebuild(user, &ids, floor, created.then_some(provisional)).await?;
        metrics::counter!("feed_inbox_rebuilds_total").increment(1);
        Ok(ids.len())
    }
}
