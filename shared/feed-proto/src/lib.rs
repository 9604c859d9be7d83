//! The feed platform's gRPC contract, compiled once for every crate.

pub use prost;
pub use tonic;

/// Encoded `FileDescriptorSet` of every feed proto, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/feed_descriptor.bin"));

/// `feed.common.v1`: messages shared by every service.
pub mod common {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("feed.common.v1");
    }
}

/// `feed.followgraph.v1`: who follows which feed.
pub mod followgraph {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("feed.followgraph.v1");
    }
}

/// `feed.publish.v1`: activities, outboxes and fanout.
pub mod publish {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("feed.publish.v1");
    }
}

/// `feed.timeline.v1`: home timelines and feed pages.
pub mod timeline {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("feed.timeline.v1");
    }
}

/// `feed.notify.v1`: notifications.
pub mod notify {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("feed.notify.v1");
    }
}

/// `feed.events.v1`: messages on streams between services.
pub mod events {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("feed.events.v1");
    }
}

pub mod shared;
pub use shared::SharedActivity;

/// The publish and timeline services as they are served and called inside
/// the platform: the public messages, byte for byte, with every activity a
/// [`SharedActivity`] (encoded from where it is held, or passed through
/// undecoded). Only the messages that carry activities differ from the
/// public modules; every other type is the public one, re-exported.
pub mod wire {
    /// `feed.publish.v1` with shared activities.
    pub mod publish {
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            pub use crate::publish::v1::*;
            include!(concat!(env!("OUT_DIR"), "/wire/feed.publish.v1.rs"));
        }
    }
    /// `feed.timeline.v1` with shared activities.
    pub mod timeline {
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            pub use crate::timeline::v1::*;
            include!(concat!(env!("OUT_DIR"), "/wire/feed.timeline.v1.rs"));
        }
    }
}
