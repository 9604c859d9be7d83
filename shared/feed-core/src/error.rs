//! The platform's error vocabulary and its one mapping to gRPC status codes.

use tonic::{Code, Status};

/// An error a service returns to its caller. Every service error converts
/// into this, and only `From<ApiError> for Status` picks the gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A request field is malformed; the message names the field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The request field, as named in the proto.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The addressed thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A different item already holds this identity.
    #[error("{0}")]
    AlreadyExists(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials that may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The system is not in a state that allows this (e.g. a block stands).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was reached (too many follows, rebuild budget spent).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency is down; retrying later may succeed. The detail (a
    /// Redis error, a peer's message) is logged, not sent.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// UNAVAILABLE for a reason that is the caller's to know (a rebuild
    /// budget spent, a server draining): sent as written. A fixed text, so
    /// no internal detail can ride along.
    #[error("{0}")]
    RetryLater(&'static str),
    /// A bug or an unexpected storage failure. The detail is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// A peer service refused the caller's request for a reason that is the
    /// caller's (see [`ApiError::from_peer`]): passed on with the peer's code.
    #[error("{message}")]
    Peer {
        /// The peer's code: a client error (INVALID_ARGUMENT, NOT_FOUND...).
        code: Code,
        /// "<peer>: <its message>".
        message: String,
    },
}

impl ApiError {
    /// INVALID_ARGUMENT naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A peer service's answer as this service's error, by its code (as
    /// quickwit's `grpc_status_to_service_error`): an error that is the
    /// request's (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
    /// PERMISSION_DENIED, FAILED_PRECONDITION, OUT_OF_RANGE,
    /// RESOURCE_EXHAUSTED) keeps its code, so a caller is not told to retry
    /// what will never succeed; a peer that failed or did not answer is
    /// UNAVAILABLE (retry); a peer refusing this service's own credentials,
    /// or a bug between the two, is INTERNAL.
    pub fn from_peer(peer: &str, status: &tonic::Status) -> Self {
        let message = format!("{peer}: {}", status.message());
        match status.code() {
            code @ (Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::ResourceExhausted) => Self::Peer { code, message },
            Code::Unauthenticated | Code::Unimplemented | Code::Internal | Code::DataLoss => Self::Internal(message),
            code => Self::Unavailable(format!("{peer}: {code}: {}", status.message())),
        }
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unavailable(_) | Self::RetryLater(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
            Self::Peer { code, .. } => *code,
        }
    }
}

/// What a caller reads in an UNAVAILABLE answer whose cause is internal.
pub const UNAVAILABLE_MESSAGE: &str = "temporarily unavailable; retry";

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        match &err {
            // Internal details may carry storage paths or queries: log them, send a generic text.
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                Status::internal("internal error")
            }
            // The detail names backends, addresses and peers' own texts:
            // logged (under the request's id), not sent to the caller.
            ApiError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "dependency unavailable");
                Status::unavailable(UNAVAILABLE_MESSAGE)
            }
            _ => Status::new(err.code(), err.to_string()),
        }
    }
}

/// A storage backend's failure (embedded store, CQL, Redis-backed stores):
/// one type for every store, so each converts to [`ApiError`] one way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The backend did not answer: retryable.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backend failed or holds data this code cannot read.
    #[error("storage error: {0}")]
    Backend(String),
}

impl StorageError {
    /// An embedded store that could not open `dir`, named: the usual cause
    /// is a second process on the same data directory (each process needs
    /// a `storage.data_dir` of its own).
    pub fn opening(dir: &std::path::Path, e: impl std::fmt::Display) -> Self {
        StorageError::Backend(format!(
            "opening the store in {}: {e} (is another process using this directory? each process needs its own storage.data_dir)",
            dir.display()
        ))
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Unavailable(m) => ApiError::Unavailable(m),
            StorageError::Backend(m) => ApiError::Internal(m),
        }
    }
}

impl From<crate::IdError> for ApiError {
    /// No id can be minted until the lease is back or the clock caught up: retry.
    fn from(e: crate::IdError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_status_names_the_field() {
        let status = Status::from(ApiError::invalid("feed", "must be kind:key"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("feed"), "{}", status.message());
    }

    #[test]
    fn a_peers_client_errors_keep_their_code_and_its_failures_become_retryable() {
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::ResourceExhausted,
        ] {
            let status = Status::from(ApiError::from_peer(
                "follow-graph",
                &Status::new(code, "invalid feed: no colon"),
            ));
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), "follow-graph: invalid feed: no colon");
        }
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Unknown,
            Code::Aborted,
        ] {
            let err = ApiError::from_peer("publish", &Status::new(code, "down"));
            assert_eq!(err.code(), Code::Unavailable, "{code:?}");
        }
        for code in [
            Code::Unauthenticated,
            Code::Unimplemented,
            Code::Internal,
            Code::DataLoss,
        ] {
            let err = ApiError::from_peer("publish", &Status::new(code, "token refused"));
            assert_eq!(err.code(), Code::Internal, "{code:?}: not the caller's credentials");
        }
    }

    #[test]
    fn unavailable_status_hides_the_detail_and_a_reason_for_the_caller_is_sent() {
        let status = Status::from(ApiError::Unavailable("redis 10.0.0.7:6379: Connection refused".into()));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), UNAVAILABLE_MESSAGE);
        let peer = ApiError::from_peer(
            "publish",
            &Status::unavailable("inbox store: redis://10.0.0.7 timed out"),
        );
        assert_eq!(
            Status::from(peer).message(),
            UNAVAILABLE_MESSAGE,
            "a peer's text stays inside"
        );
        let reason = Status::from(ApiError::RetryLater("inbox rebuild budget exhausted; retry"));
        assert_eq!(
            (reason.code(), reason.message()),
            (Code::Unavailable, "inbox rebuild budget exhausted; retry")
        );
    }

    #[test]
    fn internal_status_hides_the_detail() {
        let status = Status::from(ApiError::Internal("/secret/path corrupt".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
