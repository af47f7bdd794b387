//! The way back: an archive's rows streamed from the store into
//! `COPY ... FROM STDIN`, the SHA-256 and the row count checked as they
//! pass. The caller runs it inside the transaction that created the target,
//! so a restore that does not verify leaves nothing behind.

use futures::SinkExt;
use sha2::{Digest, Sha256};
use tokio_postgres::Transaction;
use tokio_util::sync::CancellationToken;

use super::copy::column_list;
use super::digest::hex;
use super::manifest::Manifest;
use super::progress::Progress;
use super::{ArchiveError, Store};
use crate::pg::{quote_ident, QualifiedName};

/// `CREATE UNLOGGED TABLE target (...)` with the archived columns: types,
/// NOT NULL, generated columns computed again by the server. Unlogged while
/// it loads: the caller makes it logged in the same transaction, so logical
/// decoding never sees the rows (see `partitions::retire::commands`).
pub fn standalone_table_sql(target: &QualifiedName, m: &Manifest) -> String {
    let cols: Vec<String> = m
        .columns
        .iter()
        .map(|c| {
            let mut s = format!("{} {}", quote_ident(&c.name), c.type_name);
            if let Some(expr) = &c.generated {
                s.push_str(&format!(" GENERATED ALWAYS AS ({expr}) STORED"));
            }
            if c.not_null {
                s.push_str(" NOT NULL");
            }
            s
        })
        .collect();
    format!(
        "CREATE UNLOGGED TABLE {} ({})",
        target.quoted(),
        cols.join(", ")
    )
}

/// Copies the archive `m` into `target` (which exists, empty) within `tx`;
/// the rows loaded. Fails, leaving `tx` to be rolled back, when the bytes'
/// SHA-256 or the row count differ from the manifest.
pub async fn copy_into(
    store: &Store,
    tx: &Transaction<'_>,
    m: &Manifest,
    target: &QualifiedName,
    cancel: &CancellationToken,
) -> Result<u64, ArchiveError> {
    let settings: String = m
        .copy_settings
        .iter()
        .filter(|(k, _)| super::COPY_SETTINGS.iter().any(|(known, _)| known == k))
        .map(|(k, v)| format!("SET LOCAL {k} = {};", crate::pg::quote_literal(v)))
        .collect();
    tx.batch_execute(&settings)
        .await
        .map_err(|e| ArchiveError::pg("set the COPY session's settings", &e))?;
    let sql = format!(
        "COPY {} ({}) FROM STDIN",
        target.quoted(),
        column_list(m.data_columns())
    );
    let sink = tx
        .copy_in::<_, bytes::Bytes>(&sql)
        .await
        .map_err(|e| ArchiveError::pg(format!("start COPY into {target}"), &e))?;
    futures::pin_mut!(sink);
    let key = &m.data_key;
    let mut body = store.get(key, cancel).await?;
    let mut hasher = Sha256::new();
    let mut read = 0u64;
    let mut progress = Progress::new("restore", key, m.bytes);
    while let Some(chunk) = store.next_chunk(key, &mut body, cancel).await? {
        hasher.update(&chunk);
        read += chunk.len() as u64;
        sink.send(chunk)
            .await
            .map_err(|e| ArchiveError::pg(format!("load rows into {target}"), &e))?;
        progress.tick(read);
    }
    let found = hex(&hasher.finalize());
    if found != m.sha256 || read != m.bytes {
        return Err(ArchiveError::Mismatch {
            key: key.clone(),
            what: "the data read back",
            expected: format!("{} bytes, sha256 {}", m.bytes, m.sha256),
            found: format!("{read} bytes, sha256 {found}"),
        });
    }
    let rows = sink
        .finish()
        .await
        .map_err(|e| ArchiveError::pg(format!("finish COPY into {target}"), &e))?;
    if rows != m.rows {
        return Err(ArchiveError::Mismatch {
            key: key.clone(),
            what: "the rows loaded",
            expected: m.rows.to_string(),
            found: rows.to_string(),
        });
    }
    Ok(rows)
}
