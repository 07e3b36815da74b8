//! Errors that come in floods — every login and every KEY_INIT while the
//! state store is away — logged once per interval per kind, with how many
//! were left out, instead of once each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// At most one line per this many milliseconds per limiter.
const INTERVAL_MS: u64 = 5_000;

/// One kind of error's log budget.
#[derive(Debug)]
pub(crate) struct LogLimit {
    /// When the last line was let through (unix ms; 0: never).
    last_ms: AtomicU64,
    /// Occurrences left out since.
    dropped: AtomicU64,
}

impl LogLimit {
    pub(crate) const fn new() -> Self {
        Self {
            last_ms: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// `Some(left out since the last line)` when this one may be logged.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.admit_at(now)
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        if (last != 0 && now_ms.saturating_sub(last) < INTERVAL_MS)
            || self
                .last_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.dropped.swap(0, Ordering::Relaxed))
    }
}

/// Logs `error!` with the `error` field through a static [`LogLimit`], adding
/// `suppressed` (how many like it were left out since the last line).
macro_rules! error_limited {
    ($error:expr, $message:literal) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        if let Some(suppressed) = LIMIT.admit() {
            tracing::error!(error = %$error, suppressed, $message);
        }
    }};
}
pub(crate) use error_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counting_the_rest() {
        let limit = LogLimit::new();
        assert_eq!(limit.admit_at(1_000), Some(0));
        for t in 1_001..1_050 {
            assert_eq!(limit.admit_at(t), None);
        }
        assert_eq!(limit.admit_at(1_000 + INTERVAL_MS - 1), None);
        assert_eq!(limit.admit_at(1_000 + INTERVAL_MS), Some(50));
        assert_eq!(limit.admit_at(1_000 + 3 * INTERVAL_MS), Some(0));
    }
}
