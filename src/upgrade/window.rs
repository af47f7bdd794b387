//! The write pause window as a component: its deadline, its start and end,
//! and the pause keeper armed while it is open. An upgrade kind holds one
//! [`PauseWindow`] and tells it when PAUSE is sent, when the deadline
//! stops binding (promote) and when RESUME returned; every wait inside the
//! window asks it for its bound ([`PauseWindow::query_limit`], [`remaining`]).
//!
//! Two clocks, on purpose: the **deadline** (`upgrade.pause_timeout`, a
//! `tokio` instant so that waits can sleep until it) binds from PAUSE to
//! promote, and a missed deadline rolls back; the **window** (a wall-clock
//! `std` instant) is what clients feel, PAUSE sent to RESUME returned, and
//! is only measured.
//!
//! The window does not reach the pooler or the guard itself: the saga hands
//! the same deadline to both (`Saga::set_pause_deadline`), so this module
//! stays below everything that uses it.

use std::time::Duration;

use tokio::time::Instant;

use super::error::{q, UpgradeError};
use super::keeper::{Keeper, PERSIST};
use crate::config::{Cluster, ConnString, CutoverKind};

/// A client-side deadline for one query (or a short exchange of them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    pub until: Instant,
    /// The pause deadline is what binds: missing it is a pause timeout.
    pub pause: bool,
    pub after: Duration,
}

impl Limit {
    fn expired(&self, what: String) -> UpgradeError {
        if self.pause {
            UpgradeError::PauseTimeout { what }
        } else {
            UpgradeError::Timeout {
                what,
                after: self.after,
            }
        }
    }

    /// `f` against `target`, or a timeout error at the deadline.
    pub async fn run<T>(
        self,
        target: &ConnString,
        f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, UpgradeError> {
        match tokio::time::timeout_at(self.until, f).await {
            Ok(r) => r.map_err(|e| q(target, e)),
            Err(_) => Err(self.expired(format!("an answer from {target}"))),
        }
    }

    /// Any other wait (provider, pooler, connect) under the same deadline.
    pub async fn wrap<T, E: Into<UpgradeError>>(
        self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, UpgradeError> {
        match tokio::time::timeout_at(self.until, f).await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(self.expired(what.to_string())),
        }
    }
}

/// Time left until `deadline`, or the pause-timeout error.
pub(crate) fn remaining(deadline: Instant, what: &str) -> Result<Duration, UpgradeError> {
    let now = Instant::now();
    if now >= deadline {
        return Err(UpgradeError::PauseTimeout {
            what: what.to_string(),
        });
    }
    Ok(deadline - now)
}

/// The write pause of one run, as this process saw it.
#[derive(Default)]
pub(crate) struct PauseWindow {
    /// Shared by the pause-deadline steps (pause_writes to final_sync), set
    /// when PAUSE is sent, cleared once promote starts or a roll back begins.
    deadline: Option<Instant>,
    /// When PAUSE was sent, while the window is open in this process.
    start: Option<std::time::Instant>,
    /// PAUSE sent → RESUME returned, when this process ran the whole window.
    length: Option<Duration>,
    /// Armed while this run holds (or undoes) a write pause (keeper.rs).
    keeper: Option<Keeper>,
}

impl PauseWindow {
    /// The pause deadline, while it binds.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Sets (at PAUSE) or clears (once promote starts) the pause deadline.
    /// The caller hands the same value to the pooler and the guard.
    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// The deadline a step of the window works to: the one set at PAUSE,
    /// or, resumed after a crash (forward only happens past promote), a
    /// fresh `pause_timeout` from now: no deadline left to keep.
    pub(crate) fn deadline_or(&self, pause_timeout: Duration) -> Instant {
        self.deadline
            .unwrap_or_else(|| Instant::now() + pause_timeout)
    }

    /// The deadline of the next query: `after` (the query timeout) from
    /// now, or the pause deadline inside the pause when that comes first.
    pub(crate) fn query_limit(&self, after: Duration) -> Limit {
        let plain = Instant::now() + after;
        match self.deadline {
            Some(d) if d < plain => Limit {
                until: d,
                pause: true,
                after,
            },
            _ => Limit {
                until: plain,
                pause: false,
                after,
            },
        }
    }

    /// PAUSE is about to be sent: the client-visible window starts now.
    pub(crate) fn open(&mut self) {
        self.start = Some(std::time::Instant::now());
    }

    /// The client-visible window closes when RESUME returns (or, without a
    /// pooler, when the last step of the window ends). Once only: a second
    /// call finds no start and leaves the length measured by the first.
    pub(crate) fn close(&mut self) {
        if let Some(t0) = self.start.take() {
            self.length = Some(t0.elapsed());
        }
    }

    /// PAUSE sent → RESUME returned, when this process ran the whole window.
    pub(crate) fn length(&self) -> Option<Duration> {
        self.length
    }

    /// Arms the pause keeper before this run pauses writes or undoes a
    /// pause (once; only with PgBouncer in front).
    pub(crate) fn arm_keeper(&mut self, cfg: &Cluster) {
        if self.keeper.is_none() && cfg.cutover.kind == CutoverKind::Pgbouncer {
            self.keeper = Keeper::arm(cfg);
        }
    }

    /// RESUME reached every PgBouncer: the window is closed, the keeper exits.
    pub(crate) fn disarm_keeper(&mut self) {
        if let Some(k) = self.keeper.take() {
            k.disarm();
        }
    }

    /// What the armed keeper will do once this run exits ("" when none).
    pub(crate) fn keeper_note(&self) -> String {
        match &self.keeper {
            Some(k) => format!(
                "The pause keeper (pid {}) retries the roll back for up to {:?} once this run has exited. ",
                k.pid(),
                PERSIST
            ),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pause_deadline_binds_a_query_only_when_it_comes_first() {
        let mut w = PauseWindow::default();
        let after = Duration::from_secs(5);
        assert!(!w.query_limit(after).pause);
        w.set_deadline(Some(Instant::now() + Duration::from_secs(1)));
        let l = w.query_limit(after);
        assert!(l.pause);
        assert_eq!(Some(l.until), w.deadline());
        w.set_deadline(Some(Instant::now() + Duration::from_secs(60)));
        assert!(!w.query_limit(after).pause);
    }

    #[test]
    fn the_window_is_measured_once() {
        let mut w = PauseWindow::default();
        w.close();
        assert_eq!(w.length(), None);
        w.open();
        w.close();
        let first = w.length();
        assert!(first.is_some());
        w.close();
        assert_eq!(w.length(), first);
    }
}
