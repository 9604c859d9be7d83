//! One round of a home-timeline read, gathered next to the data: the
//! reader's inbox above its completeness floor, the followed feeds'
//! pull-mode items, the reader's own head, the work still pending and, below
//! the floor, the followed feeds' history; merged newest first and cut where
//! the sources stop being exact, with the newest candidates hydrated.
//!
//! feedd's timeline runs this in its own process; in the split deployment
//! publish runs it (`ReadHome`), so a round costs the timeline one call
//! instead of one per source. The rules (follows, blocks, mutes,
//! visibility) are the timeline's, applied to what a round returns.
//!
//! Order is the invariant (DESIGN Invariants 1 and 9): pending work is read
//! *before* the inbox page, so an item whose fanout finishes in between is
//! in one or the other.

use std::cmp::Reverse;

use async_trait::async_trait;
use feed_core::{ApiError, FeedRef, UserId};
use feed_proto::SharedActivity;
use feed_proto::common::v1::DeliveryMode;

use crate::{InboxPage, InboxStore};

/// Rounds one call may carry (publish's `ReadHomes`).
pub const MAX_ROUNDS_PER_CALL: usize = 32;

/// Activities the rounds of one call may hydrate in all: 500 maximum-size
/// activities stay under `feed_server::MAX_MESSAGE_BYTES`.
pub const MAX_HYDRATE_PER_CALL: usize = 500;

/// One outbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Activity id.
    pub id: u64,
    /// The feed whose outbox holds it.
    pub feed: FeedRef,
    /// How it reached that feed's followers.
    pub mode: DeliveryMode,
}

/// Work a reader's inbox may not reflect yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// The lowest activity id with an unfinished fanout job: inboxes may
    /// lack ids at or above it.
    pub fanout_from: Option<u64>,
    /// Feeds whose backfill into this user's inbox has not finished (for a
    /// lifted block or mute, `user:<author>`, which the user may not follow).
    pub backfill_feeds: Vec<FeedRef>,
    /// Feeds with a dead-lettered fanout job, each with its lowest activity
    /// id: their followers' inboxes may lack that feed's entries from there
    /// up until the job is replayed. Not part of `fanout_from`, so a dead
    /// letter taxes only the reads of its feed's followers, for one feed.
    pub stalled: Vec<(FeedRef, u64)>,
}

/// What a round reads besides the inbox: publish's outboxes, pending work
/// and activities.
#[async_trait]
pub trait Outboxes: Send + Sync {
    /// Work `user`'s inbox may not reflect yet.
    async fn pending(&self, user: UserId) -> Result<Pending, ApiError>;
    /// Entries below `before` across `feeds`, newest first, at most `limit`
    /// distinct ids; true when a feed may hold more.
    async fn read_outboxes(
        &self,
        feeds: &[FeedRef],
        before: Option<u64>,
        limit: usize,
        pull_only: bool,
    ) -> Result<(Vec<Entry>, bool), ApiError>;
    /// Active activities by id, newest first (deleted and unknown ones left out).
    async fn hydrate(&self, ids: &[u64]) -> Result<Vec<SharedActivity>, ApiError>;
}

/// What one round asks for.
#[derive(Debug, Clone, Copy)]
pub struct RoundRequest<'a> {
    /// The reader.
    pub user: UserId,
    /// The feeds they follow (those a read covers), sorted.
    pub feeds: &'a [FeedRef],
    /// Exclusive upper bound; None from the newest.
    pub before: Option<u64>,
    /// Ids read per source.
    pub batch: usize,
    /// How many of the newest candidates to hydrate.
    pub hydrate: usize,
    /// A missing inbox reads as empty (floor above every id) instead of
    /// ending the round: after the read already rebuilt it once.
    pub missing_as_empty: bool,
}

/// One way a candidate id reaches the reader: its inbox (`feed` None) or a
/// followed feed's outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Activity id.
    pub id: u64,
    /// The feed and its mode, None for the inbox.
    pub feed: Option<(FeedRef, DeliveryMode)>,
}

/// What one round gathered.
#[derive(Debug, Default)]
pub struct Round {
    /// False: the inbox is missing and nothing else was read (the reader
    /// rebuilds it, then gathers again).
    pub live: bool,
    /// Candidates newest first (an id once per way it came), cut at `bound`.
    pub hits: Vec<Hit>,
    /// The merge is exact only down to this id (a source was cut short
    /// there): the next round starts below it. None: every source ended.
    pub bound: Option<u64>,
    /// Distinct candidate ids hydrated: the newest this many.
    pub hydrated: usize,
    /// Their activities, newest first (deleted and unknown ones left out).
    pub activities: Vec<SharedActivity>,
    /// The inbox was unreachable: the round merged the followed feeds'
    /// outboxes alone, as if the inbox were empty with its floor above
    /// every id (the pull model, exact, only dearer).
    pub degraded: bool,
    /// The reader's graph token as the inbox store held it
    /// ([`crate::graph_token`]); None without one or when it was unreachable.
    pub graph_token: Option<u64>,
}

/// Gathers one round (see the module docs).
pub async fn gather(src: &dyn Outboxes, inbox: &dyn InboxStore, req: RoundRequest<'_>) -> Result<Round, ApiError> {
    let RoundRequest {
        user,
        feeds,
        before,
        batch,
        ..
    } = req;
    let Pending {
        fanout_from,
        backfill_feeds,
        stalled,
    } = src.pending(user).await?;
    let nothing = InboxPage {
        ids: vec![],
        floor: u64::MAX,
    };
    let mut degraded = false;
    let mut graph_token = None;
    let page = match inbox.page_with_graph_token(user, before, batch).await {
        Ok((page, token)) => {
            graph_token = token;
            match page {
                Some(p) => p,
                None if req.missing_as_empty => nothing,
                None => {
                    return Ok(Round {
                        graph_token,
                        ..Round::default()
                    });
                }
            }
        }
        // Redis away: the durable outboxes answer, and the read says so.
        Err(crate::InboxError::Unavailable(e)) => {
            tracing::warn!(user, error = %e, "inbox unreachable; reading the outboxes");
            degraded = true;
            nothing
        }
    };
    let mut hits: Vec<Hit> = Vec::with_capacity(batch * 3);
    // Each source is exact only down to its last id when it was cut short;
    // the merge is trusted down to the highest such bound.
    let mut bound: Option<u64> = None;
    let mut cut = |last: Option<u64>, truncated: bool| {
        if truncated && let Some(l) = last {
            bound = Some(bound.map_or(l, |b: u64| b.max(l)));
        }
    };
    let inbox_cut = page.ids.len() >= batch;
    cut(page.ids.last().copied(), inbox_cut);
    hits.extend(page.ids.iter().map(|id| Hit { id: *id, feed: None }));
    let mut add = |entries: Vec<Entry>| {
        hits.extend(entries.into_iter().map(|e| Hit {
            id: e.id,
            feed: Some((e.feed, e.mode)),
        }));
    };
    // Pull-mode items of followed feeds (celebrities), and the reader's own head.
    let (pulled, more) = src.read_outboxes(feeds, before, batch, true).await?;
    cut(pulled.last().map(|e| e.id), more);
    add(pulled);
    let me = FeedRef::user(user);
    let (own, more) = src
        .read_outboxes(std::slice::from_ref(&me), before, batch, false)
        .await?;
    cut(own.last().map(|e| e.id), more);
    add(own);
    // Work the inbox does not hold yet: unfinished fanout (every followed
    // feed's entries at or above the lowest pending id) and unfinished
    // backfills (those feeds' entries above the floor). A lifted block or
    // mute pends on user:<author>, which the reader may not follow: its
    // items count through the feeds they do follow, and the rules drop
    // the rest.
    let mut merged_from = None;
    if let Some(w) = fanout_from
        && before.is_none_or(|u| u > w)
    {
        let (recent, more) = src.read_outboxes(feeds, before, batch, false).await?;
        let last = recent.last().map(|e| e.id);
        cut(last, more && last.is_some_and(|l| l >= w));
        add(recent.into_iter().filter(|e| e.id >= w).collect());
        merged_from = Some(w);
    }
    // Dead-lettered fanout: only those feeds, for the readers who follow
    // them (unless the merge above already covered them).
    let stalled: Vec<(FeedRef, u64)> = stalled
        .into_iter()
        .filter(|(f, w)| before.is_none_or(|u| u > *w) && merged_from.is_none_or(|m| *w < m) && feeds.contains(f))
        .collect();
    if let Some(lowest) = stalled.iter().map(|(_, w)| *w).min() {
        let stalled_feeds: Vec<FeedRef> = stalled.iter().map(|(f, _)| f.clone()).collect();
        let (recent, more) = src.read_outboxes(&stalled_feeds, before, batch, false).await?;
        let last = recent.last().map(|e| e.id);
        cut(last, more && last.is_some_and(|l| l >= lowest));
        add(recent
            .into_iter()
            .filter(|e| stalled.iter().any(|(f, w)| *f == e.feed && e.id >= *w))
            .collect());
    }
    if !backfill_feeds.is_empty() {
        let (pending, more) = src.read_outboxes(&backfill_feeds, before, batch, false).await?;
        let last = pending.last().map(|e| e.id);
        cut(last, more && last.is_some_and(|l| l >= page.floor));
        add(pending.into_iter().filter(|e| e.id >= page.floor).collect());
    }
    // Below the floor the inbox promises nothing: history comes from the outboxes.
    if !inbox_cut {
        // No floor (an empty stand-in for a missing or unreachable inbox):
        // from `before`, or the newest. u64::MAX as a bound overflowed the
        // CQL store's signed ids and read nothing.
        let below = match (before, page.floor) {
            (b, u64::MAX) => b,
            (None, f) => Some(f),
            (Some(u), f) => Some(u.min(f)),
        };
        if below != Some(0) {
            let (history, more) = src.read_outboxes(feeds, below, batch, false).await?;
            cut(history.last().map(|e| e.id), more);
            add(history);
        }
    }
    hits.sort_unstable_by_key(|h| Reverse(h.id));
    if let Some(b) = bound {
        hits.truncate(hits.partition_point(|h| h.id >= b));
    }
    let mut newest: Vec<u64> = Vec::with_capacity(req.hydrate);
    for h in &hits {
        if newest.len() == req.hydrate {
            break;
        }
        if newest.last() != Some(&h.id) {
            newest.push(h.id);
        }
    }
    let activities = if newest.is_empty() {
        vec![]
    } else {
        src.hydrate(&newest).await?
    };
    Ok(Round {
        live: true,
        hits,
        bound,
        hydrated: newest.len(),
        activities,
        degraded,
        graph_token,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use feed_core::SystemClock;

    use super::*;
    use crate::{InboxLimits, MemoryInbox};

    /// Outboxes holding `entries`, recording which feeds each read asked for.
    struct Recorded {
        pending: Pending,
        entries: Vec<Entry>,
        reads: Mutex<Vec<Vec<FeedRef>>>,
    }

    #[async_trait]
    impl Outboxes for Recorded {
        async fn pending(&self, _: UserId) -> Result<Pending, ApiError> {
            Ok(self.pending.clone())
        }
        async fn read_outboxes(
            &self,
            feeds: &[FeedRef],
            before: Option<u64>,
            limit: usize,
            pull_only: bool,
        ) -> Result<(Vec<Entry>, bool), ApiError> {
            if !pull_only {
                self.reads.lock().expect("lock").push(feeds.to_vec());
            }
            let mut out: Vec<Entry> = self
                .entries
                .iter()
                .filter(|e| feeds.contains(&e.feed) && before.is_none_or(|b| e.id < b))
                .filter(|e| !pull_only || e.mode == DeliveryMode::Pull)
                .cloned()
                .collect();
            out.sort_by_key(|e| Reverse(e.id));
            let more = out.len() > limit;
            out.truncate(limit);
            Ok((out, more))
        }
        async fn hydrate(&self, _: &[u64]) -> Result<Vec<SharedActivity>, ApiError> {
            Ok(vec![])
        }
    }

    fn feed(s: &str) -> FeedRef {
        FeedRef::parse(s).expect("feed")
    }

    fn push(id: u64, f: &str) -> Entry {
        Entry {
            id,
            feed: feed(f),
            mode: DeliveryMode::Push,
        }
    }

    async fn round(src: &Recorded, user: UserId, feeds: &[FeedRef]) -> Vec<u64> {
        let inbox = MemoryInbox::new(InboxLimits::default(), Arc::new(SystemClock));
        // A live inbox holding only the old item: the dead fanout never reached it.
        inbox.rebuild(user, &[10], 0, None).await.expect("live inbox");
        let r = gather(
            src,
            &inbox,
            RoundRequest {
                user,
                feeds,
                before: None,
                batch: 50,
                hydrate: 0,
                missing_as_empty: false,
            },
        )
        .await
        .expect("round");
        let mut ids: Vec<u64> = r.hits.iter().map(|h| h.id).collect();
        ids.dedup();
        ids
    }

    #[tokio::test]
    async fn a_dead_fanout_merges_only_its_own_feed_and_only_for_its_followers() {
        let src = Recorded {
            pending: Pending {
                fanout_from: None,
                backfill_feeds: vec![],
                stalled: vec![(feed("user:2"), 20)],
            },
            entries: vec![push(10, "user:2"), push(20, "user:2"), push(30, "user:3")],
            reads: Mutex::default(),
        };
        let follower = [feed("user:2"), feed("user:3")];
        assert_eq!(round(&src, 1, &follower).await, [20, 10], "the stalled item is read");
        assert_eq!(
            src.reads.lock().expect("lock").iter().filter(|r| r.len() > 1).count(),
            0,
            "no read of every followed feed: {:?}",
            src.reads.lock().expect("lock")
        );
        src.reads.lock().expect("lock").clear();
        assert_eq!(round(&src, 4, &[feed("user:3")]).await, [10]);
        assert!(
            !src.reads
                .lock()
                .expect("lock")
                .iter()
                .any(|r| r.contains(&feed("user:2"))),
            "a reader who does not follow the stalled feed never reads it"
        );
    }
}
