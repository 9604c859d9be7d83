//! A bounded in-memory map in front of a store that only this process
//! writes (the embedded stores). It is exact, not merely fresh-ish: writers
//! change it after their commit and before they return, so a caller that
//! heard "done" reads its write; and a reader that fills an entry from the
//! store keeps it only when no write landed since it looked, so a fill can
//! never bring back what a write replaced.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

/// Proof of when a reader missed: fills with an older ticket are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// A fast hasher: every home read makes dozens of lookups; the seed is random per process.
type HashMap<K, V> = foldhash::HashMap<K, V>;

struct Inner<K, V> {
    map: HashMap<K, V>,
    /// Bumped by every write.
    generation: u64,
}

/// At most `capacity` entries; beyond that a fill evicts an arbitrary one.
pub struct ReadCache<K, V> {
    inner: Mutex<Inner<K, V>>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> ReadCache<K, V> {
    /// An empty cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                map: HashMap::default(),
                generation: 0,
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Evicts arbitrary entries down to the capacity.
    fn shrink(&self, inner: &mut Inner<K, V>) {
        while inner.map.len() > self.capacity {
            let Some(victim) = inner.map.keys().next().cloned() else {
                break;
            };
            inner.map.remove(&victim);
        }
    }

    /// `read` of the entry, or the ticket to fill it with after reading the
    /// store. The key may be borrowed (`&[u8]` for a `Vec<u8>` key): a hit
    /// allocates nothing.
    pub fn get<Q, R>(&self, key: &Q, read: impl FnOnce(&V) -> R) -> Result<R, Ticket>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let inner = self.lock();
        match inner.map.get(key) {
            Some(v) => Ok(read(v)),
            None => Err(Ticket(inner.generation)),
        }
    }

    /// Like [`Self::get`] for many keys under one lock: hits in order, and
    /// the ticket for the misses.
    pub fn get_many<R>(&self, keys: &[K], mut read: impl FnMut(&V) -> R) -> (Vec<Option<R>>, Ticket) {
        let inner = self.lock();
        let hits = keys.iter().map(|k| inner.map.get(k).map(&mut read)).collect();
        (hits, Ticket(inner.generation))
    }

    /// Keeps `value`, read from the store after `ticket` was issued, unless a
    /// write landed since (it may have been read before that write).
    pub fn fill(&self, ticket: Ticket, key: K, value: V) {
        self.fill_many(ticket, [(key, value)]);
    }

    /// [`Self::fill`] for many entries under one lock.
    pub fn fill_many(&self, ticket: Ticket, entries: impl IntoIterator<Item = (K, V)>) {
        let mut inner = self.lock();
        if inner.generation != ticket.0 {
            return;
        }
        for (key, value) in entries {
            inner.map.entry(key).or_insert(value);
        }
        self.shrink(&mut inner);
    }

    /// A committed write: `apply` brings the entries up to date (update,
    /// insert or remove); fills that started before it are dropped.
    pub fn write(&self, apply: impl FnOnce(&mut HashMap<K, V>)) {
        let mut inner = self.lock();
        inner.generation += 1;
        apply(&mut inner.map);
        self.shrink(&mut inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_that_started_before_a_write_is_dropped() {
        let c: ReadCache<u32, &str> = ReadCache::new(10);
        let Err(ticket) = c.get(&1, |v| *v) else {
            panic!("empty cache hit")
        };
        // The reader read "old" from the store; meanwhile a write lands.
        c.write(|m| {
            m.remove(&1);
        });
        c.fill(ticket, 1, "old");
        assert!(c.get(&1, |v| *v).is_err(), "the stale fill was kept");
        let Err(ticket) = c.get(&1, |v| *v) else { panic!("hit") };
        c.fill(ticket, 1, "new");
        assert_eq!(c.get(&1, |v| *v), Ok("new"));
    }

    #[test]
    fn writes_update_entries_and_capacity_bounds_the_map() {
        let c: ReadCache<u32, u32> = ReadCache::new(2);
        let (_, t) = c.get_many(&[1, 2, 3], |v| *v);
        c.fill_many(t, [(1, 10), (2, 20), (3, 30)]);
        let (hits, _) = c.get_many(&[1, 2, 3], |v| *v);
        assert_eq!(hits.iter().filter(|h| h.is_some()).count(), 2);
        c.write(|m| {
            m.insert(4, 40);
            m.insert(5, 50);
            m.insert(6, 60);
        });
        let keys = [1, 2, 3, 4, 5, 6];
        let (hits, _) = c.get_many(&keys, |v| *v);
        assert_eq!(hits.iter().filter(|h| h.is_some()).count(), 2);
        let kept = keys[hits.iter().position(Option::is_some).expect("a kept entry")];
        c.write(|m| {
            m.insert(kept, 99);
        });
        assert_eq!(c.get(&kept, |v| *v), Ok(99));
    }
}
