//! What the fence step leaves running for `final_sync` to wait for: the
//! probe login that proves the pg_hba.conf block is enforced, and the sync
//! that makes the block durable ([`Settling`]).
//!
//! Why these may overlap the final flush: neither makes the fence take
//! effect. The block takes effect with the reload, which the fence step
//! waits for before it ends the sessions. What must hold is that nothing is
//! promoted unless the probe saw a fenced role refused (the block is
//! enforced) and the block is on disk (a crash of the old node after promote
//! must not bring it back unfenced). So `final_sync`, the last step before
//! promote, waits for both: a probe that is not refused, or a sync that
//! fails, fails that step, and the roll back (before promote) lifts the
//! fence and resumes writes on the old primary, where every commit still
//! is. Meanwhile their cost (a backend forked and refused, 3-10 ms; a
//! directory fsync) is hidden behind the flush and the replay.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ConnString;
use crate::provider::fence::{probe_login, LoginProbe};
use crate::upgrade::error::UpgradeError;
use crate::upgrade::record::Step;
use crate::upgrade::window::remaining;

/// The fence step's work still running: the probe (none when no fenced
/// role could serve as one) and the sync of pg_hba.conf and its directory.
pub(crate) struct Settling {
    pub(super) probe: Option<ProbeRunning>,
    pub(super) hba: std::path::PathBuf,
    pub(super) synced: JoinHandle<Result<(), UpgradeError>>,
}

impl std::fmt::Debug for Settling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settling")
            .field("probe", &self.probe)
            .field("hba", &self.hba)
            .finish_non_exhaustive()
    }
}

impl Settling {
    /// Waits (within `deadline`) for the sync, then the probe: a note once
    /// both are done, an error naming what failed otherwise.
    pub(crate) async fn confirm(self, deadline: Instant) -> Result<String, UpgradeError> {
        let t = std::time::Instant::now();
        let left = remaining(deadline, "syncing pg_hba.conf")?;
        match tokio::time::timeout(left, self.synced).await {
            Err(_) => {
                return Err(UpgradeError::PauseTimeout {
                    what: format!("syncing {}", self.hba.display()),
                })
            }
            Ok(Ok(r)) => r?,
            Ok(Err(e)) => {
                return Err(UpgradeError::Step {
                    step: Step::FenceOldPrimary,
                    detail: format!("syncing {}: {e}", self.hba.display()),
                })
            }
        }
        let synced = format!(
            "fence durable (waited {:.1} ms)",
            t.elapsed().as_secs_f64() * 1000.0
        );
        match self.probe {
            Some(p) => Ok(format!("{synced}, {}", p.confirm(deadline).await?)),
            None => Ok(synced),
        }
    }
}

/// A probe login started once the block was loaded.
pub(crate) struct ProbeRunning {
    role: String,
    hba: String,
    started: std::time::Instant,
    task: JoinHandle<Result<LoginProbe, crate::pg::PgError>>,
}

impl std::fmt::Debug for ProbeRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeRunning")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl ProbeRunning {
    /// Starts a login as `role` at `primary`, bounded by `bound`.
    pub(crate) fn start(primary: &ConnString, role: &str, hba: String, bound: Duration) -> Self {
        let (primary, owned) = (primary.clone(), role.to_string());
        ProbeRunning {
            role: role.to_string(),
            hba,
            started: std::time::Instant::now(),
            task: tokio::spawn(async move {
                // Tests: `fence_probe=error` stands for a block the server
                // did not load (a file that does not parse).
                if let Err(e) = crate::failpoint::hit("fence_probe") {
                    return Ok(LoginProbe::NotRefused(e.to_string()));
                }
                probe_login(&primary, &owned, bound).await
            }),
        }
    }

    /// Waits (within `deadline`) for the probe: `Ok(note)` once the role
    /// was refused, an error naming the file otherwise.
    pub(crate) async fn confirm(self, deadline: Instant) -> Result<String, UpgradeError> {
        let left = remaining(deadline, "the fence's probe login")?;
        let seen = match tokio::time::timeout(left, self.task).await {
            Err(_) => {
                return Err(UpgradeError::PauseTimeout {
                    what: "the fence's probe login".into(),
                })
            }
            Ok(Err(e)) => {
                return Err(UpgradeError::Step {
                    step: Step::FenceOldPrimary,
                    detail: format!("the probe login did not finish: {e}"),
                })
            }
            Ok(Ok(seen)) => seen?,
        };
        match seen {
            LoginProbe::Refused => Ok(format!(
                "fence probe {} refused after {:.1} ms",
                self.role,
                self.started.elapsed().as_secs_f64() * 1000.0
            )),
            LoginProbe::NotRefused(why) => Err(UpgradeError::Step {
                step: Step::FenceOldPrimary,
                detail: format!(
                    "{} was written but the server does not enforce it: a login as {} is not refused ({why}); \
                     the file may not parse (see the server log)",
                    self.hba, self.role
                ),
            }),
        }
    }
}
