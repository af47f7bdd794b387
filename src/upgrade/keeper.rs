//! The pause keeper: what resumes writes when the runner cannot. This is
//! the runner's side (arm, disarm) and the rules; the keeper process itself
//! is `upgrade::rescue`.
//!
//! A runner killed inside the write pause (kill -9, OOM, a panic) can undo
//! nothing itself, and PgBouncer would keep every client waiting until
//! `query_wait_timeout`. So before it sends PAUSE the runner **arms** a
//! keeper: a detached child process (`pgsteward upgrade keeper`, its own
//! process group, so a terminal's Ctrl-C does not reach it) holding the read
//! end of a pipe whose write end only the runner has.
//!
//! * The runner **disarms** it (a line on the pipe) once the window is
//!   closed cleanly: RESUME reached every PgBouncer (`resume_writes`, or a
//!   roll back with nothing left). The keeper exits.
//! * **The runner is gone** (the pipe reads end-of-file without a disarm:
//!   it died, or it exited with the window not closed, e.g. a roll back that
//!   could not unfence the old primary): the keeper closes the window in the
//!   runner's place, as `upgrade resume` would but no further, retrying for
//!   up to [`PERSIST`]: before promote it finishes the roll back (unfence,
//!   then RESUME); after promote it runs promote → repoint → RESUME. When it
//!   cannot take the journal or the guard (the old primary hangs), it
//!   RESUMEs what is safe to resume after a second of quick retries (see
//!   `rescue::resume_safe`, `RESUME_ALONE_AFTER`) and retries
//!   the rest.
//! * **The runner is alive but stuck** past `pause_timeout` + [`bound`]:
//!   the keeper RESUMEs what is safe to resume, and keeps watching.
//!
//! The promote boundary: a RESUME can never send a write to a node that must
//! not take one. Before promote the new server is in recovery, and
//! PgBouncer points at the old primary, the only writable node. From
//! promote on PgBouncer may still point at the old primary, which is fenced
//! (no application role can log in); the keeper RESUMEs then only once the
//! journal shows `repoint` done, i.e. PgBouncer points at the new primary.
//! Nothing can be lost either way: the fence stays until the roll back
//! lifts it, and promote follows the final flush.
//!
//! The keeper writes to `state_dir/keeper.log`; while it lives
//! `state_dir/keeper.pid` names it, and `upgrade start/resume/abort` wait
//! for it (up to [`WAIT_FOR_KEEPER`]) rather than race it for the journal.
//!
//! Limits: the keeper lives on the runner's host (in Kubernetes, in its
//! pod): it covers the runner process dying, not the pod or the host. Then
//! `pgsteward upgrade resume` does the same, and `query_wait_timeout`
//! bounds what clients wait.

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::error::UpgradeError;
use super::journal;
use crate::config::Cluster;

/// Set in the keeper's environment: a keeper never arms another (not
/// `PGSTEWARD_`: those variables are configuration).
pub const KEEPER_ENV: &str = "STEWARD_PAUSE_KEEPER";
/// How long a keeper whose runner is gone keeps trying to close the window.
pub const PERSIST: Duration = Duration::from_secs(600);
pub(crate) const DISARM: &str = "disarm";
/// How long `upgrade start/resume/abort` wait for a live keeper.
pub const WAIT_FOR_KEEPER: Duration = Duration::from_secs(60);
pub(crate) const PID_FILE: &str = "keeper.pid";
const LOG_FILE: &str = "keeper.log";

/// The program and configuration file a keeper runs with: set by `main`
/// for the upgrade commands only, so a saga driven in-process (the tests'
/// own binaries) never spawns one.
static PROGRAM: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();

/// Lets upgrade runs of this process arm keepers (`main`, for `upgrade
/// start/resume/abort`). Nothing when this process is itself a keeper.
pub fn enable(program: PathBuf, config: PathBuf) {
    if std::env::var_os(KEEPER_ENV).is_none() {
        let _ = PROGRAM.set((program, config));
    }
}

/// The longest a runner that is alive may take past `pause_timeout` before
/// the keeper RESUMEs for it: its own roll back (one unfence and one RESUME,
/// each bounded by the query timeout) plus 5 s.
pub fn bound(cfg: &Cluster) -> Duration {
    crate::pooler::query_timeout(cfg) * 2 + Duration::from_secs(5)
}

/// An armed keeper (the runner's side).
pub struct Keeper {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Keeper {
    /// Starts a keeper for `cfg`'s upgrade; `None` (logged) when keepers are
    /// not enabled in this process or the child cannot start.
    pub fn arm(cfg: &Cluster) -> Option<Keeper> {
        let (program, config) = PROGRAM.get()?;
        let after = cfg.upgrade.pause_timeout.0 + bound(cfg);
        let dir = &cfg.state_dir;
        // Private, like everything in the state directory.
        let log = match std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().create(true).append(true),
            0o600,
        )
        .open(dir.join(LOG_FILE))
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "the pause keeper has no log file; not started");
                return None;
            }
        };
        let err_log = log.try_clone().ok()?;
        let mut cmd = Command::new(program);
        cmd.arg("--config")
            .arg(config)
            .args(["upgrade", "keeper", "--after-ms"])
            .arg(after.as_millis().to_string())
            .env(KEEPER_ENV, "1")
            // A keeper acts for the runner; it does not replay its injected faults.
            .env_remove(crate::failpoint::FAILPOINT_ENV)
            .env_remove(crate::failpoint::REPEAT_ENV)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log));
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        match cmd.spawn() {
            Ok(mut child) => {
                let stdin = child.stdin.take();
                // Written by the runner, so it exists before the runner can die.
                let written = std::os::unix::fs::OpenOptionsExt::mode(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .write(true)
                        .truncate(true),
                    0o600,
                )
                .open(dir.join(PID_FILE))
                .and_then(|mut f| {
                    std::io::Write::write_all(&mut f, child.id().to_string().as_bytes())
                });
                if let Err(e) = written {
                    tracing::warn!(error = %e, "keeper.pid not written");
                }
                Some(Keeper { child, stdin })
            }
            Err(e) => {
                tracing::warn!(error = %e, "the pause keeper did not start; a crash inside the pause needs `upgrade resume`");
                None
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The window closed cleanly: the keeper exits.
    pub fn disarm(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = std::io::Write::write_all(&mut stdin, format!("{DISARM}\n").as_bytes());
        }
        // Reaped when it exits (at once); never waited for here.
        std::thread::spawn(move || {
            let _ = self.child.wait();
        });
    }
}

/// The pid of a keeper still alive in `state_dir` (not this process).
pub fn live_keeper(state_dir: &std::path::Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(state_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let alive = pid != std::process::id()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            // A zombie (state Z) is gone but for its exit status.
            .is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| !r.trim_start().starts_with('Z'))
            });
    alive.then_some(pid)
}

/// The state directory's lock for `upgrade start/resume/abort`, after a live
/// keeper (see the module doc) finished, or after [`WAIT_FOR_KEEPER`].
pub async fn lock_after_keeper(
    state_dir: &std::path::Path,
) -> Result<journal::RunLock, UpgradeError> {
    let until = tokio::time::Instant::now() + WAIT_FOR_KEEPER;
    let mut said = false;
    while let Some(pid) = live_keeper(state_dir) {
        if tokio::time::Instant::now() >= until {
            break;
        }
        if !said {
            eprintln!("waiting for the pause keeper (pid {pid}) to close the write pause of the last run ({})", state_dir.join(LOG_FILE).display());
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(journal::lock(state_dir)?)
}
