//! One upgrade per primary, wherever its runner runs.
//!
//! Two things on the primary itself, not in the runner's `state_dir` (two
//! pods or hosts do not share one):
//!
//! * **A session advisory lock** (`pg_try_advisory_lock(GUARD_NS, 1)`) held
//!   on a connection of its own, with TCP keepalives, for the whole run. A
//!   second `upgrade start/resume/abort` anywhere finds it taken and refuses
//!   at once, naming the upgrade in flight. The lock dies with the session, so
//!   a crashed runner never blocks its own `upgrade resume`.
//! * **A guard row** in `pgsteward.upgrade_guard` (a one-row table, readable by
//!   every role): which upgrade owns the primary (id, host, state_dir, step,
//!   since), whether a cutover is in progress (partition DDL waits), which
//!   node an upgrade made primary, and an **epoch** bumped by every runner
//!   that takes over. Every acting step first runs one `UPDATE ... WHERE epoch
//!   = mine AND I hold the lock`: a runner that lost its session (and maybe
//!   its lock to another runner) finds no row to update and stops before it
//!   acts. A table rather than a comment or a shared object: it is
//!   transactional, replicated to the new server with everything else (so the
//!   new primary knows the upgrade too), and readable with a plain SELECT by
//!   the service and the CronJob.
//!
//! **One per cluster, whatever the configuration says.** Advisory locks and
//! rows are per database, so both live in one fixed database every runner
//! agrees on, [`GUARD_DATABASE`] (`postgres`), whatever database
//! `database.primary` names: a second runner naming `/postgres` instead of
//! `/app`, another host name or address of the same server, or another
//! `state_dir` reaches the same lock table and the same row. The name is
//! compiled in, not configured, so no configuration can make two runners
//! take two guards on one server. The server's system identifier
//! (`pg_control_system()`) is recorded in the row and named in a refusal.
//! After promote the runner takes the lock on the new primary too and keeps
//! the old one until the old primary is retired.
//!
//! This module is the runner's side: the lock sessions and their keepalive,
//! claiming the row and checking it before every step. `read` is the
//! readers' side: the row as the service, the CronJob and the pass see it.

use std::time::Duration;

use tokio_postgres::Client;

use crate::config::ConnString;

mod read;
mod session;
mod sql;
use crate::provider::sql::{IN_RECOVERY, RELOAD_CONF};
pub use read::{
    moved_marker, read, read_cluster, step_number, step_reading, GuardRow, UpgradeStepReading,
};
use session::lock_session;
pub use session::{guard_conn, reader_session, runner_host};
use sql::{
    mark_moved, BUMP_EPOCH, CHECK_ONLY, CLAIM, MOVED_PLACEHOLDER, SETUP, STEP, TRY_LOCK, UNLOCK,
};

/// The row's step from a claim until the first step is recorded.
pub const CLAIMED_STEP: &str = "claimed";

/// Advisory-lock namespace of the upgrade guard ("pgup"): the two-int form,
/// distinct from the partition pass's namespace ("pgst") and the leader's
/// one-bigint key.
pub const GUARD_NS: i32 = 0x7067_7570;
pub const GUARD_KEY: i32 = 1;

/// The database the guard lives in on every server (see the module doc).
pub const GUARD_DATABASE: &str = "postgres";

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("upgrade {id} is in flight on this primary ({detail}); wait for it, or `pgsteward upgrade resume`/`abort` it where it runs")]
    InFlight { id: String, detail: String },
    #[error("another pgsteward upgrade runner holds the upgrade lock on {target}; wait for it to finish")]
    LockedUnknown { target: String },
    #[error("this runner no longer owns upgrade {id} on {target} (its lock session ended and epoch {epoch} is not current): another runner may have taken over; stopping before the next action")]
    Lost {
        id: String,
        target: String,
        epoch: i64,
    },
    #[error("this node is no longer the primary: upgrade {id} moved the primary to {new_primary}; point database.primary at it")]
    Moved { id: String, new_primary: String },
    #[error("upgrade guard on {target}: {message}")]
    Query { target: String, message: String },
    #[error("upgrade guard on {target}: no answer within {after:?}")]
    Timeout { target: String, after: Duration },
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
}

pub(super) fn query_err(target: &str, e: tokio_postgres::Error) -> GuardError {
    GuardError::Query {
        target: target.to_string(),
        message: crate::pg::server_message(&e),
    }
}

pub(super) async fn bounded<T>(
    target: &str,
    after: Duration,
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, GuardError> {
    match tokio::time::timeout(after, f).await {
        Ok(r) => r.map_err(|e| query_err(target, e)),
        Err(_) => Err(GuardError::Timeout {
            target: target.to_string(),
            after,
        }),
    }
}

/// One held lock session.
struct Held {
    conn: ConnString,
    target: String,
    client: Client,
    pid: i32,
    /// False once this node's WAL must not move (see [`CHECK_ONLY`]).
    writable: bool,
    /// A frozen (old primary's) session that did not answer a check in
    /// time: it is not asked again (see [`Guard::step`]).
    unanswered: bool,
}

impl Held {
    /// A row just claimed on `conn`: its node's WAL may move, and its
    /// session has not yet failed to answer.
    fn claimed(conn: ConnString, target: String, client: Client, pid: i32) -> Held {
        Held {
            conn,
            target,
            client,
            pid,
            writable: true,
            unanswered: false,
        }
    }
}

/// The guard a runner holds for its whole run. Dropping it closes the
/// sessions, which releases the locks.
pub struct Guard {
    id: String,
    state_dir: String,
    epoch: i64,
    held: Vec<Held>,
    connect_timeout: Duration,
    timeout: Duration,
    /// Inside the pause window: no guard query outlives the pause deadline.
    deadline: Option<tokio::time::Instant>,
}

impl Guard {
    /// Takes the lock on `target` and claims the row for upgrade `id`, before
    /// anything changes. Refuses at once when another runner holds the lock or
    /// another upgrade owns the row.
    pub async fn acquire(
        target: &ConnString,
        id: &str,
        state_dir: &str,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Guard, GuardError> {
        let t = target.to_string();
        // A session ended by the server (57P01: another upgrade's fence
        // sweeping this cluster's sessions) is taken once more: the fence
        // spares the steward's role, so the second one gets to see the
        // guard and refuse naming the upgrade in flight.
        let mut again = true;
        let (client, mut got, pid, mut row) = loop {
            let once = async {
                let (client, got, pid) = lock_session(target, connect_timeout, timeout).await?;
                let row = read(&client, &t, timeout).await?;
                Ok::<_, GuardError>((client, got, pid, row))
            };
            match once.await {
                Err(GuardError::Query { message, .. }) if again && message.contains("57P01") => {
                    again = false;
                }
                other => break other?,
            }
        };
        // Taken by a runner in flight: refuse at once, naming it. Taken with
        // no upgrade in flight: either a holder that has not claimed the row
        // yet (it does right after locking) or one whose session is just
        // ending; a second decides.
        for _ in 0..10 {
            if got {
                break;
            }
            if let Some(r) = row.as_ref().filter(|r| !r.finished) {
                return Err(r.in_flight(", its runner holds the upgrade lock"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            got = bounded(
                &t,
                timeout,
                client.query_one(TRY_LOCK, &[&GUARD_NS, &GUARD_KEY]),
            )
            .await?
            .get(0);
            row = read(&client, &t, timeout).await?;
        }
        if !got {
            return Err(match row {
                Some(r) if !r.finished => r.in_flight(", its runner holds the upgrade lock"),
                _ => GuardError::LockedUnknown { target: t },
            });
        }
        if let Some(r) = &row {
            if r.upgrade_id != id {
                if let Some(new) = &r.new_primary {
                    return Err(GuardError::Moved {
                        id: r.upgrade_id.clone(),
                        new_primary: new.clone(),
                    });
                }
                // An unfinished upgrade owns the primary until it completes or
                // is aborted; only its own resume/abort may take over.
                if !r.finished {
                    return Err(r.in_flight(""));
                }
            }
        }
        Ok(Guard {
            id: id.to_string(),
            state_dir: state_dir.to_string(),
            epoch: 0,
            held: vec![Held::claimed(target.clone(), t, client, pid)],
            connect_timeout,
            timeout,
            deadline: None,
        })
    }

    /// Bounds every later guard query by `deadline` too (the pause deadline).
    pub fn set_deadline(&mut self, deadline: Option<tokio::time::Instant>) {
        self.deadline = deadline;
    }

    fn limit(&self) -> Duration {
        match self.deadline {
            Some(d) => self
                .timeout
                .min(d.saturating_duration_since(tokio::time::Instant::now())),
            None => self.timeout,
        }
    }

    /// Takes the row over with a new epoch (after the prechecks passed, or at
    /// once for resume and abort): from here a runner with an older epoch
    /// cannot pass [`Guard::step`].
    pub async fn claim(&mut self) -> Result<(), GuardError> {
        let Some(h) = self.held.iter().find(|h| h.writable) else {
            return Ok(());
        };
        bounded(&h.target, self.timeout, h.client.batch_execute(SETUP)).await?;
        self.epoch = bounded(
            &h.target,
            self.timeout,
            h.client.query_one(
                CLAIM,
                &[&self.id, &runner_host(), &self.state_dir, &CLAIMED_STEP],
            ),
        )
        .await?
        .get(0);
        Ok(())
    }

    /// A claimed upgrade that never got a journal: free the row again.
    pub async fn give_up(&mut self) {
        let done = StepUpdate {
            cutover: Some(false),
            finished: Some(true),
            ..Default::default()
        };
        if let Err(e) = self.step("gave_up", done).await {
            tracing::warn!(error = %e, "cannot free the upgrade guard row");
        }
    }

    /// The row as it stands now, on the first held session.
    pub async fn row(&self) -> Result<Option<GuardRow>, GuardError> {
        let Some(h) = self.held.first() else {
            return Ok(None);
        };
        read(&h.client, &h.target, self.timeout).await
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Whether this guard holds a session on `target`.
    pub fn holds(&self, target: &str) -> bool {
        self.held.iter().any(|h| h.target == target)
    }

    /// The held, writable session on `target` (the final flush of the old
    /// primary commits there: WAL is the server's, whatever the database).
    pub fn writable_session(&self, target: &str) -> Option<&Client> {
        self.held
            .iter()
            .find(|h| h.target == target && h.writable && !h.client.is_closed())
            .map(|h| &h.client)
    }

    /// The backend pids of our lock sessions on `target`: the fence spares them.
    pub fn pids_on(&self, target: &str) -> Vec<i32> {
        self.held
            .iter()
            .filter(|h| h.target == target)
            .map(|h| h.pid)
            .collect()
    }

    /// A held session that ended (network, restart of the node) is taken
    /// again, but only when nobody moved the epoch in between: then no other
    /// runner has acted, and this one may go on.
    async fn reconnect(&mut self, i: usize) -> Result<(), GuardError> {
        let h = &self.held[i];
        let lost = || GuardError::Lost {
            id: self.id.clone(),
            target: h.target.clone(),
            epoch: self.epoch,
        };
        let (client, got, pid) =
            match lock_session(&h.conn, self.connect_timeout, self.timeout).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "upgrade guard session lost and not taken again");
                    return Err(lost());
                }
            };
        let row = read(&client, &h.target, self.timeout).await?;
        let ours = row.is_some_and(|r| {
            r.upgrade_id == self.id && (r.epoch == self.epoch || !self.held[i].writable)
        });
        if !got || !ours {
            return Err(lost());
        }
        tracing::warn!(target = %h.target, "upgrade guard session taken again");
        let h = &mut self.held[i];
        h.client = client;
        h.pid = pid;
        Ok(())
    }

    /// Before every acting step: proves this runner still owns the upgrade on
    /// every node it holds, and records the step there.
    pub async fn step(&mut self, step: &str, update: StepUpdate) -> Result<(), GuardError> {
        for i in 0..self.held.len() {
            if self.held[i].client.is_closed() {
                self.reconnect(i).await?;
            }
            let h = &self.held[i];
            if !h.writable {
                if h.unanswered {
                    continue;
                }
                let checked = bounded(
                    &h.target,
                    self.limit(),
                    h.client
                        .query(CHECK_ONLY, &[&self.id, &GUARD_NS, &GUARD_KEY]),
                )
                .await;
                // The old primary, fenced and past the final sync, hung
                // (SIGSTOP, a stalled disk): its session has not ended, so
                // its advisory lock cannot pass to another runner while the
                // backend lives, and nothing can act on that node meanwhile.
                // Waiting for it would only hold the writes paused (these
                // steps run inside the pause) and fail the upgrade after its
                // point of no return; the other held nodes are still proved.
                let rows = match checked {
                    Err(GuardError::Timeout { target, after }) => {
                        tracing::warn!(%target, ?after, "the old primary's guard session does not answer; its lock stays ours while the session lives, not asked again");
                        self.held[i].unanswered = true;
                        continue;
                    }
                    other => other?,
                };
                if rows.is_empty() {
                    return Err(GuardError::Lost {
                        id: self.id.clone(),
                        target: h.target.clone(),
                        epoch: self.epoch,
                    });
                }
                continue;
            }
            let rows = bounded(
                &h.target,
                self.limit(),
                h.client.query(
                    STEP,
                    &[
                        &self.epoch,
                        &self.id,
                        &step,
                        &update.cutover,
                        &update.finished,
                        &update.new_primary,
                        &GUARD_NS,
                        &GUARD_KEY,
                    ],
                ),
            )
            .await?;
            if rows.is_empty() {
                return Err(GuardError::Lost {
                    id: self.id.clone(),
                    target: h.target.clone(),
                    epoch: self.epoch,
                });
            }
        }
        Ok(())
    }

    /// On the old primary only: the upgrade made `new_primary` the primary.
    /// Every later reader of this node's guard (partition DDL, other
    /// commands, a second runner) is told where the primary went.
    /// Needs ALTER SYSTEM (the local provider); not WAL, see [`moved_marker`].
    pub async fn mark_moved(&self, old: &str, new_primary: &str) -> Result<(), GuardError> {
        let mark = mark_moved(&self.id, new_primary);
        for h in self.held.iter().filter(|h| h.target == old) {
            // A session placeholder first: before 17, ALTER SYSTEM refuses a
            // custom setting the session has never seen.
            bounded(
                &h.target,
                self.timeout,
                h.client.batch_execute(MOVED_PLACEHOLDER),
            )
            .await?;
            bounded(&h.target, self.timeout, h.client.batch_execute(&mark)).await?;
            bounded(
                &h.target,
                self.timeout,
                h.client.query_one(RELOAD_CONF, &[]),
            )
            .await?;
        }
        Ok(())
    }

    /// After promote: take the lock on the new primary too (its guard row came
    /// with the replicated data at our epoch). Idempotent.
    pub async fn extend_to(&mut self, target: &ConnString) -> Result<(), GuardError> {
        let t = target.to_string();
        if self.holds(&t) {
            return Ok(());
        }
        let (client, got, pid) = lock_session(target, self.connect_timeout, self.timeout).await?;
        let in_recovery: bool = bounded(&t, self.timeout, client.query_one(IN_RECOVERY, &[]))
            .await?
            .get(0);
        if in_recovery {
            // Not promoted yet (a resume before promote acted): nothing can
            // be written there; the next step tries again.
            return Ok(());
        }
        if !got {
            return Err(GuardError::LockedUnknown { target: t });
        }
        bounded(&t, self.timeout, client.batch_execute(SETUP)).await?;
        // The replicated row carries our epoch unless a runner elsewhere bumped it.
        let epoch: i64 = bounded(
            &t,
            self.timeout,
            client.query_one(
                CLAIM,
                &[&self.id, &runner_host(), &self.state_dir, &"promote"],
            ),
        )
        .await?
        .get(0);
        self.epoch = self.epoch.max(epoch);
        // Both rows at the same epoch from here on.
        self.held
            .push(Held::claimed(target.clone(), t, client, pid));
        for h in &self.held {
            if h.writable && !h.client.is_closed() {
                bounded(
                    &h.target,
                    self.timeout,
                    h.client.execute(BUMP_EPOCH, &[&self.epoch, &self.id]),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// From now on `target` is only checked, never written (see [`CHECK_ONLY`]).
    pub fn freeze(&mut self, target: &str) {
        for h in self.held.iter_mut().filter(|h| h.target == target) {
            h.writable = false;
        }
    }

    /// Gives every lock back now (the end of a run): closing the sessions
    /// would too, but the server notices that only a moment later, and an
    /// `upgrade start` right after an `abort` must not find it still taken.
    pub async fn release_all(self) {
        for h in &self.held {
            let unlock = h.client.query_one(UNLOCK, &[&GUARD_NS, &GUARD_KEY]);
            if let Err(e) = bounded(&h.target, self.timeout, unlock).await {
                tracing::debug!(error = %e, "upgrade guard not unlocked; the session end frees it");
            }
        }
    }

    /// The server held at `from` now answers at `to` (an RDS rename moved its
    /// name): the held session is kept under the new address when it is
    /// still open, else the lock is taken again there. Nothing when `from`
    /// is not held (a resumed run took the guard at the new address).
    pub async fn readdress(&mut self, from: &str, to: &ConnString) -> Result<(), GuardError> {
        let t = to.to_string();
        let Some(i) = self.held.iter().position(|h| h.target == from) else {
            return Ok(());
        };
        if !self.held[i].client.is_closed() {
            let h = &mut self.held[i];
            h.target = t;
            h.conn = to.clone();
            return Ok(());
        }
        // The rename rebooted the server: a fresh session at the new address.
        self.held.remove(i);
        self.extend_to(to).await
    }

    /// The old primary is about to be retired: stop holding it.
    pub fn release(&mut self, target: &str) {
        self.held.retain(|h| h.target != target);
    }
}

/// Optional changes recorded with a step (see [`Guard::step`]).
#[derive(Debug, Clone, Default)]
pub struct StepUpdate {
    pub cutover: Option<bool>,
    pub finished: Option<bool>,
    pub new_primary: Option<String>,
}
