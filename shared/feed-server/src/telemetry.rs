//! Structured logs (text or JSON), filtered by `RUST_LOG` or configuration.

use tracing_subscriber::EnvFilter;

use crate::config::TelemetryConfig;

/// Installs the global subscriber. Safe to call twice (the second is a no-op),
/// so tests and the all-in-one binary can share it.
pub fn init(cfg: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr: stdout is for what a person or script reads (addresses, tokens).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    let _ = if cfg.log_format == "json" {
        builder.json().flatten_event(true).with_current_span(true).try_init()
    } else {
        builder.try_init()
    };
}
