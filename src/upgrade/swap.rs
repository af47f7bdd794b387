//! The steps around the write pause that are slow on RDS: the new readers
//! (before it) and the identifier swap and read move (after it).
//!
//! Nothing here runs between PAUSE and RESUME. The cutover always moves
//! PgBouncer to the new server's *own* endpoint (steps.rs `repoint`); with
//! `repoint = "identifier-swap"` the names move afterwards, one persisted
//! step per rename, each waited for under `upgrade.step_timeout`:
//!
//! 1. `rename_old_aside`: the old primary to `<source>-old-<id>`;
//! 2. `rename_new_in`: the new primary to `<source>`;
//! 3. `repoint_stable`: PgBouncer to the stable name, a plain RELOAD;
//! 4. `move_reads`: each old reader aside, its new reader into its name
//!    (identifier-swap), or PgBouncer's read entries to the new readers
//!    (pgbouncer), one reader at a time so the others keep serving.
//!
//! Crash safety: every step re-reads the provider (which name holds which
//! server, from its tags) and does only what is missing, so a crash between
//! any two renames resumes with the next one.

use std::time::Duration;

use super::error::UpgradeError;
use super::record::{Output, Step};
use super::runner::Saga;
use super::session::connect;
use super::sql::{CURRENT_LSN, IN_RECOVERY, REPLAYED_ENOUGH};
use crate::config::{ConnString, CutoverKind};
use crate::provider::{Provider, ReaderFacts, ServerState, SourceFacts};

impl Saga {
    fn readers(&self) -> Result<Vec<ReaderFacts>, UpgradeError> {
        Ok(self.source()?.readers)
    }

    /// Before the pause: one new reader per reader of the source, each a
    /// replica of the new server (so it follows it through promotion).
    pub(crate) async fn create_readers(&mut self) -> Result<Output, UpgradeError> {
        let readers = self.readers()?;
        if readers.is_empty() {
            return Ok(Output::note("the source has no readers to replace"));
        }
        let source = self.source()?;
        let new_primary = self.replica()?;
        let upgrade_id = self.record().id.clone();
        let mut made = Vec::new();
        for r in &readers {
            let info = self
                .provider
                .create_reader(&source, &upgrade_id, &new_primary, r)
                .await?;
            self.progress.say(
                Step::CreateReaders,
                &format!(
                    "{} for {} on {} ({:?})",
                    info.id, r.id, r.new_class, info.state
                ),
            );
            made.push(format!("{} -> {} ({})", r.id, info.id, r.new_class));
        }
        Ok(Output::note(made.join(", ")))
    }

    /// The new readers accept connections, are in recovery and have replayed
    /// the old primary's current position within `catchup_max_bytes`.
    pub(crate) async fn wait_readers(&mut self) -> Result<Output, UpgradeError> {
        let readers = self.readers()?;
        if readers.is_empty() {
            return Ok(Output::note("no readers"));
        }
        let step_timeout = self.cfg.upgrade.step_timeout.0;
        let deadline = tokio::time::Instant::now() + step_timeout;
        let max = self.cfg.upgrade.catchup_max_bytes.0 as f64;
        let mut notes = Vec::new();
        for r in &readers {
            let endpoint = loop {
                let limit = self.query_limit();
                let info = limit
                    .wrap(
                        "the provider's description",
                        self.provider.describe_reader(r),
                    )
                    .await?;
                match (info.state, info.endpoint) {
                    (ServerState::Available, Some(e)) => break e,
                    (ServerState::Creating | ServerState::Available, _) => {}
                    (other, _) => {
                        return Err(UpgradeError::Step {
                            step: Step::WaitReaders,
                            detail: format!("{} is {other:?}", r.new_id),
                        })
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(UpgradeError::Timeout {
                        what: format!("{} available", r.new_id),
                        after: step_timeout,
                    });
                }
                self.tick(Duration::from_secs(2)).await?;
            };
            let behind = self.reader_caught_up(&endpoint, max, deadline).await?;
            notes.push(format!("{} caught up ({behind:.0} B behind)", r.new_id));
        }
        Ok(Output::note(notes.join(", ")))
    }

    /// Polls `reader` until it is in recovery and within `max` bytes of the
    /// old primary's current position; returns the last distance.
    async fn reader_caught_up(
        &mut self,
        reader: &ConnString,
        max: f64,
        deadline: tokio::time::Instant,
    ) -> Result<f64, UpgradeError> {
        let client = connect(reader, &self.cfg).await?;
        loop {
            let limit = self.query_limit();
            let in_recovery: bool = limit
                .run(reader, client.query_one(IN_RECOVERY, &[]))
                .await?
                .get(0);
            if !in_recovery {
                // A writable reader before promote would be a second primary.
                return Err(UpgradeError::Step {
                    step: Step::WaitReaders,
                    detail: format!("{reader} is not in recovery; delete it (`upgrade abort`)"),
                });
            }
            let primary = self.cfg.database.primary.clone();
            let old = self.old_client().await?;
            let lsn: String = limit
                .run(&primary, old.query_one(CURRENT_LSN, &[]))
                .await?
                .get(0);
            let behind: f64 = limit
                .run(reader, client.query_one(REPLAYED_ENOUGH, &[&lsn]))
                .await?
                .get(0);
            if behind <= max {
                return Ok(behind.max(0.0));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(UpgradeError::Timeout {
                    what: format!("{reader} caught up ({behind:.0} B behind)"),
                    after: self.cfg.upgrade.step_timeout.0,
                });
            }
            self.tick(Duration::from_millis(200)).await?;
        }
    }

    /// After RESUME: the old primary leaves the source's name. (Rows that
    /// need the identifier swap run only where the provider swaps:
    /// `table::Needs::unmet_by`.)
    pub(crate) async fn rename_old_aside(&mut self) -> Result<Output, UpgradeError> {
        let source = self.source()?;
        let new_id = self.replica()?;
        // The fenced old primary is let go before it loses its name: after
        // the swap that name reaches the new primary.
        self.old = None;
        let old = self.cfg.database.primary.to_string();
        if let Some(g) = self.guard.as_mut() {
            g.release(&old);
        }
        let upgrade_id = self.record().id.clone();
        let note = self
            .provider
            .rename_aside(&source.id, &upgrade_id, &new_id)
            .await?;
        Ok(Output::note(note))
    }

    /// After RESUME: the new primary takes the source's name. PgBouncer still
    /// points at the new server's own endpoint until `repoint_stable`.
    pub(crate) async fn rename_new_in(&mut self) -> Result<Output, UpgradeError> {
        let source = self.source()?;
        let new_id = self.replica()?;
        let own = self.new_endpoint().await?;
        let note = self.provider.rename_in(&new_id, &source.id).await?;
        // The server now answers at the source's name: ask again.
        self.new_endpoint = None;
        self.new = None;
        let stable = self.new_endpoint().await?;
        if let Some(g) = self.guard.as_mut() {
            g.readdress(&own.to_string(), &stable).await?;
        }
        Ok(Output::note(format!(
            "{note}; now at {}",
            stable.without_password()
        )))
    }

    /// After the swap: PgBouncer back on the stable name with a plain RELOAD
    /// (no PAUSE: both addresses reach the same, writable server), then a
    /// write through it is checked.
    pub(crate) async fn repoint_stable(&mut self) -> Result<Output, UpgradeError> {
        let stable = self.new_endpoint().await?;
        let (host, port) = stable.spec()?.host_port();
        self.point_pooler_at(Step::RepointStable, &host, port)
            .await?;
        let checked = self.verify_through_pooler(&stable).await?;
        Ok(Output::note(format!("pooler -> {host}:{port}; {checked}")))
    }

    /// Reads move to the new readers, one reader at a time.
    pub(crate) async fn move_reads(&mut self) -> Result<Output, UpgradeError> {
        let readers = self.readers()?;
        if readers.is_empty() {
            return Ok(Output::note("no readers"));
        }
        let upgrade_id = self.record().id.clone();
        let mut notes = Vec::new();
        for r in &readers {
            if self.provider.swaps_identifiers() {
                let a = self
                    .provider
                    .rename_aside(&r.id, &upgrade_id, &r.new_id)
                    .await?;
                let b = self.provider.rename_in(&r.new_id, &r.id).await?;
                self.progress.say(Step::MoveReads, &format!("{a}; {b}"));
            }
            let moved = self.repoint_read_entries(r).await?;
            notes.push(format!("{} -> {} ({moved} pooler entries)", r.id, r.new_id));
        }
        Ok(Output::note(notes.join(", ")))
    }

    /// Every PgBouncer `[databases]` entry that pointed at the old reader's
    /// address (recorded at precheck) now points at the new reader (its
    /// stable name after a swap), then a plain RELOAD.
    async fn repoint_read_entries(&mut self, r: &ReaderFacts) -> Result<usize, UpgradeError> {
        if self.cfg.cutover.kind != CutoverKind::Pgbouncer {
            return Ok(0);
        }
        let Some(address) = r.address.as_deref() else {
            return Ok(0);
        };
        let info = self.provider.describe_reader(r).await?;
        let Some(endpoint) = info.endpoint else {
            return Err(UpgradeError::Step {
                step: Step::MoveReads,
                detail: format!("{} has no endpoint ({:?})", r.new_id, info.state),
            });
        };
        let (host, port) = endpoint.spec()?.host_port();
        let mut moved = 0;
        for i in 0..self.cfg.cutover.admin.len().max(1) {
            let Some(ini) = self
                .cfg
                .cutover
                .pooler_config_file(i)
                .map(|p| p.to_path_buf())
            else {
                continue;
            };
            let text = std::fs::read_to_string(&ini).map_err(|e| UpgradeError::Step {
                step: Step::MoveReads,
                detail: format!("{}: {e}", ini.display()),
            })?;
            for name in read_entries(&text, address, &self.cfg.cutover.database) {
                crate::pooler::rewrite_ini(&ini, &name, &host, port)?;
                moved += 1;
            }
        }
        if moved > 0 {
            self.poolers.reload().await?;
        }
        Ok(moved)
    }
}

/// One server change `upgrade plan` announces, in the order the upgrade makes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerChange {
    pub step: &'static str,
    pub action: &'static str,
    pub server: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    pub detail: String,
}

/// Every server the upgrade will create, promote, rename and delete, in
/// order, with classes. Pure: from the precheck's facts and the provider's naming.
pub fn server_changes(
    provider: &dyn Provider,
    source: &SourceFacts,
    upgrade_id: &str,
    target_class: &str,
) -> Vec<ServerChange> {
    let change =
        |step, action, server: String, class: Option<String>, detail: String| ServerChange {
            step,
            action,
            server,
            class,
            detail,
        };
    // A rename changes no class.
    let rename =
        |step, server: String, detail: String| change(step, "rename", server, None, detail);
    let new = crate::provider::replica_id(&source.id, upgrade_id);
    let readers: Vec<ReaderFacts> = source
        .readers
        .iter()
        .map(|r| ReaderFacts {
            new_id: provider.reader_id(&r.id, upgrade_id),
            ..r.clone()
        })
        .collect();
    let swaps = provider.swaps_identifiers();
    let mut out = vec![change(
        "create_replica",
        "create",
        new.clone(),
        Some(target_class.to_string()),
        format!(
            "replica of {}{}",
            source.id,
            source
                .extra
                .get("class")
                .map(|c| format!(" (on {c})"))
                .unwrap_or_default()
        ),
    )];
    for r in &readers {
        out.push(change(
            "create_readers",
            "create",
            r.new_id.clone(),
            Some(r.new_class.clone()),
            format!(
                "replica of {new} (cascading; automated backups turned on there first), replaces {} ({})",
                r.id, r.class
            ),
        ));
    }
    out.push(change(
        "promote",
        "promote",
        new.clone(),
        Some(target_class.to_string()),
        "point of no return, inside the write pause; PgBouncer to its own endpoint".into(),
    ));
    let old_primary = if swaps {
        let aside = provider.aside_id(&source.id, upgrade_id);
        out.push(rename(
            "rename_old_aside",
            source.id.clone(),
            format!("-> {aside} (after RESUME)"),
        ));
        out.push(rename(
            "rename_new_in",
            new.clone(),
            format!("-> {} (PgBouncer back on it: plain RELOAD)", source.id),
        ));
        aside
    } else {
        source.id.clone()
    };
    let mut old_readers = Vec::new();
    for r in &readers {
        if swaps {
            let aside = provider.aside_id(&r.id, upgrade_id);
            out.push(rename("move_reads", r.id.clone(), format!("-> {aside}")));
            out.push(rename(
                "move_reads",
                r.new_id.clone(),
                format!("-> {}", r.id),
            ));
            old_readers.push(aside);
        } else {
            out.push(change(
                "move_reads",
                "repoint",
                r.new_id.clone(),
                None,
                format!(
                    "PgBouncer entries at {} now point here",
                    r.address.as_deref().unwrap_or("the old reader")
                ),
            ));
            old_readers.push(r.id.clone());
        }
    }
    for id in old_readers {
        let detail = provider.retire_detail(&id, true);
        out.push(change("retire_old", "delete", id, None, detail));
    }
    let detail = provider.retire_detail(&old_primary, false);
    out.push(change("retire_old", "delete", old_primary, None, detail));
    out
}

/// Names of the `[databases]` entries of a pgbouncer.ini pointing at
/// `address` (`host:port`), except the write entry `write_db`.
pub fn read_entries(ini: &str, address: &str, write_db: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (name, _) in crate::pooler::database_lines(ini) {
        if name == write_db || names.iter().any(|n| n == name) {
            continue;
        }
        if let Some((host, port)) = crate::pooler::ini_target(ini, name) {
            if format!("{host}:{port}") == address {
                names.push(name.to_string());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_entries_are_found_by_address() {
        let ini = "[databases]\napp = host=10.0.0.1 port=5432 dbname=app\napp_ro = host=10.0.0.2 port=5432 dbname=app\n; old = host=10.0.0.2 port=5432\nreport = host=10.0.0.2 port=5432 dbname=rep\n[pgbouncer]\nlisten_port = 6432\n";
        assert_eq!(
            read_entries(ini, "10.0.0.2:5432", "app"),
            vec!["app_ro".to_string(), "report".to_string()]
        );
        assert!(read_entries(ini, "10.0.0.1:5432", "app").is_empty());
    }
}
