//! Purges and relaxes: taking a feed's items out of an inbox after an
//! unfollow, block or mute, and putting an author's items back after an
//! unblock or unmute.

use feed_core::{ApiError, FeedRef};
use std::collections::HashSet;

use feed_proto::events::v1::PurgeJob;
use feed_proto::publish::v1::OutboxItem;

use super::*;

impl FanoutWorker {
    /// Removes from `user`'s inbox the items no followed feed pushes any
    /// more (and deleted ones). Driven by the inbox's own content, not by
    /// one feed's outbox, so nothing older than that feed's newest page is
    /// missed; an item's sources are `user:<actor>` and its `to` feeds (Invariant 5).
    pub(super) async fn purge(&self, user: u64) -> Result<(), ApiError> {
        let cap = self.cfg.inbox_cap.max(1);
        let Some(page) = self
            .inbox
            .page(user, None, cap)
            .await
            .map_err(|err| ApiError::Unavailable(err.to_string()))?
        else {
            return Ok(());
        };
        let items = self.ledger.items(&page.ids).await?;
        let followed = self.followed_sources(user, &items).await?;
        let known: HashSet<u64> = items.iter().map(|i| i.id).collect();
        let remove: Vec<u64> = items
            .iter()
            .filter(|i| i.deleted || !i.push_sources.iter().any(|s| followed.contains(s)))
            .map(|i| i.id)
            .chain(page.ids.iter().copied().filter(|id| !known.contains(id)))
            .collect();
        self.inbox
            .remove(user, &remove)
            .await
            .map_err(|err| ApiError::Unavailable(err.to_string()))
    }

    /// The push sources of `items` that `user` follows.
    async fn followed_sources(&self, user: u64, items: &[OutboxItem]) -> Result<HashSet<String>, ApiError> {
        let mut sources: Vec<FeedRef> = items
            .iter()
            .flat_map(|i| i.push_sources.iter().filter_map(|s| FeedRef::parse(s).ok()))
            .collect();
        sources.sort();
        sources.dedup();
        let follows = self.graph.follows(user, &sources).await?;
        Ok(sources
            .iter()
            .zip(follows)
            .filter(|(_, f)| *f)
            .map(|(s, _)| s.to_string())
            .collect())
    }

    /// After a block or mute on an author is lifted: adds the author's
    /// recent items (their `user:<author>` outbox holds every one) that
    /// reach `user` pushed through a feed they follow. Reads dropped them
    /// from the inbox while they were hidden, and a tag or a group may have
    /// brought them, not only `user:<author>` (Invariant 5).
    pub(super) async fn relax(&self, user: u64, author: &FeedRef) -> Result<(), ApiError> {
        let cap = self.cfg.inbox_cap.max(1);
        let items = self.ledger.outbox(author, cap).await?;
        let followed = self.followed_sources(user, &items).await?;
        let ids: Vec<u64> = items
            .iter()
            .filter(|i| {
                !i.private && !i.deleted && i.actor != user && i.push_sources.iter().any(|s| followed.contains(s))
            })
            .map(|i| i.id)
            .collect();
        // Read to depth `cap`, as a backfill: nothing below is guaranteed.
        let floor = if items.len() >= cap {
            items.last().map_or(0, |i| i.id)
        } else {
            0
        };
        self.inbox
            .backfill(user, &ids, floor)
            .await
            .map_err(|err| ApiError::Unavailable(err.to_string()))?;
        Ok(())
    }

    pub(super) async fn purge_shard(&self, job_id: &str, p: &PurgeJob, shard: u64) -> Result<(), ApiError> {
        let feed = feed_of(&p.feed)?;
        let mut after = 0;
        loop {
            let (page, done) = self.graph.page(&feed, shard, after, self.cfg.page_size).await?;
            let Some(last) = page.last() else { break };
            after = last.user;
            let users: Vec<u64> = page.iter().map(|p| p.user).collect();
            self.inbox.remove_from(&users, p.activity_id).await?;
            if done {
                break;
            }
        }
        self.ledger.complete(job_id, &[]).await
    }
}
