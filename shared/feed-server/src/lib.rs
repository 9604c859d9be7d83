//! Server bootstrap shared by every feed binary: configuration, telemetry,
//! auth, health, reflection, request ids, metrics, limits and graceful drain.

pub mod admin;
pub mod app;
pub mod auth;
pub mod client;
pub mod config;
pub mod observe;
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
pub use serve::{
    Readiness, ServeOptions, ServiceSet, StartUp, run_after_signal, run_until_signal, run_with_signal, serve,
    serve_after,
};
pub use shutdown::Shutdown;
pub use tasks::Tasks;
