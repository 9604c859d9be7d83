//! The one place follow-graph failures become API errors (and so gRPC codes).

use feed_core::ApiError;

use crate::store::StoreError;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Blocked { .. } => ApiError::FailedPrecondition(e.to_string()),
            StoreError::TooManyFollows(_) | StoreError::TooManyBlocks(_) | StoreError::TooManyMutes(_) => {
                ApiError::ResourceExhausted(e.to_string())
            }
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            StoreError::Backend(m) => ApiError::Internal(m),
        }
    }
}
