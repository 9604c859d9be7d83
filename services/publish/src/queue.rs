//! Carries fanout jobs to workers (the platform's generic queue, specialised
//! to [`Job`]). The durable store is a job's record; the sweeper re-drives.

use feed_proto::events::v1::{ActivityEvent, Job};

pub use feed_queue::QueueError;

/// A fanout job handed to one worker.
pub type Delivery = feed_queue::Delivery<Job>;
/// Where fanout jobs wait for workers.
pub trait FanoutQueue: feed_queue::JobQueue<Job> {}
impl<T: feed_queue::JobQueue<Job> + ?Sized> FanoutQueue for T {}
/// The in-process queue of feedd.
pub type MemoryFanoutQueue = feed_queue::MemoryQueue<Job>;
/// Jobs on a Redis Stream read by the workers' consumer group.
pub type RedisFanoutQueue = feed_queue::RedisQueue<Job>;
/// Where activity events wait for notify (its consumer group).
pub type EventQueue = dyn feed_queue::JobQueue<ActivityEvent>;
