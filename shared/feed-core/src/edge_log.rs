//! Positions in follow-graph's edge change log, as its writers mint them
//! and publish consumes them.
//!
//! A position is the writer's clock in milliseconds times
//! [`POSITIONS_PER_MS`], plus a tie-breaker. On ScyllaDB many replicas
//! write the log, so a change can be committed with a position below one a
//! consumer has already read (a slow write, a replica whose clock lags):
//! consumers re-read the trailing [`LATE_WINDOW_MS`] and drop what they
//! already turned into jobs.

/// Positions per millisecond of the writer's clock.
pub const POSITIONS_PER_MS: u64 = 1_000_000;

/// How far behind the newest position read a change may still be committed
/// and be consumed (well above a write timeout plus clock skew).
pub const LATE_WINDOW_MS: u64 = 60_000;

/// The first position of millisecond `ms`.
pub fn position_at(ms: u64) -> u64 {
    ms.saturating_mul(POSITIONS_PER_MS)
}

/// The position `LATE_WINDOW_MS` before `position`.
pub fn window_start(position: u64) -> u64 {
    position.saturating_sub(position_at(LATE_WINDOW_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_this_century_fit_a_cql_bigint_and_the_window_is_a_minute() {
        let year_2100_ms = 4_102_444_800_000u64;
        assert!(position_at(year_2100_ms) + POSITIONS_PER_MS < i64::MAX as u64);
        assert_eq!(window_start(position_at(61_000)), position_at(1_000));
        assert_eq!(window_start(5), 0);
    }
}
