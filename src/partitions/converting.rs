//! Tables being converted by `pgsteward convert` that have not reached their
//! swap. The pass leaves them alone (the swap renames the table and creates
//! the parent under its name; a pass in between would act on either), and
//! `plan`/`status` report them as being converted rather than as "not
//! partitioned".
//!
//! `convert` stands above this module and owns the journal
//! `pgsteward.conversions`; its columns are the contract, read here through
//! this module's own query so that partitions never imports convert.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use super::sql;
use crate::pg::{server_message, QualifiedName};

/// A conversion in flight, before its swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Converting {
    pub table: QualifiedName,
    /// The last step done (`prepared`, `unique_indexes`, `check_added`, `check_validated`).
    pub step: String,
    /// When that step was done.
    pub since: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
}

impl Converting {
    /// Why the pass leaves the table alone, for every report.
    pub fn describe(&self) -> String {
        format!(
            "being converted to a partitioned table by `pgsteward convert` (step {} since {}, started {}); \
             maintained once its swap is done: `pgsteward convert status --table {}`",
            self.step,
            self.since.format("%Y-%m-%d %H:%M:%S UTC"),
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.table
        )
    }
}

/// The conversions in flight before their swap. Read after the catalog: a
/// table seen plain is never planned, and one seen partitioned before its
/// conversion's swap committed is listed here. Errors (no privilege on the
/// journal, say) are logged and mean "none".
pub async fn read(client: &Client) -> Vec<Converting> {
    match try_read(client).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %server_message(&e), "conversion journal not read; no table skipped");
            Vec::new()
        }
    }
}

async fn try_read(client: &Client) -> Result<Vec<Converting>, tokio_postgres::Error> {
    let exists: bool = client.query_one(sql::JOURNAL_EXISTS, &[]).await?.get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client.query(sql::TABLES_CONVERTING, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| Converting {
            table: QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            step: r.get(2),
            since: r.get(3),
            started_at: r.get(4),
        })
        .collect())
}

/// The conversion of `table` among `all`, if any.
pub fn of<'a>(all: &'a [Converting], table: &QualifiedName) -> Option<&'a Converting> {
    all.iter().find(|c| &c.table == table)
}
