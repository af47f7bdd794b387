//! Fencing the old primary (step 6) and lifting the fence (its undo), for
//! both methods a provider can ask for ([`FenceMethod`]).
//!
//! **A component.** [`Fence`] owns what the fence knows between steps (what
//! was staged before PAUSE, the pg_hba.conf plan and its probe role, the
//! databases read-only on purpose, a failed unfence); its methods take the
//! session, the deadline, the cancel token, the upgrade id and the pids to
//! spare as arguments and never the saga, so a second upgrade kind can put
//! up and lift the same fence. The saga's step bodies that drive it are in
//! `cutover` (the fence step, the unfences) and `steps` (staging at PAUSE).
//! Children: `files` (the server's files replaced atomically, synced when
//! asked, the fenced file prepared before PAUSE), [`flush`] (the fenced old
//! primary's final flush, LSNs), [`probe`] (the probe login waited for by
//! final_sync).
//!
//! **Local (`AlterSystem`): a hard fence.** From the fence on no session of a
//! role that is not a superuser can commit on the old primary, whatever it
//! sets for itself, except the steward's own role:
//! * `pg_hba.conf` gets a marked block at its top with a `reject` line for
//!   every login role that is neither a superuser nor the role pgsteward logs
//!   in as, and the configuration is reloaded: new application connections
//!   are refused (so `PGOPTIONS`, role and database settings never get a
//!   session to act in). The steward's role is spared so `upgrade resume`
//!   and `upgrade abort` (which log in as it) can always lift the fence; it
//!   must therefore be a role of its own, not the application's. Replication
//!   connections are not matched (`all` does not cover `replication`);
//! * every client session but ours and superusers' is terminated (after the
//!   reload, and once more in `final_sync` right before the final flush, for
//!   a backend that was still authenticating under the old rules);
//!   `pg_signal_backend` cannot end a superuser's session, so none is tried;
//! * `default_transaction_read_only = on` via `ALTER SYSTEM` (staged before
//!   the pause, applied by the same reload), for the sessions the block
//!   spares: a soft second line (ours set their sessions writable).
//!
//! Both files are on the old node only (neither is replicated), so the new
//! primary is not affected, and both survive a restart of the old node.
//! Cost inside the pause: one rename (the fenced pg_hba.conf is written
//! and synced beside the file before PAUSE), one reload, one terminate
//! sweep; the directory's sync and the probe login run beside the final
//! flush ([`probe`]) and are waited for before promote (measured per run:
//! the steps' notes and `upgrade status`).
//!
//! **Verified without privileges.** Whether the server enforces the block is
//! proven by a login as one fenced role without any password
//! ([`probe_login`]): refused before authentication (SQLSTATE 28000) once
//! the block is loaded, asked for a password before (the baseline, taken
//! before the pause) and again after the undo. This needs no grant (unlike
//! `pg_hba_file_rules` or `pg_file_settings`, superuser-only by default) and
//! tests what the postmaster enforces, not what a file says: a file that does
//! not parse is not loaded, and the probe says so. The undo removes the block
//! and the setting, reloads, and verifies the files (pg_hba.conf has no
//! block, postgresql.auto.conf no read-only default) and the probe, or fails.
//!
//! **RDS (`AlterDatabase`).** RDS has no `ALTER SYSTEM`, no `pg_hba.conf` and
//! no superuser. Every database gets `default_transaction_read_only = on`
//! and every application session is terminated. What remains, and why: a
//! role with its own `ALTER ROLE ... SET default_transaction_read_only = off`
//! (role settings win over database settings), or a client that sends
//! `SET default_transaction_read_only = off` / `BEGIN READ WRITE` on a *new*
//! connection, can still commit on the old instance until it is retired;
//! revoking CONNECT or `CONNECTION LIMIT 0` would lock out the steward
//! itself (rds_superuser is no superuser) and are replicated to the new
//! primary. Mitigation: PgBouncer is the only way clients reach the
//! database, and it points at the new primary before RESUME;
//! `retire_after = "0s"` deletes the old instance right after verify.

mod files;
pub mod flush;
mod probe;

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::error::{q, UpgradeError};
use super::record::{Output, Step, UpgradeRecord};
use super::sql::{
    terminate_sql, APPLICATION_ROLES, CONF_LOAD_TIME, FENCE, HBA_FILE, LOAD_TIME_THEN_RELOAD,
    RELOAD_CONF, SESSION_WRITABLE, UNFENCE,
};
use super::window::{remaining, Limit};
use crate::config::ConnString;
use crate::provider::FenceMethod;
// The SQL and file fences themselves are the provider layer's (local uses
// the pg_hba.conf block, rds the per-database setting).
use crate::provider::fence::{
    fence_databases, probe_login, read_only_databases, unfence_databases, with_block,
    without_block, LoginProbe, BLOCK_BEGIN,
};
use files::{
    auto_conf_sets, hba_err, install_prepared, prepare_file, remove_prepared, replace_file,
    sync_in_place, write_atomic,
};
use probe::ProbeRunning;
pub(crate) use probe::Settling;

/// What the pg_hba.conf fence needs, read before the pause.
#[derive(Debug, Clone)]
struct HbaPlan {
    path: PathBuf,
    roles: Vec<String>,
    /// A fenced role the loaded rules did not refuse before the fence: the
    /// probe login that proves the fence took effect.
    probe: Option<String>,
    /// The fenced file written and synced before PAUSE, and the text it
    /// was made from: inside the pause it is only renamed into place.
    prepared: Option<Prepared>,
}

#[derive(Debug, Clone)]
struct Prepared {
    file: PathBuf,
    base: String,
}

/// The fence of the old primary as this run knows it: what was staged and
/// read before PAUSE, and what a roll back learned about lifting it. A saga
/// holds one; its methods take what they act on explicitly (the session
/// on the old primary, the provider's [`FenceMethod`], the pause deadline,
/// the cancel token, the upgrade id, the pids to spare), so any upgrade
/// kind that pauses writes in front of an old primary can use it.
#[derive(Debug, Default)]
pub(crate) struct Fence {
    /// This process wrote the fence into postgresql.auto.conf before PAUSE.
    staged: bool,
    /// What the pg_hba.conf fence needs, read before PAUSE.
    hba: Option<HbaPlan>,
    /// RDS fence: the databases read-only on purpose, read before PAUSE.
    kept_read_only: Option<Vec<String>>,
    /// A roll back's unfence that failed: the undos after it do not wait
    /// for the old primary a second time.
    unfence_failed: Option<String>,
    /// The probe login and the sync the fence step started, until
    /// final_sync waits for them (probe.rs).
    settling: Option<Settling>,
}

/// The files the local fence touched, as the server names them.
pub(crate) struct FenceFiles {
    hba: PathBuf,
    auto: PathBuf,
}

/// A pg_hba.conf fence renamed into place, not yet loaded: its sync runs
/// in the background until [`HbaWritten::enforce`] waits for it.
pub(crate) struct HbaWritten {
    plan: HbaPlan,
    synced: tokio::task::JoinHandle<Result<(), UpgradeError>>,
    t0: std::time::Instant,
    written_at: Duration,
    probe_bound: Duration,
}

impl Fence {
    /// Before PAUSE: writes the read-only default into postgresql.auto.conf
    /// without reloading (ALTER SYSTEM syncs a file, which is then not paid
    /// for inside the pause), and reads what the hba fence needs. Nothing takes
    /// effect until the fence reloads; the undo of `pause_writes` removes it.
    /// Only for the local fence: the per-database fence is replicated and
    /// cannot be written ahead.
    pub(crate) async fn stage(
        &mut self,
        method: FenceMethod,
        old: &Client,
        primary: &ConnString,
        id: &str,
        limit: Limit,
        connect_timeout: Duration,
    ) -> Result<(), UpgradeError> {
        if method != FenceMethod::AlterSystem {
            // The per-database fence: which databases are read-only on
            // purpose (journaled with pause_writes, before any fence).
            let kept = limit.run(primary, read_only_databases(old)).await?;
            self.kept_read_only = Some(kept);
            return Ok(());
        }
        let work = async {
            old.batch_execute(SESSION_WRITABLE).await?;
            old.batch_execute(FENCE).await?;
            let path: String = old.query_one(HBA_FILE, &[]).await?.get(0);
            let roles: Vec<String> = old
                .query(APPLICATION_ROLES, &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Ok::<_, tokio_postgres::Error>(HbaPlan {
                path: PathBuf::from(path),
                roles,
                probe: None,
                prepared: None,
            })
        };
        let mut plan = limit.run(primary, work).await?;
        // Refuse before the pause what the fence could not express; write
        // the fenced file ahead, synced (one fsync less inside the pause).
        let base = std::fs::read_to_string(&plan.path).map_err(|e| hba_err(&plan.path, e))?;
        let fenced = with_block(&base, id, &plan.roles).map_err(|detail| UpgradeError::Step {
            step: Step::PauseWrites,
            detail: detail.to_string(),
        })?;
        plan.prepared = Some(Prepared {
            file: prepare_file(&plan.path, &fenced)?,
            base,
        });
        // The probe's baseline: the first fenced role the loaded rules do not
        // refuse yet (one the operator rejects already proves nothing).
        if self.hba.as_ref().map(|h| h.roles == plan.roles) == Some(true) {
            plan.probe = self.hba.as_ref().and_then(|h| h.probe.clone());
        } else {
            for role in plan.roles.iter().take(5) {
                let probe = limit.wrap(
                    "a probe login at the old primary",
                    probe_login(primary, role, connect_timeout),
                );
                if let LoginProbe::NotRefused(_) = probe.await? {
                    plan.probe = Some(role.clone());
                    break;
                }
            }
        }
        self.hba = Some(plan);
        self.staged = true;
        Ok(())
    }

    /// Whether this process staged the local fence (else the fence step,
    /// run again after a crash or on a retry, stages it first: idempotent).
    pub(crate) fn is_staged(&self) -> bool {
        self.staged && self.hba.is_some()
    }

    /// The databases read-only on purpose (RDS fence): read before PAUSE
    /// by this run, else journaled with pause_writes.
    pub(crate) fn kept_read_only(&self, record: &UpgradeRecord) -> Option<Vec<String>> {
        self.kept_read_only
            .clone()
            .or_else(|| record.step(Step::PauseWrites).output.kept_read_only.clone())
    }

    /// The databases read-only on purpose as this run read them before
    /// PAUSE (what pause_writes journals).
    pub(crate) fn read_only_seen(&self) -> Option<Vec<String>> {
        self.kept_read_only.clone()
    }

    /// Step 6 on RDS (`AlterDatabase`): every database but `keep` read-only,
    /// every application session but `ours` ended, within `deadline`.
    pub(crate) async fn put_up_databases(
        old: &Client,
        primary: &ConnString,
        keep: &[String],
        ours: &[i32],
        deadline: Instant,
    ) -> Result<Output, UpgradeError> {
        // Our sessions (the guard's and this one) are spared: the steward
        // is no superuser, and TERMINATE_APPLICATION_SESSIONS spares only those.
        let terminate = terminate_sql(ours);
        let work = async {
            let dbs = fence_databases(old, keep).await?;
            let n: i64 = old.query_one(terminate.as_str(), &[]).await?.get(0);
            Ok::<_, tokio_postgres::Error>((dbs, n))
        };
        let left = remaining(deadline, "fence")?;
        match tokio::time::timeout(left, work).await {
            Err(_) => Err(UpgradeError::PauseTimeout {
                what: "fencing the old primary".into(),
            }),
            Ok(Err(e)) => Err(q(primary, e)),
            Ok(Ok((dbs, n))) => Ok(Output::note(format!(
                "databases {} read-only, {n} sessions ended",
                dbs.join(", ")
            ))),
        }
    }

    /// Step 6, local (`AlterSystem`), first half: the block for upgrade
    /// `id` renamed into pg_hba.conf now, synced in the background while the
    /// server reloads, the sessions end and the final flush runs (syncs are
    /// most of the fence's time on a slow disk): final_sync waits for it, so
    /// the block is durable before promote. `t0` is the step's start (its
    /// note counts from there).
    pub(crate) fn write_hba(
        &self,
        id: &str,
        t0: std::time::Instant,
        deadline: Instant,
    ) -> Result<HbaWritten, UpgradeError> {
        let plan = self.hba.clone().ok_or_else(|| UpgradeError::Step {
            step: Step::FenceOldPrimary,
            detail: "no pg_hba.conf plan".into(),
        })?;
        let text = std::fs::read_to_string(&plan.path).map_err(|e| hba_err(&plan.path, e))?;
        let fenced = with_block(&text, id, &plan.roles).map_err(|detail| UpgradeError::Step {
            step: Step::FenceOldPrimary,
            detail: detail.to_string(),
        })?;
        // The new text is synced before the rename (a crash must never leave
        // an empty or torn pg_hba.conf in place on filesystems that do not
        // order data before a rename); only the directory's sync waits. The
        // file prepared before PAUSE was synced then; it is used only while
        // pg_hba.conf still holds what it was made from (an operator's edit
        // since is kept: the file is made anew).
        let installed = match &plan.prepared {
            Some(p) => install_prepared(&plan.path, &p.file, &p.base, &text)?,
            None => false,
        };
        if !installed && text != fenced {
            replace_file(&plan.path, &fenced, true)?;
        }
        let written_at = t0.elapsed();
        let sync_path = plan.path.clone();
        let synced = tokio::task::spawn_blocking(move || sync_in_place(&sync_path));
        let probe_bound = remaining(deadline, "fence")?;
        Ok(HbaWritten {
            plan,
            synced,
            t0,
            written_at,
            probe_bound,
        })
    }

    /// The session on the old primary no longer in the database: the block
    /// out of pg_hba.conf (durably), the files it touched named.
    pub(crate) async fn clear_hba(
        old: &Client,
        primary: &ConnString,
        limit: Limit,
    ) -> Result<FenceFiles, UpgradeError> {
        let files = limit.run(primary, old.query_one(HBA_FILE, &[])).await?;
        let path = PathBuf::from(files.get::<_, String>(0));
        let auto = PathBuf::from(files.get::<_, String>(1)).join("postgresql.auto.conf");
        remove_prepared(&path)?;
        let text = std::fs::read_to_string(&path).map_err(|e| hba_err(&path, e))?;
        let clean = without_block(&text);
        if clean != text {
            write_atomic(&path, &clean)?;
        }
        Ok(FenceFiles { hba: path, auto })
    }

    /// What the fence step left running, to be waited for before promote.
    pub(crate) fn settling(&mut self, settling: Option<Settling>) {
        self.settling = settling;
    }

    /// Waits for what the fence step of this process left running (see
    /// probe.rs): a note once the block is durable and the probe was
    /// refused. Without it (the steps run again under the repeat switch)
    /// nothing is left to wait for: a fence step run by another process
    /// never leads to promote, recovery rolls a crashed window back.
    pub(crate) async fn confirm_settled(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<String>, UpgradeError> {
        match self.settling.take() {
            Some(s) => s.confirm(deadline).await.map(Some),
            None => Ok(None),
        }
    }

    /// The probe role of the staged fence, if any.
    pub(crate) fn probe(&self) -> Option<String> {
        self.hba.as_ref().and_then(|h| h.probe.clone())
    }

    /// After [`Fence::clear_hba`]: the read-only default out, the server
    /// reloaded, and the lift proven (files clean, `probe` let in), or an
    /// error naming what is left.
    pub(crate) async fn reload_unfenced(
        old: &Client,
        files: FenceFiles,
        probe: Option<String>,
        primary: &ConnString,
        limit: Limit,
        connect_timeout: Duration,
    ) -> Result<(), UpgradeError> {
        let FenceFiles { hba: path, auto } = files;
        // Wait until the postmaster has reloaded (see CONF_LOAD_TIME), so
        // PgBouncer's new server connections are let in and start writable
        // after RESUME.
        let work = async {
            old.batch_execute(SESSION_WRITABLE).await?;
            old.batch_execute(UNFENCE).await?;
            let before: String = old.query_one(CONF_LOAD_TIME, &[]).await?.get(0);
            old.query_one(RELOAD_CONF, &[]).await?;
            loop {
                let now: String = old.query_one(CONF_LOAD_TIME, &[]).await?.get(0);
                if now != before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(())
        };
        limit.run(primary, work).await?;
        let reread = std::fs::read_to_string(&path).map_err(|e| hba_err(&path, e))?;
        let auto_text = std::fs::read_to_string(&auto).map_err(|e| hba_err(&auto, e))?;
        let mut left = Vec::new();
        if reread.contains(BLOCK_BEGIN) {
            left.push(format!("{} still holds the fence block", path.display()));
        }
        if auto_conf_sets(&auto_text, "default_transaction_read_only") {
            left.push(format!(
                "{} still sets default_transaction_read_only",
                auto.display()
            ));
        }
        if let (Some(role), true) = (probe, left.is_empty()) {
            let seen = limit
                .wrap(
                    "a probe login at the old primary",
                    probe_login(primary, &role, connect_timeout),
                )
                .await?;
            if seen == LoginProbe::Refused {
                left.push(format!(
                    "a login as {role} is still refused by the loaded pg_hba.conf rules"
                ));
            }
        }
        if !left.is_empty() {
            return Err(UpgradeError::Step {
                step: Step::FenceOldPrimary,
                detail: format!("unfence not verified: {}", left.join("; ")),
            });
        }
        Ok(())
    }

    /// The per-database fence lifted on `client` (the old primary, or the
    /// new server the catalog streamed it to), `keep` left read-only.
    pub(crate) async fn lift_databases(
        client: &Client,
        target: &ConnString,
        keep: &[String],
        limit: Limit,
    ) -> Result<(), UpgradeError> {
        limit.run(target, unfence_databases(client, keep)).await
    }

    /// A roll back's unfence failed with `error`: later undos do not wait
    /// for the old primary again.
    pub(crate) fn unfence_failed(&mut self, error: String) {
        self.unfence_failed = Some(error);
    }

    /// Why the unfence of this roll back failed, if it did.
    pub(crate) fn unfence_failure(&self) -> Option<&str> {
        self.unfence_failed.as_deref()
    }

    /// A new roll back tries the unfence again.
    pub(crate) fn forget_unfence_failure(&mut self) {
        self.unfence_failed = None;
    }
}

impl HbaWritten {
    /// Step 6, local, second half: reload on `old`, wait until the
    /// postmaster has loaded the block, start the probe login that proves
    /// it is enforced, then end every session but `ours`. The probe and the
    /// background sync are returned still running: final_sync waits for
    /// them before promote (probe.rs).
    pub(crate) async fn enforce(
        self,
        old: &Client,
        primary: &ConnString,
        ours: &[i32],
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<(Output, Settling), UpgradeError> {
        let HbaWritten {
            plan,
            synced,
            t0,
            written_at,
            probe_bound,
        } = self;
        let terminate = terminate_sql(ours);
        let probe_role = plan.probe.as_ref();
        let mut polls = 0u32;
        let mut reloaded_at = Duration::ZERO;
        let mut seen_at = Duration::ZERO;
        let work = async {
            let before: String = old.query_one(LOAD_TIME_THEN_RELOAD, &[]).await?.get(0);
            reloaded_at = t0.elapsed();
            loop {
                polls += 1;
                let now: String = old.query_one(CONF_LOAD_TIME, &[]).await?.get(0);
                if now != before {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                    _ = cancel.cancelled() => return Ok(Err("cancelled".into())),
                }
            }
            seen_at = t0.elapsed();
            // The postmaster has reloaded (it answers logins only after
            // that): one fenced role must now be refused before
            // authentication. The probe (a backend forked and refused) starts
            // now and is waited for by final_sync, before promote (see probe.rs).
            let hba = plan.path.display().to_string();
            let running = probe_role.map(|r| ProbeRunning::start(primary, r, hba, probe_bound));
            let n: i64 = old.query_one(terminate.as_str(), &[]).await?.get(0);
            Ok::<_, tokio_postgres::Error>(Ok((n, running)))
        };
        let left = remaining(deadline, "fence")?;
        let worked = tokio::time::timeout(left, work).await;
        let (n, running) = match worked {
            Err(_) => {
                return Err(UpgradeError::PauseTimeout {
                    what: "fencing the old primary".into(),
                })
            }
            Ok(Err(e)) => return Err(q(primary, e)),
            Ok(Ok(Err(detail))) if detail == "cancelled" => return Err(UpgradeError::Cancelled),
            Ok(Ok(Err(detail))) => {
                return Err(UpgradeError::Step {
                    step: Step::FenceOldPrimary,
                    detail,
                })
            }
            Ok(Ok(Ok(n))) => n,
        };
        let note = Output::note(format!(
            "fenced in {:.1} ms (pg_hba.conf written {:.1} ms, reload sent {:.1} ms, loaded {:.1} ms after {polls} polls, probe {} {}): {} roles refused, {n} sessions ended",
            t0.elapsed().as_secs_f64() * 1000.0,
            written_at.as_secs_f64() * 1000.0,
            reloaded_at.as_secs_f64() * 1000.0,
            seen_at.as_secs_f64() * 1000.0,
            plan.probe.as_deref().unwrap_or("none"),
            if running.is_some() { "running" } else { "not needed" },
            plan.roles.len()
        ));
        // The probe and the sync are waited for by final_sync (probe.rs).
        let settling = Settling {
            probe: running,
            hba: plan.path.clone(),
            synced,
        };
        Ok((note, settling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_goes_on_top_and_comes_out_again() {
        // An operator's file as deployed; the block must sit above whatever it holds.
        let hba = "local all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n";
        let roles = vec!["app".to_string(), "odd name".to_string()];
        let fenced = with_block(hba, "u1", &roles).unwrap();
        assert!(fenced.starts_with(BLOCK_BEGIN));
        assert!(fenced.contains("local all \"app\" reject\nhost all \"app\" all reject\n"));
        assert!(fenced.contains("host all \"odd name\" all reject\n"));
        assert!(fenced.ends_with(hba));
        assert_eq!(without_block(&fenced), hba);
        // Idempotent: fencing twice leaves one block.
        let twice = with_block(&fenced, "u1", &roles).unwrap();
        assert_eq!(twice, fenced);
        assert!(with_block(hba, "u1", &["a\"b".to_string()]).is_err());
    }
}
