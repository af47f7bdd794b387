//! The readers' side of the guard: the guard row and the moved-primary
//! marker as the service, the CronJob and the partition pass read them, and
//! what partition DDL must do about them. Plain SELECTs any role may run;
//! the runner's side (lock sessions, claiming and updating the row) is the
//! parent module.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::sql::{MOVED_MARK, READ};
use super::{bounded, query_err, GuardError, CLAIMED_STEP};
use crate::upgrade::step::{Step, STEPS};

/// The guard row as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardRow {
    pub epoch: i64,
    pub upgrade_id: String,
    pub host: String,
    pub state_dir: String,
    pub started: DateTime<Utc>,
    pub step: String,
    pub since: DateTime<Utc>,
    pub cutover: bool,
    pub finished: bool,
    pub new_primary: Option<String>,
    /// `pg_control_system().system_identifier` of the server the row was claimed on.
    pub system_identifier: Option<String>,
}

impl GuardRow {
    pub(super) fn in_flight(&self, lock: &'static str) -> GuardError {
        GuardError::InFlight {
            id: self.upgrade_id.clone(),
            detail: format!(
                "cluster {}, host {}, state_dir {}, step {} since {}, started {}{lock}",
                self.system_identifier.as_deref().unwrap_or("?"),
                self.host,
                self.state_dir,
                self.step,
                self.since.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
                self.started.format("%Y-%m-%d %H:%M:%S UTC"),
            ),
        }
    }
}

/// The step an unfinished upgrade is in, from the primary's guard row (a
/// claimed row is at the prechecks); `None` when no upgrade is in flight or
/// the row names a step this binary does not know. A runner that died
/// leaves its step here, so the service's gauges and the alerts see it.
pub fn current_step(row: Option<&GuardRow>) -> Option<Step> {
    let row = row.filter(|r| !r.finished)?;
    if row.step == CLAIMED_STEP {
        return STEPS.first().copied();
    }
    Step::from_name(&row.step)
}

/// The value of `pgsteward_upgrade_step`: the 1-based position of
/// [`current_step`] in the saga, 0 when none. For people and dashboards;
/// alerts use the step's name and `pgsteward_upgrade_in_write_pause`,
/// which do not move when a step is added.
pub fn step_number(row: Option<&GuardRow>) -> u32 {
    current_step(row).map_or(0, |s| s.index() as u32 + 1)
}

/// What the guard row says about the upgrade in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpgradeStepReading {
    /// 1-based position in the saga, 0 when none.
    pub position: u32,
    /// Journal name and region of the step (None when none).
    pub step: Option<(&'static str, &'static str)>,
    /// PAUSE sent → RESUME returned.
    pub in_write_pause: bool,
}

/// Every `pgsteward_upgrade_*` gauge for what the guard row says.
pub fn step_reading(row: Option<&GuardRow>) -> UpgradeStepReading {
    let step = current_step(row);
    UpgradeStepReading {
        position: step_number(row),
        step: step.map(|s| (s.name(), s.region().name())),
        in_write_pause: step.is_some_and(|s| s.in_pause_window()),
    }
}

/// Where an upgrade moved the primary, on the old node: a setting in its
/// postgresql.auto.conf, not a row, because a write to the old primary after
/// the final sync would reach its replicas and keep them from following the
/// new primary. `(upgrade id, new primary)`.
pub async fn moved_marker(
    client: &Client,
    target: &str,
    after: Duration,
) -> Result<Option<(String, String)>, GuardError> {
    let v: Option<String> = bounded(target, after, client.query_one(MOVED_MARK, &[]))
        .await?
        .get(0);
    Ok(v.as_deref()
        .and_then(|v| v.split_once(' '))
        .map(|(id, new)| (id.to_string(), new.to_string())))
}

/// The guard row, `None` when no upgrade ever ran here (no table yet);
/// `new_primary` from [`moved_marker`].
pub async fn read(
    client: &Client,
    target: &str,
    after: Duration,
) -> Result<Option<GuardRow>, GuardError> {
    let moved = moved_marker(client, target, after).await?;
    let mut row = read_row(client, target, after).await?;
    if let Some((id, new)) = moved {
        let r = row.get_or_insert_with(|| GuardRow {
            epoch: 0,
            upgrade_id: id.clone(),
            host: String::new(),
            state_dir: String::new(),
            started: Utc::now(),
            step: "moved".into(),
            since: Utc::now(),
            cutover: false,
            finished: true,
            new_primary: None,
            system_identifier: None,
        });
        r.upgrade_id = id;
        r.new_primary = Some(new);
    }
    Ok(row)
}

async fn read_row(
    client: &Client,
    target: &str,
    after: Duration,
) -> Result<Option<GuardRow>, GuardError> {
    let rows = match tokio::time::timeout(after, client.query(READ, &[])).await {
        Err(_) => {
            return Err(GuardError::Timeout {
                target: target.to_string(),
                after,
            })
        }
        Ok(Err(e))
            if e.code() == Some(&SqlState::UNDEFINED_TABLE)
                || e.code() == Some(&SqlState::INVALID_SCHEMA_NAME) =>
        {
            return Ok(None)
        }
        Ok(Err(e)) => return Err(query_err(target, e)),
        Ok(Ok(rows)) => rows,
    };
    Ok(rows.first().map(|r| GuardRow {
        epoch: r.get(0),
        upgrade_id: r.get(1),
        host: r.get(2),
        state_dir: r.get(3),
        started: r.get(4),
        step: r.get(5),
        since: r.get(6),
        cutover: r.get(7),
        finished: r.get(8),
        new_primary: r.get(9),
        system_identifier: r.get(10),
    }))
}

/// The guard row of `target`'s server, read in its guard database (see
/// [`super::GUARD_DATABASE`]) on a session of its own.
pub async fn read_cluster(
    target: &crate::config::ConnString,
    connect_timeout: Duration,
    after: Duration,
) -> Result<Option<GuardRow>, GuardError> {
    let client = super::reader_session(target, connect_timeout).await?;
    read(&client, &target.to_string(), after).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: &str, finished: bool) -> GuardRow {
        GuardRow {
            epoch: 1,
            upgrade_id: "u1".into(),
            host: "pod".into(),
            state_dir: "/state".into(),
            started: Utc::now(),
            step: step.into(),
            since: Utc::now(),
            cutover: false,
            finished,
            new_primary: None,
            system_identifier: None,
        }
    }

    #[test]
    fn the_gauge_is_the_saga_position_of_an_unfinished_upgrade() {
        assert_eq!(step_number(None), 0);
        assert_eq!(step_number(Some(&row(CLAIMED_STEP, false))), 1);
        assert_eq!(step_number(Some(&row("precheck", false))), 1);
        assert_eq!(step_number(Some(&row("pause_writes", false))), 7);
        assert_eq!(step_number(Some(&row("resume_writes", false))), 12);
        let last = STEPS[STEPS.len() - 1].name();
        assert_eq!(step_number(Some(&row(last, false))), STEPS.len() as u32);
        // The pause window by name, wherever it sits in the saga.
        let in_pause =
            |s: &str| current_step(Some(&row(s, false))).is_some_and(|s| s.in_pause_window());
        assert!(in_pause("pause_writes") && in_pause("promote") && in_pause("resume_writes"));
        assert!(!in_pause("wait_catchup") && !in_pause("verify") && !in_pause(CLAIMED_STEP));
        assert_eq!(
            current_step(Some(&row("a_step_of_a_newer_release", false))),
            None
        );
        // Finished (also a claim given up, or a node the primary moved away from).
        assert_eq!(step_number(Some(&row(last, true))), 0);
        assert_eq!(step_number(Some(&row("gave_up", true))), 0);
        assert_eq!(step_number(Some(&row("moved", true))), 0);
    }
}
