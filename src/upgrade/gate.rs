//! The one answer to "may DDL run on `database.primary` now?", asked by every
//! DDL path (the partition pass per table, archive retirements, index
//! builds, and before them the service, the CronJob and the CLI): clear,
//! wait (an upgrade is between `pause_writes` and `verify`: the node is being
//! fenced or promoted), or moved (an upgrade made another node the primary:
//! DDL meant for it must not land here).
//!
//! Two witnesses: the primary's guard row (an upgrade run from any host,
//! read in the cluster's guard database) and this state_dir's journal (a
//! runner on this host whose guard row is not written yet). The decision is
//! the pure [`decide`]; [`DdlGate`] reads and keeps one session for a pass.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::error::UpgradeError;
use super::guard::{self, GuardError, GuardRow};
use super::journal;
use crate::config::{Cluster, ConnString};

/// What DDL may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Clear,
    /// A cutover runs: skip now, the next pass (or a bounded wait) goes on.
    Wait(String),
    /// An upgrade promoted another node: refuse.
    Moved {
        id: String,
        new_primary: String,
    },
}

/// Pure: the gate from the guard row (if any) and whether this state_dir's
/// journal is in a cutover. A moved primary wins over everything: no wait
/// ends it.
pub fn decide(row: Option<&GuardRow>, journal_in_cutover: bool) -> Gate {
    if let Some(r) = row {
        if let Some(new) = &r.new_primary {
            return Gate::Moved {
                id: r.upgrade_id.clone(),
                new_primary: new.clone(),
            };
        }
        if r.cutover && !r.finished {
            return Gate::Wait(format!(
                "upgrade {} is cutting over (step {}); partition DDL waits for it",
                r.upgrade_id, r.step
            ));
        }
    }
    if journal_in_cutover {
        return Gate::Wait(
            "an upgrade of this state_dir is cutting over; partition DDL waits for it".into(),
        );
    }
    Gate::Clear
}

/// The gate of one primary, with its guard-database session kept between
/// questions (a pass asks once per table).
pub struct DdlGate {
    target: ConnString,
    state_dir: std::path::PathBuf,
    connect_timeout: Duration,
    after: Duration,
    session: Option<Client>,
    /// Why the guard row could not be read, once a read failed twice: the
    /// rest of the pass is refused at once instead of waiting out a hung or
    /// unreachable guard database again for every table.
    broken: Option<String>,
}

impl DdlGate {
    pub fn new(cfg: &Cluster) -> DdlGate {
        DdlGate::on(
            cfg.database.primary.clone(),
            cfg.state_dir.clone(),
            cfg.database.connect_timeout.0,
        )
    }

    fn on(target: ConnString, state_dir: std::path::PathBuf, connect_timeout: Duration) -> DdlGate {
        DdlGate {
            target,
            state_dir,
            connect_timeout,
            after: connect_timeout.max(Duration::from_secs(5)),
            session: None,
            broken: None,
        }
    }

    /// Reads both witnesses. A guard row that cannot be read is an error:
    /// DDL does not run blind to an upgrade.
    pub async fn ask(&mut self) -> Result<Gate, GuardError> {
        if let Some(why) = &self.broken {
            return Err(GuardError::Query {
                target: self.target.to_string(),
                message: format!("{why} (not asked again in this pass)"),
            });
        }
        let journal_in_cutover = journal::latest_readonly(&self.state_dir)
            .ok()
            .flatten()
            .and_then(|p| journal::read(&p).ok())
            .is_some_and(|r| r.in_cutover());
        let row = match self.read_row().await {
            Ok(row) => row,
            Err(_) => {
                // A session the server closed (restart, idle timeout): once more, fresh.
                self.session = None;
                match self.read_row().await {
                    Ok(row) => row,
                    Err(e) => {
                        self.broken = Some(e.to_string());
                        return Err(e);
                    }
                }
            }
        };
        Ok(decide(row.as_ref(), journal_in_cutover))
    }

    async fn read_row(&mut self) -> Result<Option<GuardRow>, GuardError> {
        if self.session.is_none() {
            self.session = Some(guard::reader_session(&self.target, self.connect_timeout).await?);
        }
        match &self.session {
            Some(c) => guard::read(c, &self.target.to_string(), self.after).await,
            None => Ok(None),
        }
    }

    /// Waits while the gate says wait, polling every second, for up to
    /// `limit`; cancellable. An unreadable guard row counts as clear here:
    /// the command's own checks (the pass asks again, per table) decide.
    pub async fn wait_clear(
        &mut self,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), UpgradeError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut said = false;
        loop {
            match self.ask().await {
                Ok(Gate::Wait(reason)) => {
                    if !said {
                        tracing::info!(%reason, "waiting for the upgrade cutover to finish");
                        said = true;
                    }
                }
                Ok(Gate::Moved { id, new_primary }) => {
                    return Err(UpgradeError::PrimaryMoved {
                        old: self.target.to_string(),
                        id,
                        new: new_primary,
                    })
                }
                Ok(Gate::Clear) | Err(_) => return Ok(()),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(UpgradeError::Timeout {
                    what: "the upgrade cutover to finish (see `pgsteward upgrade status`)".into(),
                    after: limit,
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = cancel.cancelled() => return Err(UpgradeError::Cancelled),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn row(cutover: bool, finished: bool, moved: Option<&str>) -> GuardRow {
        GuardRow {
            epoch: 1,
            upgrade_id: "u1".into(),
            host: "h".into(),
            state_dir: "/s".into(),
            started: Utc::now(),
            step: "fence_old_primary".into(),
            since: Utc::now(),
            cutover,
            finished,
            new_primary: moved.map(String::from),
            system_identifier: None,
        }
    }

    /// A guard database that cannot be reached is tried twice, then the
    /// rest of the pass is refused at once (no wait per table).
    #[tokio::test]
    async fn an_unreachable_guard_refuses_the_rest_of_the_pass_at_once() {
        let dir = std::env::temp_dir().join("pgsteward-gate-test-no-journal");
        let target = ConnString::new(
            "host=127.0.0.1 port=1 user=steward dbname=app password=x sslmode=disable",
        );
        let mut gate = DdlGate::on(target, dir, Duration::from_secs(1));
        assert!(gate.ask().await.is_err());
        let t0 = std::time::Instant::now();
        let again = gate.ask().await;
        assert!(t0.elapsed() < Duration::from_millis(50));
        assert!(
            matches!(&again, Err(e) if e.to_string().contains("not asked again")),
            "{again:?}"
        );
    }

    #[test]
    fn clear_without_an_upgrade_or_after_one() {
        assert_eq!(decide(None, false), Gate::Clear);
        assert_eq!(decide(Some(&row(false, true, None)), false), Gate::Clear);
        assert_eq!(decide(Some(&row(true, true, None)), false), Gate::Clear);
    }

    #[test]
    fn a_cutover_in_either_witness_waits() {
        assert!(
            matches!(decide(Some(&row(true, false, None)), false), Gate::Wait(r) if r.contains("u1") && r.contains("fence_old_primary"))
        );
        assert!(matches!(decide(None, true), Gate::Wait(_)));
    }

    #[test]
    fn a_moved_primary_wins_over_everything() {
        let moved = Gate::Moved {
            id: "u1".into(),
            new_primary: "new:5432".into(),
        };
        assert_eq!(
            decide(Some(&row(true, false, Some("new:5432"))), true),
            moved
        );
        assert_eq!(
            decide(Some(&row(false, true, Some("new:5432"))), false),
            moved
        );
    }
}
