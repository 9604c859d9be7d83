//! The embedded twin of the Redis inbox: same semantics, in memory. Its
//! content is a cache: after a restart inboxes rebuild from the durable
//! outboxes, exactly as after a Redis loss.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use feed_core::{Clock, UserId};

use crate::{InboxError, InboxLimits, InboxPage, InboxStore};

struct Inbox {
    ids: BTreeSet<u64>,
    floor: u64,
    expires_at: u64,
    /// Marked, not rebuilt yet: pushes land, reads see no inbox.
    building: bool,
}

/// In-memory inboxes.
pub struct MemoryInbox {
    cfg: InboxLimits,
    clock: Arc<dyn Clock>,
    inboxes: Mutex<HashMap<UserId, Inbox>>,
}

impl MemoryInbox {
    /// Empty, with `cfg` sizing and `clock` for expiry.
    pub fn new(cfg: InboxLimits, clock: Arc<dyn Clock>) -> Self {
        Self {
            cfg,
            clock,
            inboxes: Mutex::new(HashMap::new()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<UserId, Inbox>, u64) -> R) -> R {
        let now = self.clock.now_ms();
        // Plain map updates cannot be left half-done by a panic elsewhere.
        let mut map = self.inboxes.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, i| i.expires_at > now);
        f(&mut map, now)
    }

    fn add(cap: usize, inbox: &mut Inbox, ids: &[u64]) {
        for &id in ids {
            if id >= inbox.floor {
                inbox.ids.insert(id);
            }
        }
        if inbox.ids.len() <= cap {
            return;
        }
        while inbox.ids.len() > cap {
            inbox.ids.pop_first();
        }
        // Trimmed: the inbox is now complete only from its oldest kept id.
        if let Some(&min) = inbox.ids.first() {
            inbox.floor = inbox.floor.max(min);
        }
    }
}

#[async_trait]
impl InboxStore for MemoryInbox {
    async fn push(&self, users: &[UserId], id: u64) -> Result<usize, InboxError> {
        let cap = self.cfg.cap;
        Ok(self.with(|map, _| {
            let mut delivered = 0;
            for u in users {
                if let Some(inbox) = map.get_mut(u) {
                    Self::add(cap, inbox, &[id]);
                    delivered += 1;
                }
            }
            delivered
        }))
    }

    async fn backfill(&self, user: UserId, ids: &[u64], floor: u64) -> Result<bool, InboxError> {
        let cap = self.cfg.cap;
        Ok(self.with(|map, _| match map.get_mut(&user) {
            Some(inbox) => {
                inbox.floor = inbox.floor.max(floor);
                Self::add(cap, inbox, ids);
                true
            }
            None => false,
        }))
    }

    async fn mark_live(&self, user: UserId, provisional_floor: u64) -> Result<bool, InboxError> {
        let ttl = self.cfg.ttl_ms;
        Ok(self.with(|map, now| {
            if map.contains_key(&user) {
                return false;
            }
            map.insert(
                user,
                Inbox {
                    ids: BTreeSet::new(),
                    floor: provisional_floor,
                    expires_at: now + ttl,
                    building: true,
                },
            );
            true
        }))
    }

    async fn rebuild(&self, user: UserId, ids: &[u64], floor: u64, provisional: Option<u64>) -> Result<(), InboxError> {
        let (cap, ttl) = (self.cfg.cap, self.cfg.ttl_ms);
        self.with(|map, now| {
            let inbox = map.entry(user).or_insert(Inbox {
                ids: BTreeSet::new(),
                floor,
                expires_at: now + ttl,
                building: false,
            });
            inbox.building = false;
            inbox.floor = if Some(inbox.floor) == provisional {
                floor
            } else {
                inbox.floor.min(floor)
            };
            inbox.expires_at = now + ttl;
            Self::add(cap, inbox, ids);
        });
        Ok(())
    }

    async fn page(&self, user: UserId, before: Option<u64>, limit: usize) -> Result<Option<InboxPage>, InboxError> {
        Ok(self.with(|map, _| {
            map.get_mut(&user).filter(|inbox| !inbox.building).map(|inbox| {
                let upper = before.unwrap_or(u64::MAX);
                InboxPage {
                    ids: inbox.ids.range(..upper).rev().take(limit).copied().collect(),
                    floor: inbox.floor,
                }
            })
        }))
    }

    async fn remove(&self, user: UserId, ids: &[u64]) -> Result<(), InboxError> {
        self.with(|map, _| {
            if let Some(inbox) = map.get_mut(&user) {
                for id in ids {
                    inbox.ids.remove(id);
                }
            }
        });
        Ok(())
    }

    async fn remove_from(&self, users: &[UserId], id: u64) -> Result<(), InboxError> {
        self.with(|map, _| {
            for u in users {
                if let Some(inbox) = map.get_mut(u) {
                    inbox.ids.remove(&id);
                }
            }
        });
        Ok(())
    }

    async fn touch(&self, user: UserId) -> Result<bool, InboxError> {
        let ttl = self.cfg.ttl_ms;
        Ok(self.with(|map, now| match map.get_mut(&user) {
            Some(inbox) => {
                inbox.expires_at = now + ttl;
                true
            }
            None => false,
        }))
    }

    async fn is_live(&self, user: UserId) -> Result<bool, InboxError> {
        Ok(self.with(|map, _| map.get(&user).is_some_and(|inbox| !inbox.building)))
    }

    async fn evict(&self, user: UserId) -> Result<(), InboxError> {
        self.with(|map, _| map.remove(&user));
        Ok(())
    }
}
