//! The split timeline's copy of each reader's follow list and relations,
//! keyed by their graph version: a read asks follow-graph only for the
//! version (a few bytes) and reuses the list and the relations it already
//! holds for that version.
//!
//! Exact, not "fresh enough": follow-graph raises a user's graph version on
//! every change to their follows, their mutes and a block either way, and
//! the version is read before the list it keys, so a cached list is never
//! older than its version; a read that sees a newer version refetches
//! (read-your-writes across replicas holds).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use feed_core::{FeedRef, UserId};
use foldhash::HashMap;

use crate::sources::ReaderRelation;

/// Readers kept; past this the cache starts over (a reader costs one
/// refetch afterwards).
const MAX_READERS: usize = 100_000;

/// One reader's graph at one version.
#[derive(Debug)]
pub struct ReaderGraph {
    /// The version this is exact for.
    pub version: u64,
    /// Every feed they follow, in follow-graph's order.
    pub following: Vec<FeedRef>,
    relations: Mutex<HashMap<UserId, ReaderRelation>>,
    /// The graph token issued before this version was last read (0: none).
    token: AtomicU64,
}

impl ReaderGraph {
    /// The graph token this graph is held under, if any.
    pub fn token(&self) -> Option<u64> {
        Some(self.token.load(Ordering::Relaxed)).filter(|t| *t != 0)
    }

    /// Holds this graph under `token` (0: under none), issued before its
    /// version was read again.
    pub fn hold_under(&self, token: u64) {
        self.token.store(token, Ordering::Relaxed);
    }

    /// The relations known for `actors` (in order), or None for the first unknown.
    pub fn relations(&self, actors: &[UserId]) -> Option<Vec<ReaderRelation>> {
        let known = self.relations.lock().unwrap_or_else(|p| p.into_inner());
        actors.iter().map(|a| known.get(a).copied()).collect()
    }

    /// Records relations read after this version was.
    pub fn learn(&self, actors: &[UserId], relations: &[ReaderRelation]) {
        let mut known = self.relations.lock().unwrap_or_else(|p| p.into_inner());
        known.extend(actors.iter().copied().zip(relations.iter().copied()));
    }
}

/// Readers' graphs by user.
#[derive(Debug, Default)]
pub struct GraphCache {
    readers: Mutex<HashMap<UserId, Arc<ReaderGraph>>>,
}

impl GraphCache {
    /// `user`'s graph if it is held at `version`.
    pub fn get(&self, user: UserId, version: u64) -> Option<Arc<ReaderGraph>> {
        let readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        readers.get(&user).filter(|g| g.version == version).cloned()
    }

    /// The reader's current graph, if any (whatever its version).
    pub fn current(&self, user: UserId) -> Option<Arc<ReaderGraph>> {
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
            .cloned()
    }

    /// Holds `following`, read after `version` was, for `user`, under
    /// `token` (issued before `version` was read; 0: none).
    pub fn put(&self, user: UserId, version: u64, token: u64, following: Vec<FeedRef>) -> Arc<ReaderGraph> {
        let graph = Arc::new(ReaderGraph {
            version,
            following,
            relations: Mutex::new(HashMap::default()),
            token: AtomicU64::new(token),
        });
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if readers.len() >= MAX_READERS {
            readers.clear();
        }
        // A newer version another read already stored stays.
        match readers.get(&user) {
            Some(held) if held.version > version => held.clone(),
            _ => {
                readers.insert(user, graph.clone());
                graph
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graph_is_served_only_at_its_version_and_never_replaced_by_an_older_one() {
        let cache = GraphCache::default();
        let feeds = vec![FeedRef::user(2)];
        cache.put(1, 5, 0, feeds.clone());
        assert!(cache.get(1, 5).is_some());
        assert!(cache.get(1, 6).is_none(), "a newer version is a miss");
        cache.put(1, 7, 0, vec![]);
        let kept = cache.put(1, 6, 0, feeds);
        assert_eq!(kept.version, 7, "an older read does not replace a newer graph");
        assert!(cache.get(1, 6).is_none());
    }

    #[test]
    fn relations_are_known_only_once_learned() {
        let cache = GraphCache::default();
        let g = cache.put(1, 1, 0, vec![]);
        assert_eq!(g.relations(&[2]), None);
        let blocked = ReaderRelation {
            blocked: true,
            muted: false,
        };
        g.learn(&[2], &[blocked]);
        assert_eq!(g.relations(&[2]), Some(vec![blocked]));
        assert_eq!(g.relations(&[2, 3]), None, "one unknown actor is a miss");
    }
}
