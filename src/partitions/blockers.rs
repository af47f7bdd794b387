//! Who blocks a statement that gave up on `lock_timeout`: the error and the
//! log name the sessions, so the operator knows which transaction to end.
//!
//! `pg_blocking_pids()` only answers while the statement still waits, so the
//! last attempt runs next to an observer session that samples it; when the
//! wait was too short to be seen, the holders of locks on the relations the
//! statement needed are named instead.

use crate::partitions::sql;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio_postgres::{Client, Row};

use super::session;
use crate::config::Cluster;

/// A session holding (or queued ahead for) a lock the pass needed.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocker {
    pub pid: i32,
    pub user: String,
    pub application: String,
    pub state: String,
    /// Seconds since its transaction began, when it has one.
    pub xact_age_s: Option<f64>,
    pub query_age_s: Option<f64>,
    pub query: String,
}

impl Blocker {
    pub(super) fn from_row(r: &Row) -> Blocker {
        Blocker {
            pid: r.get(0),
            user: r.get::<_, Option<String>>(1).unwrap_or_default(),
            application: r.get::<_, Option<String>>(2).unwrap_or_default(),
            state: r.get::<_, Option<String>>(3).unwrap_or_default(),
            xact_age_s: r.get(4),
            query_age_s: r.get(5),
            query: r.get::<_, Option<String>>(6).unwrap_or_default(),
        }
    }
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} (user {}, application {:?}, {}",
            self.pid, self.user, self.application, self.state
        )?;
        if let Some(a) = self.xact_age_s {
            write!(f, ", transaction open {a:.1}s")?;
        }
        if let Some(q) = self.query_age_s {
            write!(f, ", query started {q:.1}s ago: {:?}", self.query)?;
        }
        f.write_str(")")
    }
}

/// "blocked by pid 1 (...), pid 2 (...)", or a hint when nobody was seen.
pub fn describe(blockers: &[Blocker]) -> String {
    if blockers.is_empty() {
        return "no blocking session was seen (it ended in the meantime)".into();
    }
    let list = blockers
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    format!("blocked by {list}; end that transaction (pg_terminate_backend) or wait for it")
}

/// Runs `fut` (a statement of session `pid`) while a second session samples
/// who blocks it. Without an observer session the statement runs alone.
pub async fn watching<T>(
    cfg: &Cluster,
    pid: i32,
    fut: impl Future<Output = T>,
) -> (T, Vec<Blocker>) {
    let mut seen = Vec::new();
    let observer = match session::connect(cfg).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "no observer session for lock waits");
            return (fut.await, seen);
        }
    };
    let poll = (cfg.partitions.lock_timeout.0 / 4)
        .clamp(Duration::from_millis(5), Duration::from_millis(100));
    let mut tick = tokio::time::interval(poll);
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return (out, seen),
            _ = tick.tick() => {
                if let Ok(rows) = observer.query(sql::BLOCKERS, &[&pid]).await {
                    if !rows.is_empty() {
                        seen = rows.iter().map(Blocker::from_row).collect();
                    }
                }
            }
        }
    }
}

/// Other sessions holding any lock on `relations` (regclass texts).
pub async fn holders(client: &Client, relations: &[String]) -> Vec<Blocker> {
    match client.query(sql::LOCK_HOLDERS, &[&relations]).await {
        Ok(rows) => rows.iter().map(Blocker::from_row).collect(),
        Err(_) => Vec::new(),
    }
}

/// The blocker report of a statement that gave up: who holds a lock on
/// `relations` now, described ("blocked by pid ...", or a hint).
pub async fn report(client: &Client, relations: &[String]) -> String {
    describe(&holders(client, relations).await)
}
