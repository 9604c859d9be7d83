//! Server bootstrap shared by every feed binary: configuration, telemetry,
//! auth, health, reflection, request ids, metrics, limits and graceful drain.

pub mod admin;
pub mod app;
pub mod auth;
pub mod batched;
pub mod client;
pub mod config;
pub mod jwt;
pub mod limits;
pub mod observe;
pub mod quotas;
pub mod retry;
pub mod serve;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;

pub use app::{Application, Args, BuildContext};
pub use auth::{Authenticator, Caller, Role};
pub use config::FeedConfig;
/// The allocator every binary installs (`#[global_allocator]`): under load
/// glibc malloc's arena locks and consolidation took a quarter of a
/// timeline read's CPU; mimalloc more than doubled reads per second.
pub use mimalloc::MiMalloc as Allocator;
pub use retry::RetryBudget;
pub use serve::{
    Readiness, ServeOptions, ServiceSet, StartUp, run_after_signal, run_until_signal, run_with_signal, serve,
    serve_after,
};
pub use shutdown::Shutdown;

/// The largest gRPC message any server or internal client of the platform
/// sends or accepts (tonic's default is 4 MiB to decode, unbounded to
/// encode). 32 MiB holds a 500-id hydration batch of maximum-size
/// activities (about 31 KB each) with room to spare; the timeline
/// hydrates at most 200 per call.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// The deadline of every internal service-to-service call: shorter than
/// a request's own (`server.request_timeout_ms`, 10 s by default), so a
/// hung peer fails the call with DEADLINE_EXCEEDED while the caller can
/// still answer.
pub const INTERNAL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);
pub use tasks::Tasks;
