//! Fencing the old primary (step 6) and lifting the fence (its undo), for
//! both methods a provider can ask for ([`FenceMethod`]).
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
//! Cost inside the pause: one file write + fsync, one reload, one terminate
//! sweep, one probe login (measured per run: the step's note and `upgrade status`).
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

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use super::cutover::remaining;
use super::error::UpgradeError;
use super::record::{Output, Step};
use super::saga::{q, HbaPlan, Saga};
use super::sql::{
    final_flush, terminate_sql, APPLICATION_ROLES, CONF_LOAD_TIME, FENCE, HBA_FILE, RELOAD_CONF,
    ROLLBACK, SESSION_WRITABLE, UNFENCE,
};
use crate::config::ConnString;
use crate::provider::FenceMethod;
// The SQL and file fences themselves are the provider layer's (local uses
// the pg_hba.conf block, rds the per-database setting).
use crate::provider::fence::{
    fence_databases, probe_login, read_only_databases, unfence_databases, with_block,
    without_block, LoginProbe, BLOCK_BEGIN,
};

fn hba_err(path: &Path, e: impl std::fmt::Display) -> UpgradeError {
    UpgradeError::Step {
        step: Step::FenceOldPrimary,
        detail: format!("{}: {e}", path.display()),
    }
}

/// Replaces `path` atomically (same mode and owner), durably.
fn write_atomic(path: &Path, text: &str) -> Result<(), UpgradeError> {
    replace_file(path, text, true)?;
    sync_in_place(path)
}

/// Replaces `path` atomically (same mode and owner): a temporary file
/// beside it (synced first when `sync_tmp`), renamed over it. Visible to
/// the server's next reload at once; durable only after [`sync_in_place`].
fn replace_file(path: &Path, text: &str, sync_tmp: bool) -> Result<(), UpgradeError> {
    let meta = std::fs::metadata(path).map_err(|e| hba_err(path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(".pg_hba.conf.pgsteward-tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| hba_err(&tmp, e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| if sync_tmp { f.sync_all() } else { Ok(()) })
            .map_err(|e| hba_err(&tmp, e))?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| hba_err(&tmp, e))?;
    if nix::unistd::Uid::effective().is_root() {
        std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| hba_err(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| hba_err(path, e))
}

/// Syncs `path` (a no-op for data already on disk) and its directory.
fn sync_in_place(path: &Path) -> Result<(), UpgradeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| hba_err(path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| hba_err(dir, e))
}

/// Whether postgresql.auto.conf `text` still sets `name` (ALTER SYSTEM
/// writes one `name = 'value'` line per setting).
pub fn auto_conf_sets(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        !l.starts_with('#')
            && l.split(['=', ' ', '\t'])
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(name))
    })
}

impl Saga {
    /// Our sessions on the old primary the fence must spare.
    pub(crate) fn own_pids(&self) -> Vec<i32> {
        let mut v = self
            .guard
            .as_ref()
            .map(|g| g.pids_on(&self.cfg.database.primary.to_string()))
            .unwrap_or_default();
        v.extend(self.old_pid);
        v
    }

    /// Before PAUSE: writes the read-only default into postgresql.auto.conf
    /// without reloading (ALTER SYSTEM syncs a file, which is then not paid
    /// for inside the pause), and reads what the hba fence needs. Nothing takes
    /// effect until `fence` reloads; the undo of `pause_writes` removes it.
    /// Only for the local fence: the per-database fence is replicated and
    /// cannot be written ahead.
    pub(crate) async fn stage_fence(&mut self) -> Result<(), UpgradeError> {
        if self.provider.fence_method() != FenceMethod::AlterSystem {
            // The per-database fence: which databases are read-only on
            // purpose (journaled with pause_writes, before any fence).
            let primary = self.cfg.database.primary.clone();
            let limit = self.query_limit();
            let old = self.old_client().await?;
            let kept = limit.run(&primary, read_only_databases(old)).await?;
            self.kept_read_only = Some(kept);
            return Ok(());
        }
        let primary = self.cfg.database.primary.clone();
        let limit = self.query_limit();
        let old = self.old_client().await?;
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
            })
        };
        let mut plan = limit.run(&primary, work).await?;
        // Refuse before the pause what the fence could not express.
        with_block("", "check", &plan.roles).map_err(|detail| UpgradeError::Step {
            step: Step::PauseWrites,
            detail: detail.to_string(),
        })?;
        // The probe's baseline: the first fenced role the loaded rules do not
        // refuse yet (one the operator rejects already proves nothing).
        if self.hba.as_ref().map(|h| h.roles == plan.roles) == Some(true) {
            plan.probe = self.hba.as_ref().and_then(|h| h.probe.clone());
        } else {
            for role in plan.roles.iter().take(5) {
                let probe = limit.wrap(
                    "a probe login at the old primary",
                    probe_login(&primary, role, self.cfg.database.connect_timeout.0),
                );
                if let LoginProbe::NotRefused(_) = probe.await? {
                    plan.probe = Some(role.clone());
                    break;
                }
            }
        }
        self.hba = Some(plan);
        self.fence_staged = true;
        Ok(())
    }

    /// Step 6 (see the module doc).
    pub(crate) async fn fence(&mut self) -> Result<Output, UpgradeError> {
        let deadline = self.window_deadline();
        // A PgBouncer instance that appeared since PAUSE would send its
        // clients' writes into the fence (client errors): paused first.
        if let Some(n) = self.pause_newcomers(Some(deadline)).await? {
            self.progress.say(Step::FenceOldPrimary, &n);
        }
        let primary = self.cfg.database.primary.clone();
        let cancel = self.cancel.clone();
        let method = self.provider.fence_method();
        let t0 = std::time::Instant::now();
        if method == FenceMethod::AlterDatabase {
            let keep = self.kept_read_only().unwrap_or_default();
            // Our sessions (the guard's and this one) are spared: the
            // steward is no superuser, and TERMINATE_APPLICATION_SESSIONS
            // spares only those.
            let terminate = terminate_sql(&self.own_pids());
            let old = self.old_client().await?;
            let work = async {
                let dbs = fence_databases(old, &keep).await?;
                let n: i64 = old.query_one(terminate.as_str(), &[]).await?.get(0);
                Ok::<_, tokio_postgres::Error>((dbs, n))
            };
            let left = remaining(deadline, "fence")?;
            return match tokio::time::timeout(left, work).await {
                Err(_) => Err(UpgradeError::PauseTimeout {
                    what: "fencing the old primary".into(),
                }),
                Ok(Err(e)) => Err(q(&primary, e)),
                Ok(Ok((dbs, n))) => Ok(Output::note(format!(
                    "databases {} read-only, {n} sessions ended",
                    dbs.join(", ")
                ))),
            };
        }
        if !self.fence_staged || self.hba.is_none() {
            // Run again after a crash or on a retry: stage (idempotent) first.
            self.stage_fence().await?;
        }
        let plan = self.hba.clone().ok_or_else(|| UpgradeError::Step {
            step: Step::FenceOldPrimary,
            detail: "no pg_hba.conf plan".into(),
        })?;
        let id = self.record().id.clone();
        let text = std::fs::read_to_string(&plan.path).map_err(|e| hba_err(&plan.path, e))?;
        let fenced = with_block(&text, &id, &plan.roles).map_err(|detail| UpgradeError::Step {
            step: Step::FenceOldPrimary,
            detail: detail.to_string(),
        })?;
        // Renamed into place now, synced while the server reloads and the
        // sessions end (two syncs are most of the fence's time on a slow
        // disk): durable before this step ends, so before promote.
        replace_file(&plan.path, &fenced, false)?;
        let written_at = t0.elapsed();
        let sync_path = plan.path.clone();
        let synced = tokio::task::spawn_blocking(move || sync_in_place(&sync_path));
        let terminate = terminate_sql(&self.own_pids());
        let probe_role = plan.probe.as_ref();
        let probe_bound = remaining(deadline, "fence")?;
        let mut polls = 0u32;
        let mut reloaded_at = Duration::ZERO;
        let old = self.old_client().await?;
        let work = async {
            let before: String = old.query_one(CONF_LOAD_TIME, &[]).await?.get(0);
            old.query_one(RELOAD_CONF, &[]).await?;
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
            // The postmaster has reloaded (it answers logins only after
            // that): one fenced role must now be refused before
            // authentication. The probe (a backend forked and refused) runs
            // while the sweep ends the sessions: neither waits for the other.
            let probe = async {
                let t = std::time::Instant::now();
                let seen = match probe_role {
                    Some(role) => Some(probe_login(&primary, role, probe_bound).await),
                    None => None,
                };
                (seen, t.elapsed())
            };
            let (n, probed) = tokio::join!(old.query_one(terminate.as_str(), &[]), probe);
            let n: i64 = n?.get(0);
            Ok::<_, tokio_postgres::Error>(Ok((n, probed)))
        };
        let left = remaining(deadline, "fence")?;
        let worked = tokio::time::timeout(left, work).await;
        // Bounded like the rest of the step: a disk that hangs rolls back.
        let left = remaining(deadline, "syncing pg_hba.conf")?;
        match tokio::time::timeout(left, synced).await {
            Err(_) => {
                return Err(UpgradeError::PauseTimeout {
                    what: format!("syncing {}", plan.path.display()),
                })
            }
            Ok(Ok(r)) => r?,
            Ok(Err(e)) => {
                return Err(UpgradeError::Step {
                    step: Step::FenceOldPrimary,
                    detail: format!("syncing {}: {e}", plan.path.display()),
                })
            }
        }
        let (n, (probed, probe_took)) = match worked {
            Err(_) => {
                return Err(UpgradeError::PauseTimeout {
                    what: "fencing the old primary".into(),
                })
            }
            Ok(Err(e)) => return Err(q(&primary, e)),
            Ok(Ok(Err(detail))) if detail == "cancelled" => return Err(UpgradeError::Cancelled),
            Ok(Ok(Err(detail))) => {
                return Err(UpgradeError::Step {
                    step: Step::FenceOldPrimary,
                    detail,
                })
            }
            Ok(Ok(Ok(n))) => n,
        };
        if let (Some(role), Some(seen)) = (&plan.probe, probed) {
            match seen {
                Err(e) => return Err(e.into()),
                Ok(LoginProbe::Refused) => {}
                Ok(LoginProbe::NotRefused(why)) => {
                    return Err(UpgradeError::Step {
                        step: Step::FenceOldPrimary,
                        detail: format!(
                            "{} was written but the server does not enforce it: a login as {role} is not refused ({why}); \
                             the file may not parse (see the server log)",
                            plan.path.display()
                        ),
                    })
                }
            }
        }
        Ok(Output::note(format!(
            "fenced in {:.1} ms (pg_hba.conf written {:.1} ms, reloaded {:.1} ms, {polls} polls, probe {} {:.1} ms): {} roles refused, {n} sessions ended",
            t0.elapsed().as_secs_f64() * 1000.0,
            written_at.as_secs_f64() * 1000.0,
            reloaded_at.as_secs_f64() * 1000.0,
            plan.probe.as_deref().unwrap_or("none"),
            probe_took.as_secs_f64() * 1000.0,
            plan.roles.len()
        )))
    }

    /// Lifts the fence completely and proves it, or fails. Idempotent.
    pub(crate) async fn unfence(&mut self) -> Result<(), UpgradeError> {
        let primary = self.cfg.database.primary.clone();
        let method = self.provider.fence_method();
        let limit = self.query_limit();
        if method == FenceMethod::AlterDatabase {
            // Not known: pause_writes never finished, so no fence was put up.
            let Some(keep) = self.kept_read_only() else {
                return Ok(());
            };
            let old = self.old_client().await?;
            return limit.run(&primary, unfence_databases(old, &keep)).await;
        }
        let old = self.old_client().await?;
        let files = limit.run(&primary, old.query_one(HBA_FILE, &[])).await?;
        let path = PathBuf::from(files.get::<_, String>(0));
        let auto = PathBuf::from(files.get::<_, String>(1)).join("postgresql.auto.conf");
        let text = std::fs::read_to_string(&path).map_err(|e| hba_err(&path, e))?;
        let clean = without_block(&text);
        if clean != text {
            write_atomic(&path, &clean)?;
        }
        let old = self.old_client().await?;
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
        limit.run(&primary, work).await?;
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
        let probe = self.hba.as_ref().and_then(|h| h.probe.clone());
        if let (Some(role), true) = (probe, left.is_empty()) {
            let seen = limit
                .wrap(
                    "a probe login at the old primary",
                    probe_login(&primary, &role, self.cfg.database.connect_timeout.0),
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

    /// A database-level fence streamed to the new server with the rest of the
    /// catalog: lift it there before writes resume. Idempotent.
    pub(crate) async fn unfence_new(&mut self, endpoint: &ConnString) -> Result<(), UpgradeError> {
        if self.provider.fence_method() != FenceMethod::AlterDatabase {
            return Ok(());
        }
        let keep = self.kept_read_only().unwrap_or_default();
        let limit = self.query_limit();
        let new = self.new_client().await?;
        limit.run(endpoint, unfence_databases(new, &keep)).await
    }

    /// The databases read-only on purpose (RDS fence): read before PAUSE
    /// by this run, else journaled with pause_writes.
    pub(crate) fn kept_read_only(&self) -> Option<Vec<String>> {
        self.kept_read_only.clone().or_else(|| {
            self.record()
                .step(Step::PauseWrites)
                .output
                .kept_read_only
                .clone()
        })
    }
}

/// The final position of the fenced old primary, flushed: terminates what
/// is left (a backend still authenticating at the fence), then commits one
/// transaction that writes WAL (the guard row's step) with
/// `synchronous_commit = local`: its commit flushes all WAL before it,
/// asynchronous commits included. (A transaction that writes no WAL, say
/// `SELECT txid_current()`, commits without a flush.) Then reads the flush
/// and insert positions. One round trip.
/// Without a guard row (a saga driven without the database guard), a
/// temporary table's catalog rows are the WAL the commit must flush.
pub(crate) async fn flushed_position(
    old: &Client,
    ours: &[i32],
    guarded_upgrade: Option<&str>,
) -> Result<Result<(String, i64), UpgradeError>, tokio_postgres::Error> {
    let sql = final_flush(ours, guarded_upgrade);
    let msgs = match old.simple_query(&sql).await {
        Ok(msgs) => msgs,
        Err(e) => {
            // A failure inside the explicit transaction leaves the session in
            // an aborted block; the roll back reuses this session to unfence.
            let _ = old.batch_execute(ROLLBACK).await;
            return Err(e);
        }
    };
    let rows: Vec<Option<&str>> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0)),
            _ => None,
        })
        .collect();
    let [Some(before), Some(ended), Some(flush)] = rows[..] else {
        return Ok(Err(UpgradeError::Step {
            step: Step::FinalSync,
            detail: format!("unexpected answer to the final flush: {rows:?}"),
        }));
    };
    // Everything inserted before (the last acknowledged commit included) must
    // be flushed, or the guard row was not there to write.
    match (parse_lsn(before), parse_lsn(flush)) {
        (Some(b), Some(f)) if f >= b => Ok(Ok((flush.to_string(), ended.parse().unwrap_or(0)))),
        _ => Ok(Err(UpgradeError::Step {
            step: Step::FinalSync,
            detail: format!(
                "the old primary's flush position {flush} is behind its insert position {before} after the final commit"
            ),
        })),
    }
}

/// `X/Y` (hex) as a number.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
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

    #[test]
    fn lsns_compare_as_numbers() {
        assert!(parse_lsn("1/0") > parse_lsn("0/FFFFFFFF"));
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert_eq!(parse_lsn("bad"), None);
    }

    #[test]
    fn the_auto_conf_check_sees_only_active_lines() {
        let text = "# Do not edit this file manually!\nprimary_conninfo = 'x'\ndefault_transaction_read_only = 'on'\n";
        assert!(auto_conf_sets(text, "default_transaction_read_only"));
        assert!(!auto_conf_sets(
            "#default_transaction_read_only = 'on'\nprimary_conninfo = 'x'\n",
            "default_transaction_read_only"
        ));
    }
}
