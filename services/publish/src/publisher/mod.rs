//! Publish domain logic: accept activities, fix their delivery mode, record
//! them with their jobs, and serve job records to fanout workers.

mod admin;
mod budget;
mod edges;
mod jobs;
mod reads;
mod rebuild;
mod schedule;
mod write;

pub use admin::FanoutLag;
pub use budget::FanoutBudget;
pub use edges::edge_job_id;
pub use jobs::{LoadedJob, fanout_job_id, purge_job_id};
pub use reads::Reader;
pub use write::Published;

use std::sync::Arc;

use feed_core::{Clock, IdGenerator};

use crate::graph::Graph;
use crate::queue::{EventQueue, FanoutQueue};
use crate::store::ActivityStore;
use crate::validate::Limits;

/// Publish settings.
#[derive(Debug, Clone)]
pub struct PublishRules {
    /// Input limits.
    pub limits: Limits,
    /// Failed attempts before a job is dead-lettered.
    pub max_attempts: u32,
    /// Inbox cap (rebuilds read this many ids per followed feed).
    pub inbox_cap: usize,
    /// Feed kinds an actor may target with `to` only as a member of the
    /// feed (follow-graph's SetMembership; following is not enough).
    pub member_only_kinds: Vec<String>,
    /// Most items one actor may have scheduled and not yet released.
    pub max_scheduled: usize,
    /// Fanout jobs per actor per minute in the fast lane (0: no budget).
    pub actor_fanout_per_minute: u32,
}

impl Default for PublishRules {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_attempts: 5,
            inbox_cap: 800,
            member_only_kinds: vec!["group".into(), "company".into()],
            max_scheduled: 1000,
            actor_fanout_per_minute: 120,
        }
    }
}

/// The publish service.
#[derive(Clone)]
pub struct Publisher {
    store: Arc<dyn ActivityStore>,
    graph: Arc<dyn Graph>,
    queue: Arc<dyn FanoutQueue>,
    /// Where event jobs wait for notify once a worker handed them over:
    /// the sweeper asks it too before re-driving one.
    events: Arc<EventQueue>,
    ids: IdGenerator,
    clock: Arc<dyn Clock>,
    cfg: Arc<PublishRules>,
    /// Edge jobs made from the log's trailing window, by job id, with
    /// their positions (see [`Publisher::ingest_late_edges`]).
    ingested: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    /// The edge cursor whose trailing window a pass read after every
    /// change in it was past its commit deadline: nothing can land there
    /// any more, so the window is not read again until the cursor moves.
    settled_cursor: Arc<std::sync::Mutex<Option<u64>>>,
    /// Each actor's fanout budget: past it, their jobs take the bulk lane.
    budget: Arc<FanoutBudget>,
}

impl Publisher {
    /// A publisher over its dependencies.
    pub fn new(
        store: Arc<dyn ActivityStore>,
        graph: Arc<dyn Graph>,
        queue: Arc<dyn FanoutQueue>,
        events: Arc<EventQueue>,
        ids: IdGenerator,
        clock: Arc<dyn Clock>,
        cfg: PublishRules,
    ) -> Self {
        Self {
            store,
            graph,
            queue,
            events,
            ids,
            clock,
            budget: Arc::new(FanoutBudget::new(cfg.actor_fanout_per_minute)),
            cfg: Arc::new(cfg),
            ingested: Arc::default(),
            settled_cursor: Arc::default(),
        }
    }

    /// The same publisher charging fanout budgets held in `redis`, shared
    /// with every other replica on it.
    pub fn with_shared_budget(mut self, redis: feed_redis::Redis) -> Self {
        self.budget = Arc::new(FanoutBudget::shared(self.cfg.actor_fanout_per_minute, redis));
        self
    }

    /// The store (readiness, sweeper).
    pub fn store(&self) -> &Arc<dyn ActivityStore> {
        &self.store
    }

    /// The queue (workers, sweeper).
    pub fn queue(&self) -> &Arc<dyn FanoutQueue> {
        &self.queue
    }

    fn now(&self) -> i64 {
        self.clock.now_ms() as i64
    }

    /// The inbox cap (backfills read this many entries per feed).
    pub fn inbox_cap(&self) -> usize {
        self.cfg.inbox_cap
    }
}
