//! The one backoff every retry loop of Bookshelf waits by: exponential from
//! a first pause, capped, and jittered (each pause drawn between the
//! exponential step and twice it, capped), so that instances that failed
//! together do not retry together. The delays come from
//! [`backon`]'s exponential backoff.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How often, and after what pauses, an operation that may succeed later is
/// tried again.
///
/// ```
/// use std::time::Duration;
/// use bookshelf_core::RetryPolicy;
///
/// let policy = RetryPolicy::attempts(4).with_backoff(Duration::from_millis(10));
/// let delays: Vec<Duration> = policy.delays().collect();
/// assert_eq!(delays.len(), 3); // four tries in all
/// assert!(delays.iter().all(|d| *d >= Duration::from_millis(10) && *d <= policy.max_backoff));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times to try in all (1 means no retry; `u32::MAX`, see
    /// [`forever`](Self::forever), means no limit).
    pub max_attempts: u32,
    /// The pause before the first retry; about doubled for each further one.
    pub backoff: Duration,
    /// No pause is longer than this.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// No retry.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };

    /// Up to `max_attempts` tries in all, from a 1 ms pause, pauses capped
    /// at one second.
    pub fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_secs(1),
        }
    }

    /// Tries with no limit, from `backoff`, pauses capped at `max_backoff`:
    /// for loops that must go on until the service comes back (watches).
    pub const fn forever(backoff: Duration, max_backoff: Duration) -> Self {
        RetryPolicy {
            max_attempts: u32::MAX,
            backoff,
            max_backoff: if max_backoff.as_nanos() < backoff.as_nanos() {
                backoff
            } else {
                max_backoff
            },
        }
    }

    /// The same policy with another first pause (the cap is raised to it if
    /// below).
    #[must_use]
    pub fn with_backoff(self, backoff: Duration) -> Self {
        RetryPolicy {
            backoff,
            max_backoff: self.max_backoff.max(backoff),
            ..self
        }
    }

    /// The same policy with another cap on each pause.
    #[must_use]
    pub fn with_max_backoff(self, max_backoff: Duration) -> Self {
        RetryPolicy {
            max_backoff: max_backoff.max(self.backoff),
            ..self
        }
    }

    /// The pauses before each retry, in order: `max_attempts - 1` of them
    /// (no end for [`forever`](Self::forever)). Empty for no retry; all zero
    /// for a zero backoff.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + 'static {
        let retries = self.max_attempts.saturating_sub(1) as usize;
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.backoff)
            .with_max_delay(self.max_backoff)
            .with_jitter();
        let builder = if self.max_attempts == u32::MAX {
            builder.without_max_times()
        } else {
            builder.with_max_times(retries)
        };
        let cap = self.max_backoff;
        let zero = self.backoff.is_zero();
        builder
            .build()
            .take(if self.max_attempts == u32::MAX {
                usize::MAX
            } else {
                retries
            })
            .map(move |delay| if zero { Duration::ZERO } else { delay.min(cap) })
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delays_grow_are_capped_and_differ_between_runs() {
        let policy = RetryPolicy::attempts(12)
            .with_backoff(Duration::from_millis(10))
            .with_max_backoff(Duration::from_millis(200));
        let first: Vec<Duration> = policy.delays().collect();
        assert_eq!(first.len(), 11);
        assert!(first.iter().all(|d| *d >= Duration::from_millis(10)), "{first:?}");
        assert!(first.iter().all(|d| *d <= Duration::from_millis(200)), "{first:?}");
        assert!(first[5] > first[0], "the pauses grow: {first:?}");
        let runs: Vec<Vec<Duration>> = (0..8).map(|_| policy.delays().collect()).collect();
        assert!(
            runs.iter().any(|run| run != &first),
            "jittered: eight runs, one sequence"
        );
    }

    #[test]
    fn no_retry_has_no_delay_and_forever_has_no_end() {
        assert_eq!(RetryPolicy::NONE.delays().count(), 0);
        assert_eq!(RetryPolicy::attempts(1).delays().count(), 0);
        let forever = RetryPolicy::forever(Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(forever.delays().take(1_000).count(), 1_000);
        assert!(forever.delays().take(1_000).all(|d| d <= Duration::from_secs(5)));
    }
}
