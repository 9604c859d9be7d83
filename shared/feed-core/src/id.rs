//! 64-bit time-ordered ids, unique across replicas (snowflake layout).
//!
//! `0 | 41 bits ms since EPOCH_MS | 10 bits node | 12 bits sequence`.
//! The node id comes from a lease ([`NodeLease`]) taken at start, never from
//! configuration (every replica shares the configuration). Minting stops when
//! the lease has lapsed or the clock has gone back further than the tolerance:
//! either could mint an id another replica also mints.

use std::sync::{Arc, Mutex};

use crate::Clock;

/// Ids count milliseconds from 2024-01-01T00:00:00Z (41 bits last ~69 years).
pub const EPOCH_MS: u64 = 1_704_067_200_000;
/// Bits of the node id.
pub const NODE_BITS: u32 = 10;
/// Bits of the per-millisecond sequence.
pub const SEQ_BITS: u32 = 12;
/// Number of distinct node ids a lease store hands out.
pub const MAX_NODES: u16 = 1 << NODE_BITS;
const SEQ_MAX: u64 = (1 << SEQ_BITS) - 1;

/// Why no id could be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The node lease expired or was lost; another replica may hold the node id.
    #[error("node id lease lapsed; minting stopped")]
    LeaseLapsed,
    /// The clock went back by more than the tolerance.
    #[error("clock went back {0} ms; minting stopped")]
    ClockRegression(u64),
}

/// The node id this process holds, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLease {
    /// The leased node id (< [`MAX_NODES`]).
    pub node: u16,
    /// Wall-clock ms after which the lease may belong to someone else.
    /// `u64::MAX` for an exclusive lease (embedded mode owns its data dir).
    pub valid_until_ms: u64,
}

impl NodeLease {
    /// A lease that never lapses: for a single process that owns its storage.
    pub fn exclusive(node: u16) -> Self {
        Self {
            node,
            valid_until_ms: u64::MAX,
        }
    }
}

struct State {
    lease: NodeLease,
    last_ms: u64,
    seq: u64,
}

/// Mints ids. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct IdGenerator {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
    /// A small step back (NTP slew) is absorbed by staying on the last
    /// millisecond; a larger one stops minting.
    max_regression_ms: u64,
}

impl IdGenerator {
    /// A generator on `lease` reading `clock`.
    pub fn new(lease: NodeLease, clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                lease,
                last_ms: 0,
                seq: 0,
            })),
            clock,
            max_regression_ms: 5,
        }
    }

    /// Replaces the lease (renewal, or a new node after a lapse).
    pub fn set_lease(&self, lease: NodeLease) {
        self.lock().lease = lease;
    }

    /// The current lease.
    pub fn lease(&self) -> NodeLease {
        self.lock().lease
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent
        // (plain integer updates), so a poisoned lock is safe to reuse.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mints the next id.
    pub fn next_id(&self) -> Result<u64, IdError> {
        let now = self.clock.now_ms();
        let mut st = self.lock();
        if now >= st.lease.valid_until_ms {
            return Err(IdError::LeaseLapsed);
        }
        let mut ms = now.max(EPOCH_MS) - EPOCH_MS;
        if ms < st.last_ms {
            let back = st.last_ms - ms;
            if back > self.max_regression_ms {
                return Err(IdError::ClockRegression(back));
            }
            ms = st.last_ms;
        }
        if ms == st.last_ms {
            if st.seq == SEQ_MAX {
                // Sequence exhausted: borrow the next millisecond. Bounded by
                // the regression tolerance, so we never run far ahead of time.
                ms += 1;
                if ms > (now.max(EPOCH_MS) - EPOCH_MS) + self.max_regression_ms {
                    return Err(IdError::ClockRegression(0));
                }
                st.seq = 0;
            } else {
                st.seq += 1;
            }
        } else {
            st.seq = 0;
        }
        st.last_ms = ms;
        Ok((ms << (NODE_BITS + SEQ_BITS)) | (u64::from(st.lease.node) << SEQ_BITS) | st.seq)
    }
}

/// The millisecond timestamp (Unix epoch) an id was minted at.
pub fn id_time_ms(id: u64) -> u64 {
    (id >> (NODE_BITS + SEQ_BITS)) + EPOCH_MS
}

/// The smallest id that could be minted at `unix_ms`: ids below it are older.
pub fn min_id_at(unix_ms: u64) -> u64 {
    (unix_ms.max(EPOCH_MS) - EPOCH_MS) << (NODE_BITS + SEQ_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use std::collections::HashSet;

    const T0: u64 = EPOCH_MS + 1_000_000;

    #[test]
    fn ids_minted_in_one_millisecond_are_strictly_increasing() {
        let clock = ManualClock::new(T0);
        let g = IdGenerator::new(NodeLease::exclusive(3), Arc::new(clock));
        let ids: Vec<u64> = (0..4000).map(|_| g.next_id().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(id_time_ms(ids[0]), T0);
    }

    #[test]
    fn sequence_overflow_borrows_the_next_millisecond() {
        let clock = ManualClock::new(T0);
        let g = IdGenerator::new(NodeLease::exclusive(1), Arc::new(clock));
        let ids: Vec<u64> = (0..5000).map(|_| g.next_id().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(id_time_ms(*ids.last().unwrap()), T0 + 1);
    }

    #[test]
    fn two_nodes_never_collide() {
        let clock = ManualClock::new(T0);
        let a = IdGenerator::new(NodeLease::exclusive(1), Arc::new(clock.clone()));
        let b = IdGenerator::new(NodeLease::exclusive(2), Arc::new(clock.clone()));
        let mut seen = HashSet::new();
        for i in 0..10_000 {
            if i % 100 == 0 {
                clock.advance(1);
            }
            assert!(seen.insert(a.next_id().unwrap()));
            assert!(seen.insert(b.next_id().unwrap()));
        }
    }

    #[test]
    fn ids_order_by_time_across_nodes() {
        let clock = ManualClock::new(T0);
        let a = IdGenerator::new(NodeLease::exclusive(900), Arc::new(clock.clone()));
        let b = IdGenerator::new(NodeLease::exclusive(1), Arc::new(clock.clone()));
        let first = a.next_id().unwrap();
        clock.advance(1);
        assert!(b.next_id().unwrap() > first);
    }

    #[test]
    fn small_clock_step_back_is_absorbed() {
        let clock = ManualClock::new(T0);
        let g = IdGenerator::new(NodeLease::exclusive(1), Arc::new(clock.clone()));
        let a = g.next_id().unwrap();
        clock.set(T0 - 3);
        assert!(g.next_id().unwrap() > a);
    }

    #[test]
    fn large_clock_regression_stops_minting() {
        let clock = ManualClock::new(T0);
        let g = IdGenerator::new(NodeLease::exclusive(1), Arc::new(clock.clone()));
        g.next_id().unwrap();
        clock.set(T0 - 1000);
        assert_eq!(g.next_id(), Err(IdError::ClockRegression(1000)));
        clock.set(T0 + 1);
        assert!(g.next_id().is_ok());
    }

    #[test]
    fn lapsed_lease_stops_minting() {
        let clock = ManualClock::new(T0);
        let lease = NodeLease {
            node: 4,
            valid_until_ms: T0 + 10,
        };
        let g = IdGenerator::new(lease, Arc::new(clock.clone()));
        assert!(g.next_id().is_ok());
        clock.set(T0 + 10);
        assert_eq!(g.next_id(), Err(IdError::LeaseLapsed));
        g.set_lease(NodeLease {
            node: 4,
            valid_until_ms: T0 + 100,
        });
        assert!(g.next_id().is_ok());
    }

    #[test]
    fn min_id_at_bounds_ids_of_that_millisecond() {
        let clock = ManualClock::new(T0);
        let g = IdGenerator::new(NodeLease::exclusive(1023), Arc::new(clock));
        let id = g.next_id().unwrap();
        assert!(min_id_at(T0) <= id && id < min_id_at(T0 + 1));
    }
}
