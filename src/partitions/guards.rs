//! What keeps a move out of DEFAULT from changing other tables: foreign keys
//! that reference the rows to move, and DELETE triggers on DEFAULT. Both are
//! read before anything is created, and again under the attaching
//! transaction's locks.
//!
//! Why no foreign-key action fires: tables whose foreign keys reference the
//! parent are locked against writers in the same transaction and the
//! referencing rows counted first; a referenced row is never deleted from
//! DEFAULT (the pass refuses and names the constraint), and deleting
//! unreferenced rows fires CASCADE, SET NULL, SET DEFAULT, NO ACTION and
//! RESTRICT on nothing.

use chrono_tz::Tz;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::ddl;
use super::exec::{Exec, StepError};
use super::model::{Range, ReferencingFk, TableState};
use super::report::TableReport;
use super::sql;
use crate::config::TableConfig;
use crate::pg::QualifiedName;

/// The foreign keys of other tables that reference the parent or its
/// DEFAULT. Read by the pass and by `partitions plan` alike.
pub(super) async fn read_referencing_fks(
    client: &Client,
    state: &TableState,
) -> Result<Vec<ReferencingFk>, tokio_postgres::Error> {
    let default_oid: i64 = match &state.default {
        Some(d) => {
            let row = client
                .query_one(sql::RELATION_OID, &[&d.name.quoted()])
                .await?;
            row.get::<_, Option<i64>>(0).unwrap_or(0)
        }
        None => 0,
    };
    let rows = client
        .query(sql::REFERENCING_FKS, &[&i64::from(state.oid), &default_oid])
        .await?;
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

/// The enabled DELETE triggers of `default`.
pub(super) async fn read_delete_triggers(
    client: &Client,
    default: &QualifiedName,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(sql::DELETE_TRIGGERS, &[&default.quoted()])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// One line per foreign key with rows referencing the rows to move.
pub(super) fn referenced_line(fk: &ReferencingFk, rows: u64) -> Option<String> {
    (rows > 0).then(|| {
        format!(
            "{rows} rows of {} reference them through {} (ON DELETE {})",
            fk.table, fk.constraint, fk.on_delete
        )
    })
}

/// The refusal of a move whose rows are referenced (`found`: one
/// [`referenced_line`] per foreign key), or none.
pub(super) fn referenced_refusal(
    default: &QualifiedName,
    child: &QualifiedName,
    found: &[String],
) -> Option<String> {
    if found.is_empty() {
        return None;
    }
    Some(format!(
        "{default}: rows of {child}'s range are referenced by foreign keys: {}. They are not moved \
         (the move would fire those constraints' actions) and {child} is not created. To proceed, \
         delete or re-point the referencing rows, or move the rows yourself in one transaction \
         with SET LOCAL session_replication_role = replica",
        found.join("; ")
    ))
}

/// The refusal of a move that would fire DELETE triggers on DEFAULT, or none.
pub(super) fn triggers_refusal(
    default: &QualifiedName,
    child: &QualifiedName,
    names: &[String],
) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    Some(format!(
        "{default}: moving rows of {child}'s range out of it would fire its DELETE triggers {}, \
         which may change other tables; nothing is moved and {child} is not created. Disable them \
         around the move (ALTER TABLE {default} DISABLE TRIGGER ...), or move the rows yourself",
        names.join(", ")
    ))
}

/// For `partitions plan`: what the pass's guards would refuse for a move of
/// `range` out of `default` (the pass reads the same again under its locks).
/// `fks` is read once per table by the caller.
#[allow(clippy::too_many_arguments)]
pub(super) async fn plan_refusals(
    client: &Client,
    state: &TableState,
    default: &QualifiedName,
    fks: &[ReferencingFk],
    tz: Tz,
    child: &QualifiedName,
    range: Range,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut out = Vec::new();
    let names = read_delete_triggers(client, default).await?;
    out.extend(triggers_refusal(default, child, &names));
    let mut found = Vec::new();
    for fk in fks {
        let sql =
            ddl::sql_count_referencing(fk, default, &state.key_column, state.key_type, tz, range);
        let n: i64 = client.query_one(sql.as_str(), &[]).await?.get(0);
        found.extend(referenced_line(fk, n.max(0) as u64));
    }
    out.extend(referenced_refusal(default, child, &found));
    Ok(out)
}

impl Exec<'_> {
    pub(super) async fn referencing_fks(
        &self,
        state: &TableState,
    ) -> Result<Vec<ReferencingFk>, StepError> {
        read_referencing_fks(self.client, state)
            .await
            .map_err(|source| StepError::Read {
                what: "the foreign keys referencing",
                table: state.table.clone(),
                source,
            })
    }

    /// Counts, per foreign key, the rows referencing rows of `range` in
    /// DEFAULT, and refuses the move when there are any.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn refuse_referenced(
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
            found.extend(referenced_line(fk, n));
        }
        match referenced_refusal(default, child, &found) {
            None => Ok(()),
            Some(why) => Err(StepError::Refused(why)),
        }
    }

    /// Refuses a move that would fire DELETE triggers on DEFAULT (an audit
    /// trigger, say, would record rows as deleted in another table).
    pub(super) async fn refuse_triggers(
        &self,
        default: &QualifiedName,
        child: &QualifiedName,
    ) -> Result<(), StepError> {
        let names = read_delete_triggers(self.client, default)
            .await
            .map_err(|source| StepError::Read {
                what: "the triggers of",
                table: default.clone(),
                source,
            })?;
        match triggers_refusal(default, child, &names) {
            None => Ok(()),
            Some(why) => Err(StepError::Refused(why)),
        }
    }
}
