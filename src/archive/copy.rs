//! Text COPY made exact. Every type's text output reads back to the same
//! value when both sides agree on a few settings, so the archive fixes them
//! in the session that writes and the session that restores:
//!
//! - `DateStyle = ISO, YMD` and `IntervalStyle = postgres`: the unambiguous
//!   forms (a `DMY` reader would swap days and months).
//! - `TimeZone = UTC`: timestamptz printed with `+00`; read back it is the
//!   same instant whatever zone the restoring server is in.
//! - `extra_float_digits = 3`: float4/float8 printed in shortest exact form
//!   (PostgreSQL 12+ prints round-trip-exact digits for any value >= 1).
//! - `bytea_output = hex`, `client_encoding = UTF8`.
//! - `row_security = off`: every row or an error, never a filtered subset.
//!
//! numeric, arrays, jsonb, ranges, enums, domains, composite and extension
//! types go through their own input/output functions, which are inverse by
//! contract. Binary COPY is not used: it carries type OIDs and per-version
//! send/recv formats, and types without binary I/O cannot be copied at all.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::ArchiveError;
use crate::pg::{quote_ident, QualifiedName};

/// The settings both COPY sessions run under, in order.
pub const COPY_SETTINGS: [(&str, &str); 7] = [
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("client_encoding", "UTF8"),
    // A policy that would hide rows makes COPY fail instead of archiving a
    // subset (the drop would lose the rest).
    ("row_security", "off"),
];

/// One column of an archived partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`: `numeric(12,2)`, `timestamp with time zone[]`.
    #[serde(rename = "type")]
    pub type_name: String,
    pub not_null: bool,
    /// A stored generated column's expression: not in the data.
    pub generated: Option<String>,
}

const COLUMNS: &str =
    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
       CASE WHEN a.attgenerated = 's' THEN pg_get_expr(d.adbin, d.adrelid) END \
     FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
     WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";

/// The columns of `table`, in order.
pub async fn columns(client: &Client, table: &QualifiedName) -> Result<Vec<Column>, ArchiveError> {
    let rows = client
        .query(COLUMNS, &[&table.quoted()])
        .await
        .map_err(|e| ArchiveError::pg(format!("read the columns of {table}"), &e))?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
            not_null: r.get(2),
            generated: r.get(3),
        })
        .collect())
}

/// `SET` statements for [`COPY_SETTINGS`] (the values are constants).
pub async fn prepare_session(client: &Client) -> Result<(), ArchiveError> {
    let sql: String = COPY_SETTINGS
        .iter()
        .map(|(k, v)| format!("SET {k} = '{v}';"))
        .collect();
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| ArchiveError::pg("set the COPY session's settings", &e))
}

/// The column list of the data: every non-generated column, quoted.
pub fn column_list<'a>(cols: impl Iterator<Item = &'a Column>) -> String {
    cols.map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `COPY (SELECT cols FROM table) TO STDOUT`: text format, every
/// non-generated column in order.
pub fn copy_out_sql(table: &QualifiedName, cols: &[Column]) -> String {
    let list = column_list(cols.iter().filter(|c| c.generated.is_none()));
    format!("COPY (SELECT {list} FROM {}) TO STDOUT", table.quoted())
}
