//! Creating one partition: the table in one transaction, then, in a second,
//! the move of its rows out of DEFAULT and the ATTACH together. How a
//! partition next to a DEFAULT is attached (plain, after an exclusion CHECK
//! on a large DEFAULT, or with rows moved) is decided in `probe.rs`.
//!
//! Why one transaction for the move and the ATTACH: moved rows are then in
//! DEFAULT for every snapshot before COMMIT and in the new partition for
//! every one after, so a reader of the parent never misses a row, and every
//! publication and CDC consumer sees each moved row deleted once and
//! inserted once (see `attach_steps`). The price: writers of the partitioned
//! table wait for the transaction (SHARE on the parent), readers for the
//! ATTACH's scan of DEFAULT (ACCESS EXCLUSIVE on it, and on the parent once
//! rows moved: see `ddl::sql_lock_parent_exclusive`). Both are bounded:
//! every lock wait by `lock_timeout`, the rows moved by `default_move_batch`
//! and the DEFAULT scanned by `max_default_scan` (a larger one is proven
//! free of the range by a validated CHECK instead, or the move is refused).

use crate::partitions::sql;
use chrono_tz::Tz;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use super::ddl;
use super::exec::{Exec, StepError, UNCANCELLABLE_ATTEMPTS};
use super::model::{ParentDetails, Range, ReferencingFk, TableState};
use super::probe::{self, AttachPath, DefaultProbe};
use super::report::TableReport;
use crate::config::TableConfig;
use crate::pg::{Backoff, QualifiedName, Retry};

/// What the attaching transaction needs to know.
pub(super) struct AttachCtx<'a> {
    state: &'a TableState,
    details: &'a ParentDetails,
    tcfg: &'a TableConfig,
    child: &'a QualifiedName,
    range: Range,
    fks: &'a [ReferencingFk],
    probe: &'a DefaultProbe,
    /// The validated exclusion CHECK on DEFAULT, when the path took one.
    excl: Option<&'a str>,
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
            identity_index: row.get::<_, Option<i64>>(5).map(|o| o as u32),
            indexes: row.get(6),
        })
    }

    /// Creates one partition; see the module comment and `probe.rs` for
    /// the way it is attached.
    /// Crash safety: interrupted after the first transaction, a standalone
    /// table with our bounds CHECK is left; the next pass finds it by name
    /// and attaches it (`partitions status` lists it meanwhile). An
    /// exclusion CHECK left on DEFAULT is dropped by the next pass. The
    /// attaching transaction commits whole or not at all.
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
        let mut path = AttachPath::Plain;
        let mut found = DefaultProbe::default();
        if let Some(d) = &state.default {
            found = probe::read(
                self.client,
                &self.cfg.partitions,
                &d.name,
                key,
                kt,
                tz,
                range,
            )
            .await
            .map_err(|source| StepError::Read {
                what: "the rows of the new range in",
                table: d.name.clone(),
                source,
            })?;
            path = probe::decide(&found, &self.cfg.partitions, &state.table, &d.name, child)
                .map_err(|why| StepError::Refused(why.to_string()))?;
            fks = self.referencing_fks(state).await?;
            // Before anything is created or locked; repeated under the locks.
            if found.rows > 0 {
                self.refuse_triggers(&d.name, child).await?;
            }
            if found.rows > 0 && !fks.is_empty() {
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
        self.create_table(state, details, tz, child, range, report)
            .await?;
        let excl = match (&state.default, path) {
            (Some(d), AttachPath::ExclusionCheck) => {
                let name = ddl::exclusion_check_name(child);
                let r = self
                    .exclude_from_default(state, &d.name, &name, tcfg, range, report)
                    .await;
                if let Err(e) = r {
                    self.drop_exclusion(&d.name, &name, report).await;
                    return Err(e);
                }
                Some((d.name.clone(), name))
            }
            _ => None,
        };
        let ctx = AttachCtx {
            state,
            details,
            tcfg,
            child,
            range,
            fks: &fks,
            probe: &found,
            excl: excl.as_ref().map(|e| e.1.as_str()),
        };
        let r = self.attach(&ctx, report).await;
        if let (Err(_), Some((default, name))) = (&r, &excl) {
            self.drop_exclusion(default, name, report).await;
        }
        r
    }

    /// Never leaves a CHECK on DEFAULT for inserts of the range to fail on
    /// (a clean-up: bounded attempts, not cancelled).
    async fn drop_exclusion(&self, default: &QualifiedName, name: &str, report: &mut TableReport) {
        let sql = ddl::sql_drop_constraint(default, name);
        if let Err(e) = self.run_with(&sql, report, false).await {
            tracing::warn!(default = %default, error = %e.text(), "exclusion check not dropped; the next pass drops it");
        }
    }

    /// The exclusion CHECK on a large DEFAULT, added `NOT VALID` (an
    /// instant, under `lock_timeout`) and validated (a scan under SHARE
    /// UPDATE EXCLUSIVE, which no read or write waits for: its lock wait is
    /// bounded by `index_build_wait`, as a concurrent index build's).
    async fn exclude_from_default(
        &self,
        state: &TableState,
        default: &QualifiedName,
        name: &str,
        tcfg: &TableConfig,
        range: Range,
        report: &mut TableReport,
    ) -> Result<(), StepError> {
        let (key, kt, tz) = (state.key_column.as_str(), state.key_type, tcfg.timezone);
        let add = ddl::sql_add_exclusion_check(default, name, key, kt, tz, range);
        match self.run(&add, report).await {
            Ok(_) => {}
            // Left by an interrupted pass: validate it.
            Err(e) if e.is(&SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => return Err(e),
        }
        let p = &self.cfg.partitions;
        let wait = p
            .index_build_wait
            .0
            .max(p.lock_timeout.0)
            .as_millis()
            .max(1);
        let validate = format!(
            "SET lock_timeout = '{wait}ms'; {}",
            ddl::sql_validate_constraint(default, name)
        );
        let restore = format!(
            "SET lock_timeout = '{}ms'",
            p.lock_timeout.0.as_millis().max(1)
        );
        let started = std::time::Instant::now();
        let r = self.run(&validate, report).await;
        let _ = self.run_with(&restore, report, false).await;
        match r {
            Ok(_) => {
                tracing::info!(default = %default, elapsed_ms = started.elapsed().as_millis() as u64, "default partition proven free of the new range");
                Ok(())
            }
            Err(e) => Err(e.context("validate the exclusion check on the default partition")),
        }
    }

    /// The first transaction: the table with everything it takes from the
    /// parent (invisible to others until COMMIT, so nothing waits on it).
    async fn create_table(
        &self,
        state: &TableState,
        details: &ParentDetails,
        tz: Tz,
        child: &QualifiedName,
        range: Range,
        report: &mut TableReport,
    ) -> Result<(), StepError> {
        let mut stmts = ddl::create_statements(state, Some(details), tz, child, range);
        // In the same transaction: a partition the steward cannot give the
        // parent's owner (the owner lacks CREATE on the schema) is not made.
        if state.owner != self.current_user {
            stmts.push(ddl::sql_owner(child, &state.owner));
        }
        match self.run(&stmts.join(";\n"), report).await {
            Ok(_) => Ok(()),
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
    async fn attach(&self, ctx: &AttachCtx<'_>, report: &mut TableReport) -> Result<(), StepError> {
        let state = ctx.state;
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
        let child = ctx.child;
        let mut retry = Retry::new(self.cfg.partitions.lock_retries, Backoff::LOCK, self.cancel);
        loop {
            let attempt = retry.begin()?;
            let last = retry.is_last();
            let tx = self.attach_once(ctx, &columns, report);
            let (res, seen) = if last && attempt > 1 {
                super::blockers::watching(self.cfg, self.pid, tx).await
            } else {
                (tx.await, Vec::new())
            };
            let e = match res {
                Ok(moved) => {
                    if moved > 0 {
                        tracing::info!(into = %child, rows = moved, "rows moved out of the default partition");
                    }
                    report.rows_moved += moved;
                    return Ok(());
                }
                Err(e) => e,
            };
            if retry.again(e.is_lock_race(), &e).await? {
                continue;
            }
            if !e.is_lock_race() {
                return Err(e.context(&format!("attach {child}")));
            }
            let mut relations = vec![state.table.quoted(), child.quoted()];
            relations.extend(state.default.iter().map(|d| d.name.quoted()));
            relations.extend(ctx.fks.iter().map(|f| f.table.quoted()));
            let what = format!("attach {child}");
            return Err(self.gave_up(e, attempt, seen, &what, &relations).await);
        }
    }

    /// One attempt of the move-and-attach transaction; rolled back on any
    /// error. Returns the rows moved.
    async fn attach_once(
        &self,
        ctx: &AttachCtx<'_>,
        columns: &[String],
        report: &mut TableReport,
    ) -> Result<u64, StepError> {
        self.once(sql::BEGIN, self.cancel, report).await?;
        let res = self.attach_steps(ctx, columns, report).await;
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

    /// The attaching transaction. Moved rows are DELETEd from DEFAULT into a
    /// temporary table, the child is attached, and only then are they
    /// INSERTed into it: a standalone table is in no `FOR TABLE parent`
    /// publication (and `FOR ALL TABLES` or `FOR TABLES IN SCHEMA` publish it
    /// under its own name), so rows written into it before the ATTACH would
    /// never reach a subscriber of the parent, while the DELETEs would. In
    /// one transaction, no reader of the parent misses a committed row, and
    /// every publication of the parent and every CDC consumer sees each
    /// moved row deleted once and inserted once.
    ///
    /// Rejected: detaching DEFAULT while its rows move (hides them from
    /// readers of the parent); copying rows into the new partition and
    /// deleting them from DEFAULT in separate transactions (readers and
    /// subscribers see them twice in between).
    async fn attach_steps(
        &self,
        ctx: &AttachCtx<'_>,
        columns: &[String],
        report: &mut TableReport,
    ) -> Result<u64, StepError> {
        let (state, tcfg, child, range) = (ctx.state, ctx.tcfg, ctx.child, ctx.range);
        let (parent, kt, tz) = (&state.table, state.key_type, tcfg.timezone);
        let c = self.cancel;
        let mut moved = 0;
        if let Some(d) = &state.default {
            self.once(&ddl::sql_lock_parent(parent), c, report).await?;
            // With a validated exclusion CHECK no row of the range can be in
            // DEFAULT: nothing to take, and no scan of a large DEFAULT.
            if ctx.excl.is_none() {
                moved = self.take_rows(ctx, &d.name, columns, report).await?;
            }
        }
        self.once(&ddl::sql_attach(parent, child, kt, tz, range), c, report)
            .await?;
        let forced = ctx.details.force_row_security;
        if moved > 0 {
            if forced {
                // Made by an older version with FORCE: the owner's insert would meet it.
                self.once(&ddl::sql_force_row_security(child, false), c, report)
                    .await?;
            }
            self.once(&ddl::sql_put_rows(child, columns), c, report)
                .await?;
        }
        // Redundant once the partition constraint holds; the ATTACH's lock
        // on the child is already held, so this costs nothing.
        self.once(
            &ddl::sql_drop_constraint(child, ddl::BOUNDS_CHECK),
            c,
            report,
        )
        .await?;
        if let (Some(d), Some(name)) = (&state.default, ctx.excl) {
            // DEFAULT is locked by the ATTACH already.
            self.once(&ddl::sql_drop_constraint(&d.name, name), c, report)
                .await?;
        }
        if forced {
            self.once(&ddl::sql_force_row_security(child, true), c, report)
                .await?;
        }
        if let Some(ix) = ctx.details.identity_index {
            self.use_identity_index(ix, child, report).await?;
        }
        Ok(moved)
    }

    /// Locks DEFAULT against writers and takes the range's rows out of it
    /// into the temporary table (`key`, `kt`, `tz` from the context).
    async fn take_rows(
        &self,
        ctx: &AttachCtx<'_>,
        default: &QualifiedName,
        columns: &[String],
        report: &mut TableReport,
    ) -> Result<u64, StepError> {
        let (state, tcfg, child, range) = (ctx.state, ctx.tcfg, ctx.child, ctx.range);
        let (parent, key, kt, tz) = (
            &state.table,
            state.key_column.as_str(),
            state.key_type,
            tcfg.timezone,
        );
        let c = self.cancel;
        self.once(&ddl::sql_lock_default(default), c, report)
            .await?;
        // No trigger can be added under EXCLUSIVE: this answer holds to COMMIT.
        self.refuse_triggers(default, child).await?;
        if !ctx.fks.is_empty() {
            let tables: Vec<&QualifiedName> = ctx.fks.iter().map(|f| &f.table).collect();
            self.once(&ddl::sql_lock_referencing(&tables), c, report)
                .await?;
            self.refuse_referenced(state, default, tcfg, child, range, ctx.fks, c, report)
                .await?;
        }
        self.once(&ddl::sql_create_moving(parent), c, report)
            .await?;
        let take = ddl::sql_take_rows(default, columns, key, kt, tz, range);
        let moved = self.once(&take, c, report).await?.count;
        let batch = self.cfg.partitions.default_move_batch;
        if moved > u64::from(batch) {
            return Err(StepError::RowsArrived {
                default: default.clone(),
                child: child.clone(),
                moved,
                batch,
            });
        }
        if moved > 0 {
            // Rows that arrived since the probe meet the refusals rows meet.
            let late = DefaultProbe {
                rows: moved,
                bytes: 0,
                ..ctx.probe.clone()
            };
            probe::decide(&late, &self.cfg.partitions, parent, default, child)
                .map_err(|why| StepError::Refused(why.to_string()))?;
            self.once(&ddl::sql_lock_parent_exclusive(parent), c, report)
                .await?;
        }
        Ok(moved)
    }

    /// `REPLICA IDENTITY USING INDEX` of the child's index that the ATTACH
    /// attached to the parent's identity index: without it UPDATEs and
    /// DELETEs of a published table without a primary key fail.
    async fn use_identity_index(
        &self,
        parent_index: u32,
        child: &QualifiedName,
        report: &mut TableReport,
    ) -> Result<(), StepError> {
        let row = self
            .client
            .query_opt(
                ddl::IDENTITY_INDEX_OF_CHILD,
                &[&i64::from(parent_index), &child.quoted()],
            )
            .await
            .map_err(|source| StepError::Read {
                what: "the replica identity index of",
                table: child.clone(),
                source,
            })?;
        let Some(row) = row else {
            return Err(StepError::Refused(format!(
                "{child} has no index attached to the parent's replica identity index; it is not attached"
            )));
        };
        let ix: String = row.get(0);
        let sql = format!(
            "ALTER TABLE {} REPLICA IDENTITY USING INDEX {ix}",
            child.quoted()
        );
        self.once(&sql, self.cancel, report).await?;
        Ok(())
    }
}
