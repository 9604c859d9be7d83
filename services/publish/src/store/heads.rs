//! The newest entries of each feed of an append-only `len ‖ feed ‖ id →
//! value` keyspace, in memory, for the embedded store. A home read asks the
//! reader's own outbox and every followed feed's pull-mode entries on each
//! request; most of those feeds hold nothing, and a reverse LSM scan pays a
//! skiplist search per step. Only one process writes the embedded store, so
//! the heads are exact: a writer updates them after its commit, before it
//! returns (read-your-writes), and a read that fills a head from the
//! keyspace keeps it only when no write landed meanwhile.

use feed_core::cache::ReadCache;
use feed_core::keys::u64_at;
use fjall::Keyspace;

use super::StorageError;

/// One feed's newest entries.
#[derive(Default)]
struct Head {
    /// (id, first value byte), ascending by id, at most `keep`.
    entries: Vec<(u64, u8)>,
    /// Older entries exist: below `entries[0]` only the keyspace knows.
    partial: bool,
}

impl Head {
    fn insert(&mut self, id: u64, value: u8, keep: usize) {
        match self.entries.binary_search_by_key(&id, |e| e.0) {
            Ok(at) => self.entries[at].1 = value,
            Err(at) => self.entries.insert(at, (id, value)),
        }
        if self.entries.len() > keep {
            self.entries.remove(0);
            self.partial = true;
        }
    }

    /// Up to `limit` entries below `before`, newest first; None when the
    /// answer may reach below what the head holds.
    fn below<T>(&self, before: Option<u64>, limit: usize, map: impl Fn(&(u64, u8)) -> T) -> Option<Vec<T>> {
        let end = before.map_or(self.entries.len(), |b| self.entries.partition_point(|e| e.0 < b));
        let start = end.saturating_sub(limit);
        (end - start == limit || !self.partial).then(|| self.entries[start..end].iter().rev().map(map).collect())
    }
}

/// Heads of at most `max_feeds` feeds, `keep` entries each.
pub(crate) struct FeedHeads {
    heads: ReadCache<Vec<u8>, Head>,
    keep: usize,
}

impl FeedHeads {
    pub(crate) fn new(keep: usize, max_feeds: usize) -> Self {
        Self {
            heads: ReadCache::new(max_feeds),
            keep: keep.max(1),
        }
    }

    /// Up to `limit` entries of the feed with key prefix `prefix` below
    /// `before`, newest first, as (id, first value byte; 0 when empty).
    pub(crate) fn below(
        &self,
        ks: &Keyspace,
        prefix: &[u8],
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, u8)>, StorageError> {
        let answer = match self.heads.get(prefix, |head| head.below(before, limit, |e| *e)) {
            Ok(answer) => answer,
            Err(ticket) => {
                let newest = scan_desc(ks, prefix, None, self.keep + 1)?;
                let head = Head {
                    partial: newest.len() > self.keep,
                    entries: newest.into_iter().take(self.keep).rev().collect(),
                };
                let answer = head.below(before, limit, |e| *e);
                self.heads.fill(ticket, prefix.to_vec(), head);
                answer
            }
        };
        match answer {
            Some(hit) => Ok(hit),
            // Deeper than the head: the keyspace answers.
            None => scan_desc(ks, prefix, before, limit),
        }
    }

    /// [`Self::below`]'s ids for many feeds, the heads held read under one
    /// lock (a home read asks every followed celebrity).
    pub(crate) fn below_many(
        &self,
        ks: &Keyspace,
        prefixes: &[Vec<u8>],
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Vec<u64>>, StorageError> {
        let (hits, _) = self.heads.get_many(prefixes, |head| head.below(before, limit, |e| e.0));
        prefixes
            .iter()
            .zip(hits)
            .map(|(prefix, hit)| match hit.flatten() {
                Some(ids) => Ok(ids),
                None => Ok(self
                    .below(ks, prefix, before, limit)?
                    .into_iter()
                    .map(|e| e.0)
                    .collect()),
            })
            .collect()
    }

    /// Records committed entries; the caller holds the store's writer lock.
    pub(crate) fn committed<'a>(&self, entries: impl IntoIterator<Item = (&'a [u8], u64, u8)>) {
        self.heads.write(|heads| {
            for (prefix, id, value) in entries {
                if let Some(head) = heads.get_mut(prefix) {
                    head.insert(id, value, self.keep);
                }
            }
        });
    }
}

/// A feed's entries below `before`, newest first, as (id, first value byte).
pub(crate) fn scan_desc(
    ks: &Keyspace,
    prefix: &[u8],
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, u8)>, StorageError> {
    let mut start = prefix.to_vec();
    start.extend_from_slice(&0u64.to_be_bytes());
    let mut end = prefix.to_vec();
    end.extend_from_slice(&before.unwrap_or(u64::MAX).to_be_bytes());
    let mut out = Vec::with_capacity(limit.min(1024));
    // `before: None` must include u64::MAX itself; ids never reach it (the top bit is 0).
    for item in ks.range(start..end).rev() {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item.into_inner().map_err(|e| StorageError::Backend(e.to_string()))?;
        out.push((u64_at(&k, prefix.len()), v.first().copied().unwrap_or(0)));
    }
    Ok(out)
}
