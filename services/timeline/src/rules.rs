//! The timeline's rules, read from the configuration's `timeline` section.

use std::time::Duration;

/// Timeline settings.
#[derive(Debug, Clone)]
pub struct TimelineRules {
    /// Most items per page.
    pub max_limit: usize,
    /// A read scans at most this many candidate ids per returned item before
    /// answering with `has_more` (bounded reads, Invariant 9).
    pub scan_factor: usize,
    /// Most followed feeds read per page for pull-mode items and history
    /// (at most what publish takes per call, [`feed_clients::PUBLISH_MAX_FEEDS`]).
    pub max_feeds_per_read: usize,
    /// Inbox rebuilds running at once across all users (a Redis loss must not stampede the store).
    pub rebuild_budget: usize,
    /// A user's activity is recorded (the inbox expiry restarted) at most
    /// this often: reads are not writes.
    pub active_debounce: Duration,
}

impl Default for TimelineRules {
    fn default() -> Self {
        Self::from_config(&feed_server::config::TimelineConfig::default())
    }
}

impl TimelineRules {
    /// From the platform configuration's `timeline` section.
    pub fn from_config(c: &feed_server::config::TimelineConfig) -> Self {
        Self {
            max_limit: c.max_limit.max(1),
            scan_factor: c.scan_factor.max(1),
            max_feeds_per_read: c.max_feeds_per_read.clamp(1, feed_clients::PUBLISH_MAX_FEEDS),
            rebuild_budget: c.rebuild_budget.max(1),
            active_debounce: Duration::from_millis(c.active_debounce_ms),
        }
    }
}
