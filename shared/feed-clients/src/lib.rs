//! One typed client per peer service, so every caller chunks to the peer's
//! caps, maps its status by code and treats a malformed answer the same
//! way. Each service keeps its own narrow trait of what it needs from a
//! peer (in-process fakes implement it in tests); the gRPC implementations
//! of those traits wrap these clients.

mod coalesce;
mod follow_graph;

pub use coalesce::{Batched, Coalesced};

pub use follow_graph::{FOLLOW_GRAPH_BATCH, FollowGraphClient, Follower, GraphVersion};

/// The name follow-graph's health service reports it under.
pub const FOLLOW_GRAPH_SERVICE: &str = "feed.followgraph.v1.FollowGraphService";
/// Feeds publish takes in one `ReadHome` or `ReadOutboxes` call; a home
/// read covers at most this many followed feeds (`timeline.max_feeds_per_read`
/// is capped to it).
pub const PUBLISH_MAX_FEEDS: usize = 1000;

/// The name publish's health service reports it under.
pub const PUBLISH_SERVICE: &str = "feed.publish.v1.PublishService";
