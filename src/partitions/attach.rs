//! Creating one partition: the table in one transaction, then the move of
//! its rows out of DEFAULT and the ATTACH together in a second.
//!
//! Why one transaction for the move and the ATTACH: moved rows are then in
//! DEFAULT for every snapshot before COMMIT and in the new partition for
//! every one after, so a reader of the parent never misses a row; no
//! exclusion CHECK is ever left on DEFAULT for an application INSERT to fail
//! on. The price, stated in the README: writers of the partitioned table
//! wait for the transaction (SHARE on the parent), readers wait for the
//! ATTACH's scan of DEFAULT (ACCESS EXCLUSIVE on it, and on the parent once
//! rows moved: see `ddl::sql_lock_parent_exclusive`). Both are bounded:
//! every lock wait by `lock_timeout`, the rows moved by `default_move_batch`
//! and the DEFAULT scanned by `max_default_scan`; a move beyond them is
//! refused with the figures.
//!
//! Why no foreign-key action fires: tables whose foreign keys reference the
//! parent are locked against writers in the same transaction and the
//! referencing rows counted first; a referenced row is never deleted from
//! DEFAULT (the pass refuses and names the constraint), and deleting
//! unreferenced rows fires CASCADE, SET NULL, SET DEFAULT, NO ACTION and
//! RESTRICT on nothing.

use crate::partitions::sql;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use super::apply::{Exec, StepError, UNCANCELLABLE_ATTEMPTS};
use super::ddl;
use super::model::{ParentDetails, Range, ReferencingFk, TableState};
use super::report::TableReport;
use super::session;
use crate::config::{ByteSize, TableConfig};
use crate::pg::QualifiedName;

/// What the probe of DEFAULT found before anything is locked.
struct Probe {
    rows: u64,
    bytes: u64,
}

impl Exec<'_> {
    pub(super) async fn parent_details(
        &self,
        state: &TableState,
    ) -> Result<ParentDetails, StepError> {
        let row = self
            .client
            .query_one(sql::PARENT_DETAILS, &[&i64::from(state.oid)])
            .await
            .map_err(|source| StepError::Read {
                what: "row security and replica identity of",
                table: state.table.clone(),
                source,
            })?;
        Ok(ParentDetails {
            row_security: row.get(0),
            force_row_security: row.get(1),
            replica_identity: row.get(2),
            tablespace: row.get(3),
            server_version: row.get(4),
        })
    }

    /// Creates one partition; see the module comment.
    /// Crash safety: interrupted after the first transaction, a standalone
    /// table with our bounds CHECK is left; the next pass finds it by name
    /// and attaches it. The second transaction commits whole or not at all.
    pub(super) async fn create(
        &self,
        state: &TableState,
        details: &ParentDetails,
        tcfg: &TableConfig,
        child: &QualifiedName,
        range: Range,
        report: &mut TableReport,
    ) -> Result<(), StepError> {
        let (key, kt, tz) = (state.key_column.as_str(), state.key_type, tcfg.timezone);
        let mut fks = Vec::new();
        if let Some(d) = &state.default {
            let probe = self
                .run(&ddl::sql_probe_default(&d.name, key, kt, tz, range), report)
                .await?
                .probe()
                .map(|(rows, bytes)| Probe { rows, bytes })
                .ok_or_else(|| StepError::NoSize(d.name.clone()))?;
            self.within_bounds(state, &d.name, child, &probe)?;
            fks = self.referencing_fks(state).await?;
            // Before anything is created or locked; repeated under the locks.
            if probe.rows > 0 {
                self.refuse_triggers(&d.name, child).await?;
            }
            if probe.rows > 0 && !fks.is_empty() {
                self.refuse_referenced(
                    state,
                    &d.name,
                    tcfg,
                    child,
                    range,
                    &fks,
                    self.cancel,
                    report,
                )
                .await?;
            }
        }
        self.create_table(state, details, tcfg, child, range, report)
            .await?;
        self.attach(state, tcfg, child, range, &fks, report).await
    }

    /// Refuses, with the figures, a move that cannot keep its bounds.
    fn within_bounds(
        &self,
        state: &TableState,
        default: &QualifiedName,
        child: &QualifiedName,
        probe: &Probe,
    ) -> Result<(), StepError> {
        let p = &self.cfg.partitions;
        if probe.rows > u64::from(p.default_move_batch) {
            return Err(StepError::Refused(format!(
                "{default} holds {} rows of {child}'s range, more than partitions.default_move_batch = {} \
                 that one transaction moves while writers of {} wait; rows stay in {default} (readable) and \
                 {child} is not created. Raise default_move_batch to accept a longer write pause, or move \
                 the rows yourself in a quiet period",
                probe.rows, p.default_move_batch, state.table
            )));
        }
        if probe.bytes > p.max_default_scan.0 {
            return Err(StepError::Refused(format!(
                "{default} is {} on disk, more than partitions.max_default_scan = {}: attaching {child} \
                 scans it while readers of {} wait; empty {default} into partitions or raise max_default_scan",
                ByteSize(probe.bytes),
                p.max_default_scan,
                state.table
            )));
        }
        Ok(())
    }

    async fn referencing_fks(&self, state: &TableState) -> Result<Vec<ReferencingFk>, StepError> {
        let default_oid: i64 = match &state.default {
            Some(d) => {
                let row = self
                    .client
                    .query_one(sql::RELATION_OID, &[&d.name.quoted()])
                    .await
                    .map_err(StepError::Client)?;
                row.get::<_, Option<i64>>(0).unwrap_or(0)
            }
            None => 0,
        };
        let rows = self
            .client
            .query(sql::REFERENCING_FKS, &[&i64::from(state.oid), &default_oid])
            .await
            .map_err(|source| StepError::Read {
                what: "the foreign keys referencing",
                table: state.table.clone(),
                source,
            })?;
        Ok(rows
            .iter()
            .map(|r| ReferencingFk {
                constraint: r.get(0),
                table: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                columns: r.get(3),
                referenced: r.get(4),
                on_delete: r.get(5),
            })
            .collect())
    }

    /// The first transaction: the table with everything it takes from the
    /// parent (invisible to others until COMMIT, so nothing waits on it).
    async fn create_table(
        &self,
        state: &TableState,
        details: &ParentDetails,
        tcfg: &TableConfig,
        child: &QualifiedName,
        range: Range,
        report: &mut TableReport,
    ) -> Result<(), StepError> {
        let stmts = ddl::create_statements(state, Some(details), tcfg.timezone, child, range);
        match self.run(&stmts.join(";\n"), report).await {
            Ok(_) => {
                if state.owner != self.current_user {
                    let sql = ddl::sql_owner(child, &state.owner);
                    if let Err(e) = self.run(&sql, report).await {
                        report.notes.push(format!(
                            "{child}: owned by {} instead of the parent's owner {}: {}; grant {} membership in {} to fix",
                            self.current_user, state.owner, e.text(), self.current_user, state.owner
                        ));
                    }
                }
                Ok(())
            }
            Err(e) if e.is(&SqlState::DUPLICATE_TABLE) => {
                let existing = self
                    .client
                    .query_opt(
                        sql::RELATION_KIND_PARTITION_CHECK,
                        &[&child.quoted(), &ddl::BOUNDS_CHECK],
                    )
                    .await
                    .map_err(|source| StepError::LookUp {
                        child: child.clone(),
                        source,
                    })?;
                let ours = existing.is_some_and(|row| {
                    row.get::<_, String>(0) == "r"
                        && !row.get::<_, bool>(1)
                        && row.get::<_, bool>(2)
                });
                if !ours {
                    return Err(StepError::NotOurs(child.clone()));
                }
                tracing::info!(partition = %child, "resuming a partition an interrupted pass created");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The second transaction, retried whole on a lost lock race.
    async fn attach(
        &self,
        state: &TableState,
        tcfg: &TableConfig,
        child: &QualifiedName,
        range: Range,
        fks: &[ReferencingFk],
        report: &mut TableReport,
    ) -> Result<(), StepError> {
        let columns: Vec<String> = if state.default.is_some() {
            self.client
                .query(sql::STORED_COLUMNS, &[&state.table.quoted()])
                .await
                .map_err(|source| StepError::Read {
                    what: "the columns of",
                    table: state.table.clone(),
                    source,
                })?
                .iter()
                .map(|r| r.get(0))
                .collect()
        } else {
            Vec::new()
        };
        let retries = self.cfg.partitions.lock_retries.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.cancel.is_cancelled() {
                return Err(StepError::Cancelled);
            }
            let last = attempt >= retries;
            let tx = self.attach_once(state, tcfg, child, range, fks, &columns, report);
            let (res, seen) = if last && attempt > 1 {
                super::blockers::watching(self.cfg, self.pid, tx).await
            } else {
                (tx.await, Vec::new())
            };
            match res {
                Ok(moved) => {
                    if moved > 0 {
                        tracing::info!(into = %child, rows = moved, "rows moved out of the default partition");
                    }
                    report.rows_moved += moved;
                    return Ok(());
                }
                Err(e) if e.is_lock_race() && !last => {
                    let wait = session::backoff(attempt);
                    tracing::info!(attempt, wait_ms = wait.as_millis() as u64, error = %e.text(), "lock not granted; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.cancel.cancelled() => return Err(StepError::Cancelled),
                    }
                }
                Err(e) if e.is_lock_race() => {
                    let mut relations = vec![state.table.quoted(), child.quoted()];
                    relations.extend(state.default.iter().map(|d| d.name.quoted()));
                    relations.extend(fks.iter().map(|f| f.table.quoted()));
                    let what = format!("attach {child}");
                    return Err(self.gave_up(e, attempt, seen, &what, &relations).await);
                }
                Err(e) => return Err(e.context(&format!("attach {child}"))),
            }
        }
    }

    /// One attempt of the move-and-attach transaction; rolled back on any
    /// error. Returns the rows moved.
    #[allow(clippy::too_many_arguments)]
    async fn attach_once(
        &self,
        state: &TableState,
        tcfg: &TableConfig,
        child: &QualifiedName,
        range: Range,
        fks: &[ReferencingFk],
        columns: &[String],
        report: &mut TableReport,
    ) -> Result<u64, StepError> {
        self.once(sql::BEGIN, self.cancel, report).await?;
        let res = self
            .attach_steps(state, tcfg, child, range, fks, columns, report)
            .await;
        let end = if res.is_ok() {
            sql::COMMIT
        } else {
            sql::ROLLBACK
        };
        // COMMIT/ROLLBACK are never cancelled: the transaction must end.
        let never = CancellationToken::new();
        let mut ended = self.once(end, &never, report).await;
        for _ in 1..UNCANCELLABLE_ATTEMPTS {
            if ended.is_ok() || res.is_ok() {
                break;
            }
            ended = self.once(end, &never, report).await;
        }
        let moved = res?;
        ended?;
        Ok(moved)
    }

    #[allow(clippy::too_many_arguments)]
    async fn attach_steps(
        &self,
        state: &TableState,
        tcfg: &TableConfig,
        child: &QualifiedName,
        range: Range,
        fks: &[ReferencingFk],
        columns: &[String],
        report: &mut TableReport,
    ) -> Result<u64, StepError> {
        let (parent, key, kt, tz) = (
            &state.table,
            state.key_column.as_str(),
            state.key_type,
            tcfg.timezone,
        );
        let c = self.cancel;
        let mut moved = 0;
        if let Some(d) = &state.default {
            self.once(&ddl::sql_lock_parent(parent), c, report).await?;
            self.once(&ddl::sql_lock_default(&d.name), c, report)
                .await?;
            // No trigger can be added under EXCLUSIVE: this answer holds to COMMIT.
            self.refuse_triggers(&d.name, child).await?;
            if !fks.is_empty() {
                let tables: Vec<&QualifiedName> = fks.iter().map(|f| &f.table).collect();
                self.once(&ddl::sql_lock_referencing(&tables), c, report)
                    .await?;
                self.refuse_referenced(state, &d.name, tcfg, child, range, fks, c, report)
                    .await?;
            }
            let sql = ddl::sql_move_rows(&d.name, child, columns, key, kt, tz, range);
            moved = self.once(&sql, c, report).await?.count;
            let batch = self.cfg.partitions.default_move_batch;
            if moved > u64::from(batch) {
                return Err(StepError::RowsArrived {
                    default: d.name.clone(),
                    child: child.clone(),
                    moved,
                    batch,
                });
            }
            if moved > 0 {
                self.once(&ddl::sql_lock_parent_exclusive(parent), c, report)
                    .await?;
            }
        }
        self.once(&ddl::sql_attach(parent, child, kt, tz, range), c, report)
            .await?;
        // Redundant once the partition constraint holds; the ATTACH's lock
        // on the child is already held, so this costs nothing.
        self.once(
            &ddl::sql_drop_constraint(child, ddl::BOUNDS_CHECK),
            c,
            report,
        )
        .await?;
        Ok(moved)
    }

    /// Counts, per foreign key, the rows referencing rows of `range` in
    /// DEFAULT, and refuses the move when there are any.
    #[allow(clippy::too_many_arguments)]
    async fn refuse_referenced(
        &self,
        state: &TableState,
        default: &QualifiedName,
        tcfg: &TableConfig,
        child: &QualifiedName,
        range: Range,
        fks: &[ReferencingFk],
        cancel: &CancellationToken,
        report: &mut TableReport,
    ) -> Result<(), StepError> {
        let (key, kt, tz) = (state.key_column.as_str(), state.key_type, tcfg.timezone);
        let mut found = Vec::new();
        for fk in fks {
            let sql = ddl::sql_count_referencing(fk, default, key, kt, tz, range);
            let n: u64 = self
                .once(&sql, cancel, report)
                .await?
                .row
                .first()
                .and_then(|v| v.as_deref())
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX);
            if n > 0 {
                found.push(format!(
                    "{n} rows of {} reference them through {} (ON DELETE {})",
                    fk.table, fk.constraint, fk.on_delete
                ));
            }
        }
        if found.is_empty() {
            return Ok(());
        }
        Err(StepError::Refused(format!(
            "{default}: rows of {child}'s range are referenced by foreign keys: {}. They are not moved \
             (the move would fire those constraints' actions) and {child} is not created. To proceed, \
             delete or re-point the referencing rows, or move the rows yourself in one transaction \
             with SET LOCAL session_replication_role = replica",
            found.join("; ")
        )))
    }

    /// Refuses a move that would fire DELETE triggers on DEFAULT (an audit
    /// trigger, say, would record rows as deleted in another table).
    async fn refuse_triggers(
        &self,
        default: &QualifiedName,
        child: &QualifiedName,
    ) -> Result<(), StepError> {
        let rows = self
            .client
            .query(sql::DELETE_TRIGGERS, &[&default.quoted()])
            .await
            .map_err(|source| StepError::Read {
                what: "the triggers of",
                table: default.clone(),
                source,
            })?;
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        if names.is_empty() {
            return Ok(());
        }
        Err(StepError::Refused(format!(
            "{default}: moving rows of {child}'s range out of it would fire its DELETE triggers {}, \
             which may change other tables; nothing is moved and {child} is not created. Disable them \
             around the move (ALTER TABLE {default} DISABLE TRIGGER ...), or move the rows yourself",
            names.join(", ")
        )))
    }
}
