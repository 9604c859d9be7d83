//! Home timelines: the inbox above its completeness floor, the followed
//! feeds' outboxes below it, the pull-mode items of followed feeds and the
//! reader's own outbox head, merged by id with one cursor; filtered at read
//! (DESIGN Invariants 1, 5, 9, 10).

mod feed_page;

// Hashed per item of every read: a fast hasher with a per-process seed.
use foldhash::HashMap;
use std::sync::{Arc, Mutex};

use feed_core::{ApiError, FeedRef, UserId, visibility};
use feed_inbox::InboxStore;
use feed_proto::SharedActivity;
use feed_proto::common::v1::DeliveryMode;
use tokio::sync::Semaphore;

use crate::TimelineRules;
use crate::sources::{Hit, RoundRequest, Sources};

/// One timeline item.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The hydrated activity, shared with the store's cache (or passed
    /// through as publish sent it) until the response encodes it.
    pub activity: SharedActivity,
    /// The followed feed that brought it (`user:<me>` for the reader's own).
    pub source: FeedRef,
    /// Pushed into the inbox or pulled at read.
    pub mode: DeliveryMode,
}

/// One page.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    /// Newest first.
    pub items: Vec<Item>,
    /// Exclusive upper bound of the next page; None at the end.
    pub next_before: Option<u64>,
    /// The scan stopped at its bound, not at the end.
    pub has_more: bool,
    /// No live inbox: the page came from the outboxes, its rebuild runs behind.
    pub rebuilt: bool,
    /// The inbox was unreachable: the page came from the outboxes alone.
    pub degraded: bool,
}

/// The timeline service.
#[derive(Clone)]
pub struct Timeline {
    sources: Arc<dyn Sources>,
    inbox: Arc<dyn InboxStore>,
    cfg: Arc<TimelineRules>,
    budget: Arc<Semaphore>,
    rebuilding: Arc<Flights>,
    last_active: Arc<Mutex<HashMap<UserId, std::time::Instant>>>,
}

/// The hits of one candidate id.
type Candidate<'a> = &'a [Hit];

fn from_inbox(cand: Candidate<'_>) -> bool {
    cand.iter().any(|h| h.feed.is_none())
}

/// How the candidate came through `feed`, if it did.
fn mode_via(cand: Candidate<'_>, feed: &FeedRef) -> Option<DeliveryMode> {
    cand.iter()
        .find_map(|h| h.feed.as_ref().filter(|(f, _)| f == feed).map(|(_, m)| *m))
}

/// The reader's followed feeds, sorted: a page checks a few dozen items
/// against a few dozen feeds by binary search, with nothing to build per item.
struct Followed {
    feeds: Vec<FeedRef>,
    /// The followed users' ids, sorted, with their feed's index in `feeds`:
    /// every item asks whether its actor is followed.
    users: Vec<(UserId, usize)>,
}

impl Followed {
    fn new(mut feeds: Vec<FeedRef>) -> Self {
        // follow-graph lists them in order, each once: one pass checks both.
        if !feeds.is_sorted_by(|a, b| a < b) {
            feeds.sort_unstable();
            feeds.dedup();
        }
        let mut users: Vec<(UserId, usize)> = feeds
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.user_id().map(|u| (u, i)))
            .collect();
        users.sort_unstable();
        Self { feeds, users }
    }

    fn contains(&self, feed: &str) -> bool {
        self.feeds.binary_search_by(|f| f.as_str().cmp(feed)).is_ok()
    }

    /// `user:<id>` when the reader follows that user.
    fn user(&self, id: UserId) -> Option<&FeedRef> {
        let at = self.users.binary_search_by_key(&id, |(u, _)| *u).ok()?;
        self.feeds.get(self.users[at].1)
    }
}

/// Users whose inbox this process is rebuilding.
type Flights = Mutex<foldhash::HashSet<UserId>>;

/// A user's entry in [`Flights`], removed however the rebuild ends
/// (done, failed, or its task dropped at shutdown): an entry left behind
/// would stop every later rebuild of that user.
struct Flight {
    flights: Arc<Flights>,
    user: UserId,
}

impl Flight {
    /// The user's flight, unless one is running.
    fn start(flights: &Arc<Flights>, user: UserId) -> Option<Self> {
        let mut set = flights.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(user).then(|| Self {
            flights: flights.clone(),
            user,
        })
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut set = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        set.remove(&self.user);
    }
}

impl Timeline {
    /// A timeline over its sources and the inbox store.
    pub fn new(sources: Arc<dyn Sources>, inbox: Arc<dyn InboxStore>, cfg: TimelineRules) -> Self {
        Self {
            budget: Arc::new(Semaphore::new(cfg.rebuild_budget.max(1))),
            sources,
            inbox,
            cfg: Arc::new(cfg),
            rebuilding: Arc::default(),
            last_active: Arc::new(Mutex::new(HashMap::default())),
        }
    }

    /// Records that `user` is active, at most once per debounce window.
    async fn mark_active(&self, user: UserId) -> Result<(), ApiError> {
        let now = std::time::Instant::now();
        let debounce = self.cfg.active_debounce;
        {
            let mut map = self.last_active.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&user).is_some_and(|t| now.duration_since(*t) < debounce) {
                return Ok(());
            }
            if map.len() > 100_000 {
                map.retain(|_, t| now.duration_since(*t) < debounce);
            }
            map.insert(user, now);
        }
        self.inbox.touch(user).await?;
        metrics::counter!("feed_timeline_active_marks_total").increment(1);
        Ok(())
    }

    /// The most items a page may ask for.
    pub fn max_limit(&self) -> usize {
        self.cfg.max_limit
    }

    /// Rebuilds `user`'s inbox before the read goes on, within the budget.
    async fn rebuild_now(&self, user: UserId) -> Result<(), ApiError> {
        let _permit = tokio::time::timeout(std::time::Duration::from_secs(5), self.budget.acquire())
            .await
            .map_err(|_| ApiError::RetryLater("inbox rebuild budget exhausted; retry"))?
            .map_err(|_| ApiError::Internal("rebuild budget closed".into()))?;
        self.sources.rebuild(user).await?;
        metrics::counter!("feed_timeline_rebuilds_total").increment(1);
        Ok(())
    }

    /// Rebuilds `user`'s inbox behind the read that found it missing: at
    /// most one rebuild per user in this process, and none past the budget
    /// (a Redis loss must not stampede the stores; the next read asks again).
    fn rebuild_behind(&self, user: UserId) {
        let Some(flight) = Flight::start(&self.rebuilding, user) else {
            return;
        };
        let Ok(permit) = self.budget.clone().try_acquire_owned() else {
            metrics::counter!("feed_timeline_rebuilds_deferred_total").increment(1);
            return;
        };
        let sources = self.sources.clone();
        tokio::spawn(async move {
            let _held = (flight, permit);
            match sources.rebuild(user).await {
                Ok(()) => metrics::counter!("feed_timeline_rebuilds_total").increment(1),
                Err(e) => tracing::warn!(user, error = %e, "inbox rebuild failed; the next read tries again"),
            }
        });
    }

    /// The reader's followed feeds and the first round read with them. The
    /// round also says whether the inbox is live (the sources read pending
    /// work before the inbox page, so an item whose job finishes in between
    /// is in one or the other). A follow list held under a graph token is
    /// used only if the round read the same token (no change to the
    /// reader's graph was answered since the list was read); otherwise the
    /// list is asked for and the round read again.
    async fn first_round(
        &self,
        user: UserId,
        before: Option<u64>,
        limit: usize,
        batch: usize,
    ) -> Result<(Followed, crate::sources::Round), ApiError> {
        fn first_request(
            user: UserId,
            feeds: &[FeedRef],
            before: Option<u64>,
            limit: usize,
            batch: usize,
        ) -> RoundRequest<'_> {
            RoundRequest {
                user,
                feeds,
                before,
                batch,
                hydrate: limit,
                missing_as_empty: false,
            }
        }
        if let Some((feeds, token)) = self.sources.held_following(user) {
            let followed = Followed::new(feeds);
            let first = self
                .sources
                .gather(first_request(user, self.read_feeds(&followed), before, limit, batch))
                .await?;
            let confirmed = first.graph_token == Some(token);
            let result = if confirmed { "confirmed" } else { "changed" };
            metrics::counter!("feed_timeline_held_graphs_total", "result" => result).increment(1);
            if confirmed {
                return Ok((followed, first));
            }
        }
        let followed = Followed::new(self.sources.following(user).await?);
        let first = self
            .sources
            .gather(first_request(user, self.read_feeds(&followed), before, limit, batch))
            .await?;
        Ok((followed, first))
    }

    /// The followed feeds a home read merges (the first `max_feeds_per_read`).
    fn read_feeds<'a>(&self, followed: &'a Followed) -> &'a [FeedRef] {
        &followed.feeds[..followed.feeds.len().min(self.cfg.max_feeds_per_read)]
    }

    /// One page of `user`'s home timeline below `before`.
    pub async fn home(&self, user: UserId, limit: usize, before: Option<u64>) -> Result<Page, ApiError> {
        // Ids read per source and round: the page and a quarter for what the
        // rules filter out. Rarely short (another round then reads on), and
        // every id read is parsed twice, by Redis's client and the merge.
        let batch = (limit + limit / 4).clamp(10, 1000);
        let (followed, mut first) = self.first_round(user, before, limit, batch).await?;
        let read_feeds = self.read_feeds(&followed);
        let round = |upper: Option<u64>, hydrate: usize, missing_as_empty: bool| RoundRequest {
            user,
            feeds: read_feeds,
            before: upper,
            batch,
            hydrate,
            missing_as_empty,
        };
        let rebuilt = !first.live;
        if rebuilt {
            if read_feeds.len() < followed.feeds.len() {
                // The outboxes past the read cap are never merged: only
                // the rebuild (of every followed feed) covers them.
                self.rebuild_now(user).await?;
            } else {
                // A returning user, or an inbox lost with Redis: the read
                // does not wait for the rebuild (up to `inbox_cap` ids from
                // each followed feed) but merges the followed feeds'
                // outboxes as if the inbox were empty, exactly as a
                // degraded read; the rebuild runs behind it, and until it
                // lands the store reports the inbox as not live, so later
                // pages do the same.
                self.rebuild_behind(user);
            }
            first = self.sources.gather(round(before, limit, true)).await?;
        }
        let degraded = first.degraded;
        // The inbox hit rate: reads served by a live inbox vs reads that
        // rebuilt one, or that found it unreachable.
        let result = match (degraded, rebuilt) {
            (true, _) => "degraded",
            (false, true) => "rebuilt",
            (false, false) => "hit",
        };
        metrics::counter!("feed_timeline_inbox_reads_total", "result" => result).increment(1);
        match self.mark_active(user).await {
            // Redis is away: the mark waits for the next read.
            Err(e) if degraded => tracing::debug!(error = %e, "activity mark skipped"),
            marked => marked?,
        }
        let me = FeedRef::user(user);
        let budget = limit * self.cfg.scan_factor.max(1);

        let mut page = Page {
            rebuilt,
            degraded,
            ..Page::default()
        };
        let mut next = Some(first);
        let mut scanned = 0usize;
        loop {
            let round = match next.take() {
                Some(r) => r,
                None => {
                    self.sources
                        .gather(round(page.next_before, limit - page.items.len(), true))
                        .await?
                }
            };
            page.degraded |= round.degraded;
            let cands: Vec<Candidate<'_>> = round.hits.chunk_by(|a, b| a.id == b.id).collect();
            scanned += cands.len();
            // Check what the page still needs (newest first), not every
            // candidate: the rest is below the page and read next time. The
            // round hydrated exactly what is missing (most candidates pass;
            // every activity hydrated is a deep copy); once some were
            // filtered out, twice that is hydrated per step.
            let mut hydrated = Some((round.hydrated, round.activities));
            let mut at = 0;
            let mut spare = 1;
            while at < cands.len() && page.items.len() < limit {
                let want = limit - page.items.len();
                let end = (at + want * spare).min(cands.len());
                spare = 2;
                let activities = match hydrated.take() {
                    Some((n, activities)) if at == 0 && end <= n => activities,
                    _ => {
                        let ids: Vec<u64> = cands[at..end].iter().map(|c| c[0].id).collect();
                        self.sources.hydrate(&ids).await?
                    }
                };
                self.filter(user, &me, &followed, &cands[at..end], activities, &mut page.items)
                    .await?;
                page.items.truncate(limit);
                at = end;
            }
            if page.items.len() == limit {
                page.next_before = page.items.last().map(|i| i.activity.id);
                return Ok(page);
            }
            match round.bound {
                None => {
                    page.next_before = None;
                    return Ok(page);
                }
                Some(b) => {
                    page.next_before = Some(b);
                    if scanned >= budget {
                        page.has_more = true;
                        return Ok(page);
                    }
                }
            }
        }
    }

    /// Applies the read-time rules to `cands` with their `activities` (any
    /// order; others are ignored), appending the items that pass to `out`; removes from the inbox the ids that can never show
    /// again (deleted, unfollowed, blocked).
    async fn filter(
        &self,
        user: UserId,
        me: &FeedRef,
        followed: &Followed,
        cands: &[Candidate<'_>],
        mut activities: Vec<SharedActivity>,
        out: &mut Vec<Item>,
    ) -> Result<(), ApiError> {
        if cands.is_empty() {
            return Ok(());
        }
        // Newest first like `ids` (already so from the stores: a linear check).
        activities.sort_unstable_by_key(|a| std::cmp::Reverse(a.id));
        let actors = visibility::other_actors(activities.iter().map(AsRef::as_ref), user);
        let relations = self.sources.relations(user, &actors).await?;
        let relation = |actor: UserId| {
            actors
                .binary_search(&actor)
                .ok()
                .and_then(|i| relations.get(i).copied())
                .unwrap_or_default()
        };
        let mut stale = Vec::new();
        let mut activities = activities.into_iter().peekable();
        for cand in cands {
            let id = cand[0].id;
            // Each id once: the activity moves into its item (anything above
            // it was not asked for).
            while activities.next_if(|a| a.id > id).is_some() {}
            let Some(a) = activities.next_if(|a| a.id == id) else {
                if from_inbox(cand) {
                    stale.push(id);
                }
                continue;
            };
            if a.actor == user {
                let mode = mode_via(cand, me)
                    .or_else(|| cand.iter().find_map(|h| h.feed.as_ref().map(|(_, m)| *m)))
                    .unwrap_or(DeliveryMode::Push);
                out.push(Item {
                    activity: a,
                    source: me.clone(),
                    mode,
                });
                continue;
            }
            let rel = relation(a.actor);
            // The source is derived at read: ({user:actor} ∪ to) ∩ following.
            let actor_feed = followed.user(a.actor);
            let follows_actor = actor_feed.is_some();
            let source = match actor_feed {
                Some(f) => Some(f.clone()),
                None => {
                    a.to.iter()
                        .find(|t| followed.contains(t))
                        .and_then(|t| FeedRef::parse(t).ok())
                }
            };
            let Some(source) = source else {
                if from_inbox(cand) {
                    stale.push(id);
                }
                continue;
            };
            if rel.blocked {
                if from_inbox(cand) {
                    stale.push(id);
                }
                continue;
            }
            if rel.muted || !visibility::can_see(a.as_ref(), Some(user), || follows_actor) {
                continue;
            }
            let mode = if from_inbox(cand) {
                DeliveryMode::Push
            } else {
                mode_via(cand, &source).unwrap_or(DeliveryMode::Pull)
            };
            out.push(Item {
                activity: a,
                source,
                mode,
            });
        }
        if !stale.is_empty()
            && let Err(e) = self.inbox.remove(user, &stale).await
        {
            tracing::debug!(error = %e, "lazy inbox cleanup failed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use std::time::Duration;

    use feed_core::{FeedRef, SystemClock};

    use super::*;
    use crate::sources::{Entry, ReaderRelation, Round, RoundRequest};

    /// Nothing followed, every inbox missing, and a rebuild that fails or hangs.
    struct NoRebuild {
        hang: bool,
        asked: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Sources for NoRebuild {
        async fn following(&self, _: UserId) -> Result<Vec<FeedRef>, ApiError> {
            Ok(vec![])
        }
        async fn relations(&self, _: UserId, actors: &[UserId]) -> Result<Vec<ReaderRelation>, ApiError> {
            Ok(vec![ReaderRelation::default(); actors.len()])
        }
        async fn read_outboxes(
            &self,
            _: &[FeedRef],
            _: Option<u64>,
            _: usize,
            _: bool,
        ) -> Result<(Vec<Entry>, bool), ApiError> {
            Ok((vec![], false))
        }
        async fn gather(&self, _: RoundRequest<'_>) -> Result<Round, ApiError> {
            Ok(Round::default())
        }
        async fn hydrate(&self, _: &[u64]) -> Result<Vec<SharedActivity>, ApiError> {
            Ok(vec![])
        }
        async fn rebuild(&self, _: UserId) -> Result<(), ApiError> {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.hang {
                std::future::pending::<()>().await;
            }
            Err(ApiError::Unavailable("publish: down".into()))
        }
    }

    fn timeline(hang: bool) -> (Timeline, Arc<NoRebuild>) {
        let inbox = feed_inbox::MemoryInbox::new(feed_inbox::InboxLimits::default(), Arc::new(SystemClock));
        let sources = Arc::new(NoRebuild {
            hang,
            asked: Default::default(),
        });
        let t = Timeline::new(sources.clone(), Arc::new(inbox), TimelineRules::default());
        (t, sources)
    }

    fn rebuilds_asked(s: &NoRebuild) -> usize {
        s.asked.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn flights(t: &Timeline) -> usize {
        t.rebuilding.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    async fn wait_for_no_flights(t: &Timeline) {
        for _ in 0..200 {
            if flights(t) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{} rebuild flights left behind", flights(t));
    }

    #[tokio::test]
    async fn a_read_without_an_inbox_answers_without_waiting_for_its_rebuild() {
        // The rebuild never returns: the reads answer anyway, from the outboxes.
        let (t, sources) = timeline(true);
        for _ in 0..3 {
            let page = tokio::time::timeout(Duration::from_secs(5), t.home(7, 20, None))
                .await
                .expect("the read waited for the rebuild")
                .expect("answered");
            assert!(page.rebuilt, "the page says the inbox is being rebuilt");
        }
        assert_eq!(flights(&t), 1, "three reads share one rebuild");
        tokio::task::yield_now().await;
        assert_eq!(rebuilds_asked(&sources), 1, "three reads share one rebuild");
    }

    #[tokio::test]
    async fn a_failed_rebuild_leaves_no_flight_behind() {
        let (t, sources) = timeline(false);
        for user in 1..=3 {
            t.home(user, 20, None).await.expect("answered while the rebuild fails");
        }
        wait_for_no_flights(&t).await;
        assert_eq!(rebuilds_asked(&sources), 3);
        // The next read tries again.
        t.home(1, 20, None).await.expect("answered");
        wait_for_no_flights(&t).await;
        assert_eq!(rebuilds_asked(&sources), 4, "a failed rebuild is tried again");
    }

    /// A follow list held under token 7, a fresh one behind `following`,
    /// and rounds that read `current` as the reader's token.
    struct Held {
        current: Option<u64>,
        asked: std::sync::atomic::AtomicUsize,
        gathered: Mutex<Vec<Vec<FeedRef>>>,
    }

    #[async_trait]
    impl Sources for Held {
        async fn following(&self, _: UserId) -> Result<Vec<FeedRef>, ApiError> {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(vec![FeedRef::user(3)])
        }
        fn held_following(&self, _: UserId) -> Option<(Vec<FeedRef>, u64)> {
            Some((vec![FeedRef::user(2)], 7))
        }
        async fn relations(&self, _: UserId, actors: &[UserId]) -> Result<Vec<ReaderRelation>, ApiError> {
            Ok(vec![ReaderRelation::default(); actors.len()])
        }
        async fn read_outboxes(
            &self,
            _: &[FeedRef],
            _: Option<u64>,
            _: usize,
            _: bool,
        ) -> Result<(Vec<Entry>, bool), ApiError> {
            Ok((vec![], false))
        }
        async fn gather(&self, req: RoundRequest<'_>) -> Result<Round, ApiError> {
            self.gathered.lock().expect("gathered").push(req.feeds.to_vec());
            Ok(Round {
                live: true,
                graph_token: self.current,
                ..Round::default()
            })
        }
        async fn hydrate(&self, _: &[u64]) -> Result<Vec<SharedActivity>, ApiError> {
            Ok(vec![])
        }
        async fn rebuild(&self, _: UserId) -> Result<(), ApiError> {
            Ok(())
        }
    }

    async fn read_with_token(current: Option<u64>) -> (usize, Vec<Vec<FeedRef>>) {
        let inbox = feed_inbox::MemoryInbox::new(feed_inbox::InboxLimits::default(), Arc::new(SystemClock));
        let sources = Arc::new(Held {
            current,
            asked: Default::default(),
            gathered: Mutex::default(),
        });
        let t = Timeline::new(sources.clone(), Arc::new(inbox), TimelineRules::default());
        t.home(1, 20, None).await.expect("read");
        let gathered = std::mem::take(&mut *sources.gathered.lock().expect("gathered"));
        (sources.asked.load(std::sync::atomic::Ordering::SeqCst), gathered)
    }

    #[tokio::test]
    async fn a_held_follow_list_serves_the_read_only_when_the_round_reads_its_token() {
        let (asked, gathered) = read_with_token(Some(7)).await;
        assert_eq!(asked, 0, "the held list's token is current: follow-graph is not asked");
        assert_eq!(gathered, vec![vec![FeedRef::user(2)]]);
        for changed in [Some(8), None] {
            let (asked, gathered) = read_with_token(changed).await;
            assert_eq!(asked, 1, "token {changed:?}: the list is asked for again");
            assert_eq!(
                gathered,
                vec![vec![FeedRef::user(2)], vec![FeedRef::user(3)]],
                "the round is read again with the fresh list"
            );
        }
    }
}
