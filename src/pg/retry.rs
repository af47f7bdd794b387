//! Retrying a statement that lost a lock race: which server errors are worth
//! another attempt ([`is_transient`]), how long to wait between attempts
//! ([`Backoff`]), and the attempt counter whose every wait ends at once when
//! its cancellation token fires ([`Retry`]).
//!
//! A call site keeps its own loop (its attempt may borrow the session and
//! the report mutably), asking [`Retry::begin`] before each attempt and
//! [`Retry::again`] after each failure; the final error (with the blocker
//! report of the site's relations) is built by the site from
//! [`Retry::attempt`].

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

/// Whether a server error code means the statement lost a lock race
/// (`lock_timeout`, deadlock, serialization failure) rather than being wrong:
/// the same statement may succeed if run again.
pub fn is_transient(code: &SqlState) -> bool {
    *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
}

/// The pause before retry `attempt` (1-based): exponential from `base`,
/// capped at `cap`, plus up to `jitter_pct` % of it so competing sessions do
/// not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub jitter_pct: u32,
}

impl Backoff {
    /// Lock races: 50 ms doubling up to 2 s, up to 50 % jitter.
    pub const LOCK: Backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(2000),
        jitter_pct: 50,
    };
    /// Retry at once (races that the next attempt resolves by itself).
    pub const NONE: Backoff = Backoff {
        base: Duration::ZERO,
        cap: Duration::ZERO,
        jitter_pct: 0,
    };

    /// Pure: the pause without jitter, `base * 2^min(attempt, 6)` capped.
    pub fn nominal(&self, attempt: u32) -> Duration {
        self.base.saturating_mul(1 << attempt.min(6)).min(self.cap)
    }

    /// The pause with its jitter drawn.
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal = self.nominal(attempt);
        let most = nominal.as_millis() as u64 * u64::from(self.jitter_pct) / 100;
        nominal + Duration::from_millis(fastrand::u64(0..=most))
    }
}

/// The token fired: stop at this boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// The attempts of one statement (or transaction): at most `attempts`, with
/// [`Backoff`] pauses that `cancel` ends.
pub struct Retry<'a> {
    attempts: u32,
    backoff: Backoff,
    cancel: &'a CancellationToken,
    attempt: u32,
}

impl<'a> Retry<'a> {
    /// `attempts` is raised to 1: a statement runs at least once.
    pub fn new(attempts: u32, backoff: Backoff, cancel: &'a CancellationToken) -> Retry<'a> {
        Retry {
            attempts: attempts.max(1),
            backoff,
            cancel,
            attempt: 0,
        }
    }

    /// Starts the next attempt, unless the token fired.
    pub fn begin(&mut self) -> Result<u32, Cancelled> {
        if self.cancel.is_cancelled() {
            return Err(Cancelled);
        }
        self.attempt += 1;
        Ok(self.attempt)
    }

    /// The attempt running (or last run), 1-based.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the attempt running is the last one allowed.
    pub fn is_last(&self) -> bool {
        self.attempt >= self.attempts
    }

    /// After a failed attempt: `Ok(true)` once the pause is over when the
    /// failure is `transient` and attempts are left (logged with `error`),
    /// `Ok(false)` when the caller gives up, `Err` when cancelled while waiting.
    pub fn again(
        &self,
        transient: bool,
        error: &dyn Display,
    ) -> impl Future<Output = Result<bool, Cancelled>> + Send + 'a {
        let wait = (transient && !self.is_last()).then(|| self.backoff.delay(self.attempt));
        if let Some(wait) = wait.filter(|w| !w.is_zero()) {
            tracing::info!(attempt = self.attempt, wait_ms = wait.as_millis() as u64, error = %error, "lock not granted; retrying");
        }
        let cancel = self.cancel;
        async move {
            let Some(wait) = wait else {
                return Ok(false);
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => Ok(true),
                _ = cancel.cancelled() => Err(Cancelled),
            }
        }
    }
}

/// The token of a command that stops at a safe point: cancelled on the first
/// SIGINT or SIGTERM (logged as "stopping `what`").
pub fn cancel_on_signal(what: &'static str) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("signal received, stopping {what} at a safe point");
        t.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_races_are_transient_and_mistakes_are_not() {
        assert!(is_transient(&SqlState::LOCK_NOT_AVAILABLE));
        assert!(is_transient(&SqlState::T_R_DEADLOCK_DETECTED));
        assert!(is_transient(&SqlState::T_R_SERIALIZATION_FAILURE));
        assert!(!is_transient(&SqlState::UNIQUE_VIOLATION));
        assert!(!is_transient(&SqlState::QUERY_CANCELED));
        assert!(!is_transient(&SqlState::SYNTAX_ERROR));
    }

    #[test]
    fn lock_backoff_doubles_from_100ms_to_the_2s_cap() {
        let ms: Vec<u64> = (1..=8)
            .map(|a| Backoff::LOCK.nominal(a).as_millis() as u64)
            .collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        for a in 1..=8 {
            let n = Backoff::LOCK.nominal(a);
            let d = Backoff::LOCK.delay(a);
            assert!(d >= n && d <= n + n / 2, "{a}: {d:?} vs {n:?}");
        }
        assert_eq!(Backoff::NONE.delay(3), Duration::ZERO);
        assert_eq!(Backoff::LOCK.nominal(u32::MAX), Duration::from_millis(2000));
    }

    #[tokio::test]
    async fn retries_transient_failures_until_the_last_attempt() {
        let never = CancellationToken::new();
        let mut r = Retry::new(3, Backoff::NONE, &never);
        assert_eq!(r.begin(), Ok(1));
        assert_eq!(r.again(false, &"wrong").await, Ok(false));
        assert_eq!(r.again(true, &"race").await, Ok(true));
        assert_eq!(r.begin(), Ok(2));
        assert_eq!(r.again(true, &"race").await, Ok(true));
        assert_eq!(r.begin(), Ok(3));
        assert!(r.is_last());
        assert_eq!(r.again(true, &"race").await, Ok(false));
        assert_eq!(r.attempt(), 3);
        let zero = Retry::new(0, Backoff::NONE, &never);
        assert_eq!(zero.attempts, 1);
    }

    #[tokio::test]
    async fn cancellation_ends_the_wait_and_stops_the_next_attempt() {
        let cancel = CancellationToken::new();
        let slow = Backoff {
            base: Duration::from_secs(3600),
            cap: Duration::from_secs(3600),
            jitter_pct: 0,
        };
        let mut r = Retry::new(5, slow, &cancel);
        assert_eq!(r.begin(), Ok(1));
        let c = cancel.clone();
        tokio::spawn(async move { c.cancel() });
        assert_eq!(r.again(true, &"race").await, Err(Cancelled));
        assert_eq!(r.begin(), Err(Cancelled));
    }
}
