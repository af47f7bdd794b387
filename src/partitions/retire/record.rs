//! Rows of `pgsteward.retirements`: read, migrated, and what `status` and
//! `archives` show of them.

use serde::Serialize;
use tokio_postgres::Client;

use super::sql;
use super::state::State;
use crate::pg::{server_message, QualifiedName};

/// A retirement older than this without progress is stuck (the alert's threshold too).
pub const STUCK_AFTER_S: f64 = 86_400.0;

#[derive(Debug, Clone, Serialize)]
pub struct Retirement {
    pub id: i64,
    pub table: QualifiedName,
    pub partition: QualifiedName,
    pub from: String,
    pub to: String,
    pub key: String,
    pub state: State,
    #[serde(skip)]
    pub upload_id: Option<String>,
    pub rows: Option<i64>,
    pub bytes: Option<i64>,
    pub sha256: Option<String>,
    /// The multipart ETag the upload should have got (migration 4); `None`
    /// for older rows and stores whose ETags are not MD5s (read back).
    #[serde(skip)]
    pub etag: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// Seconds since the retirement began.
    pub age_s: f64,
    /// Seconds since its state last moved.
    pub idle_s: f64,
}

impl Retirement {
    fn from_row(r: &tokio_postgres::Row) -> Option<Retirement> {
        Some(Retirement {
            id: r.get(0),
            table: QualifiedName {
                schema: r.get(1),
                name: r.get(2),
            },
            partition: QualifiedName {
                schema: r.get(3),
                name: r.get(4),
            },
            from: r.get(5),
            to: r.get(6),
            key: r.get(7),
            state: State::parse(r.get(8))?,
            upload_id: r.get(9),
            rows: r.get(10),
            bytes: r.get(11),
            sha256: r.get(12),
            attempts: r.get(13),
            last_error: r.get(14),
            age_s: r.get(15),
            idle_s: r.get(16),
            etag: r.get(17),
        })
    }

    /// Unfinished and not moving for a day, or failing.
    pub fn stuck(&self) -> bool {
        self.state != State::Dropped && self.idle_s > STUCK_AFTER_S
    }
}

/// Why the retirement table could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} (pgsteward.retirements): {message}")]
pub struct RecordError {
    pub what: &'static str,
    pub message: String,
}

pub(crate) fn rec_err(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> RecordError {
    move |e| RecordError {
        what,
        message: server_message(&e),
    }
}

/// Brings the `pgsteward` schema to this binary's version (`schema::ensure`:
/// migration 2 is the retirement table and its write barrier). Cheap when it
/// is current (two catalog reads, no lock), so it runs before every
/// retirement; `target` names the primary in errors.
pub async fn migrate(client: &Client, target: &str) -> Result<(), RecordError> {
    crate::schema::ensure(client, target)
        .await
        .map(|_| ())
        .map_err(|e| RecordError {
            what: "migrate the pgsteward schema",
            message: e.to_string(),
        })
}

async fn exists(client: &Client) -> Result<bool, RecordError> {
    Ok(client
        .query_one(sql::EXISTS, &[])
        .await
        .map_err(rec_err("look for the retirement table"))?
        .get(0))
}

/// Unfinished retirements of `table`, oldest first (none without the table).
pub async fn open_of(
    client: &Client,
    table: &QualifiedName,
) -> Result<Vec<Retirement>, RecordError> {
    if !exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(sql::OPEN_OF_TABLE, &[&table.schema, &table.name])
        .await
        .map_err(rec_err("read the open retirements"))?;
    Ok(rows.iter().filter_map(Retirement::from_row).collect())
}

/// The unfinished retirement of `partition` (the table exists: migrated).
pub async fn open_of_partition(
    client: &Client,
    partition: &QualifiedName,
) -> Result<Option<Retirement>, RecordError> {
    let row = client
        .query_opt(
            sql::OPEN_OF_PARTITION,
            &[&partition.schema, &partition.name],
        )
        .await
        .map_err(rec_err("read the retirement"))?;
    Ok(row.as_ref().and_then(Retirement::from_row))
}

/// Every retirement (none without the table).
pub async fn all(client: &Client) -> Result<Vec<Retirement>, RecordError> {
    if !exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(sql::ALL, &[])
        .await
        .map_err(rec_err("read the retirements"))?;
    Ok(rows.iter().filter_map(Retirement::from_row).collect())
}

/// Parents with an unfinished retirement: the pass visits them even with
/// nothing else to do.
pub async fn open_tables(client: &Client) -> Result<Vec<QualifiedName>, RecordError> {
    if !exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(sql::OPEN_TABLES, &[])
        .await
        .map_err(rec_err("read the open retirements"))?;
    Ok(rows
        .iter()
        .map(|r| QualifiedName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect())
}
