//! Domain primitives shared by every feed service: ids, cursors, feed
//! references, validation and the single error → gRPC status mapping.

pub mod cache;
pub mod clock;
pub mod cursor;
pub mod edge_log;
pub mod error;
pub mod feed_ref;
pub mod id;
pub mod keys;
pub mod validate;
pub mod visibility;

pub use clock::{Clock, ManualClock, SystemClock};
pub use cursor::{Cursor, PageToken};
pub use error::{ApiError, StorageError};
pub use feed_ref::FeedRef;
pub use id::{IdError, IdGenerator, NodeLease};

/// A user id. 0 is never a valid user.
pub type UserId = u64;
