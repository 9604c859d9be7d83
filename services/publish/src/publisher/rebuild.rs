//! Inbox rebuild for a user who comes back after being inactive.

use std::future::Future;
use std::sync::Arc;

use feed_core::{ApiError, FeedRef, UserId, id::min_id_at};
use feed_inbox::InboxStore;
use feed_proto::common::v1::{Activity, ActivityStatus, DeliveryMode, Visibility};
use futures::{StreamExt, TryStreamExt};

use super::Publisher;
use crate::store::StorageError;

/// Followed feeds whose outboxes a rebuild reads at once.
const OUTBOX_READS_AT_ONCE: usize = 16;

/// The newest `cap` of `candidates` (distinct ids, newest first) whose
/// activity passes `keep`, hydrating a chunk at a time from the newest: a
/// rebuild hydrates about what the inbox will hold, not every id its
/// followed feeds hold (up to `cap` per feed). True when older candidates
/// were left out (passing or not examined).
async fn newest_passing<H, Fut>(
    candidates: &[u64],
    cap: usize,
    hydrate: H,
    keep: impl Fn(&Activity) -> bool,
) -> Result<(Vec<u64>, bool), ApiError>
where
    H: Fn(Vec<u64>) -> Fut,
    Fut: Future<Output = Result<Vec<Option<Arc<Activity>>>, StorageError>>,
{
    let mut kept = Vec::with_capacity(cap.min(candidates.len()));
    let mut at = 0;
    while at < candidates.len() && kept.len() < cap {
        // What is still missing, and a little more for what the rules drop.
        let want = cap - kept.len();
        let end = (at + want + want / 4 + 1).min(candidates.len());
        let chunk = &candidates[at..end];
        let activities = hydrate(chunk.to_vec()).await?;
        for (id, activity) in chunk.iter().zip(activities) {
            if kept.len() < cap && activity.as_deref().is_some_and(&keep) {
                kept.push(*id);
            }
        }
        at = end;
    }
    let cut = kept.len() == cap && kept.last() != candidates.last();
    Ok((kept, cut))
}

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
        // Every followed feed's newest `cap` entries, a few feeds at a time.
        let outboxes: Vec<_> = futures::stream::iter(following.iter().cloned())
            .map(|feed| {
                let store = self.store.clone();
                async move { store.outbox(&feed, None, cap).await }
            })
            .buffered(OUTBOX_READS_AT_ONCE)
            .try_collect()
            .await?;
        let mut floor = 0u64;
        let mut candidates = Vec::new();
        for entries in &outboxes {
            if entries.len() == cap
                && let Some(last) = entries.last()
            {
                // This feed may hold more below: complete only down to here.
                floor = floor.max(last.id);
            }
            candidates.extend(entries.iter().filter(|e| e.mode == DeliveryMode::Push).map(|e| e.id));
        }
        candidates.retain(|id| *id >= floor);
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        candidates.dedup();
        let hydrate = |chunk: Vec<u64>| {
            let store = self.store.clone();
            async move { store.get(&chunk).await }
        };
        let (ids, cut) = newest_passing(&candidates, cap, hydrate, |a| {
            a.visibility != Visibility::Private as i32 && a.status != ActivityStatus::Deleted as i32 && a.actor != user
        })
        .await?;
        if cut {
            // Older ids were left out: the inbox is complete only down to its last.
            floor = floor.max(*ids.last().unwrap_or(&0));
        }
        inbox.rebuild(user, &ids, floor, created.then_some(provisional)).await?;
        metrics::counter!("feed_inbox_rebuilds_total").increment(1);
        Ok(ids.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Activities whose id is a multiple of `drop_every` are deleted; the
    /// ids asked for are recorded.
    async fn pick(candidates: &[u64], cap: usize, drop_every: u64) -> (Vec<u64>, bool, usize) {
        let asked = Mutex::new(0usize);
        let hydrate = |chunk: Vec<u64>| {
            *asked.lock().expect("asked") += chunk.len();
            async move {
                Ok(chunk
                    .iter()
                    .map(|id| {
                        let status = if id % drop_every == 0 {
                            ActivityStatus::Deleted
                        } else {
                            ActivityStatus::Active
                        };
                        Some(Arc::new(Activity {
                            id: *id,
                            status: status as i32,
                            ..Activity::default()
                        }))
                    })
                    .collect())
            }
        };
        let (kept, cut) = newest_passing(candidates, cap, hydrate, |a| a.status != ActivityStatus::Deleted as i32)
            .await
            .expect("pick");
        let asked = *asked.lock().expect("asked");
        (kept, cut, asked)
    }

    #[tokio::test]
    async fn a_rebuild_hydrates_about_what_the_inbox_keeps_not_every_candidate() {
        let candidates: Vec<u64> = (1..=5_000).rev().collect();
        let (kept, cut, asked) = pick(&candidates, 100, u64::MAX).await;
        assert_eq!(kept, (4_901..=5_000).rev().collect::<Vec<_>>());
        assert!(cut, "older candidates were left out");
        assert!(asked <= 126, "hydrated {asked} ids for 100 kept");
    }

    #[tokio::test]
    async fn the_newest_passing_ids_are_exactly_those_a_full_hydration_would_keep() {
        let candidates: Vec<u64> = (1..=1_000).rev().collect();
        for (cap, drop_every) in [(100, 3), (100, 2), (10, 1_000_000), (400, 2), (50, 7)] {
            let (kept, cut, _) = pick(&candidates, cap, drop_every).await;
            let passing: Vec<u64> = candidates.iter().copied().filter(|id| id % drop_every != 0).collect();
            assert_eq!(
                kept,
                passing[..cap.min(passing.len())],
                "cap {cap}, every {drop_every}th dropped"
            );
            assert_eq!(
                cut,
                passing.len() > cap || (kept.len() == cap && kept.last() != candidates.last())
            );
        }
        // Fewer passing than the cap: every candidate is examined, nothing cut.
        let (kept, cut, asked) = pick(&candidates, 800, 2).await;
        assert_eq!(kept.len(), 500);
        assert!(!cut);
        assert_eq!(asked, 1_000);
    }
}
