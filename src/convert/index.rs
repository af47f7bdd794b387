//! The one place a conversion builds an index online, through the shared
//! builder [`create_index_concurrently`] of `partitions::indexes`: it observes
//! first (a valid index of that name is kept, an invalid leftover of an
//! interrupted build is dropped concurrently and rebuilt), retries lost lock
//! races with backoff, and drops its own invalid leftover on any failure.
//! This module adds what a conversion wants on top: a larger
//! `maintenance_work_mem` and progress logged from a second session.

use std::convert::Infallible;
use std::time::Instant;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::{sql, ConvertError};
use crate::config::indexes::IndexDef;
use crate::config::Cluster;
use crate::partitions::indexes::build::{progress, PROGRESS_EVERY};
use crate::partitions::indexes::{create_index_concurrently, Created, Log, Session};
use crate::pg::{quote_ident, QualifiedName};

/// `UNIQUE ... USING btree (columns)`: the index that gives a key the partition key.
pub fn unique_def(columns: &[String]) -> IndexDef {
    IndexDef {
        unique: true,
        tail: format!(
            "btree ({})",
            columns
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Builds `CREATE UNIQUE INDEX CONCURRENTLY index ON table (columns)`.
///
/// Locks: SHARE UPDATE EXCLUSIVE, which never blocks reads or writes; the
/// build waits up to `partitions.index_build_wait` for it and for older
/// transactions, then the session is back to `lock_timeout`.
pub async fn build_unique_concurrently(
    cfg: &Cluster,
    client: &Client,
    table: &QualifiedName,
    index: &str,
    columns: &[String],
    cancel: &CancellationToken,
) -> Result<(), ConvertError> {
    client
        .batch_execute(sql::RAISE_MAINTENANCE_WORK_MEM)
        .await
        .map_err(|e| ConvertError::query("raise maintenance_work_mem", e))?;
    let session = Session::new(client, &cfg.partitions).await;
    let def = unique_def(columns);
    let log = Log::default();
    // Cancelled (a signal), the build drops its invalid leftover and the
    // next run builds it again.
    let started = Instant::now();
    let built = tokio::select! {
        r = create_index_concurrently(&session, table, index, &def, cancel, &log) => r?,
        never = watch_progress(cfg, session.pid, index, started) => match never {},
    };
    match built {
        Created::Existing => tracing::info!(index, "unique index already built"),
        Created::Built => tracing::info!(
            index,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "unique index built"
        ),
    }
    Ok(())
}

/// Logs the build's phase and blocks done every [`PROGRESS_EVERY`] until the
/// build ends (the caller drops this future then); never returns.
async fn watch_progress(cfg: &Cluster, pid: i32, index: &str, started: Instant) -> Infallible {
    let watcher = match super::connect(cfg).await {
        Ok(w) if pid != 0 => w,
        _ => return std::future::pending().await,
    };
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        match progress(&watcher, &[pid]).await {
            Ok(rows) => {
                for p in rows {
                    tracing::info!(
                        index,
                        phase = %p.phase,
                        blocks_done = p.blocks_done,
                        blocks_total = p.blocks_total,
                        tuples_done = p.tuples_done,
                        tuples_total = p.tuples_total,
                        elapsed_s = started.elapsed().as_secs(),
                        "index build progress"
                    );
                }
            }
            Err(e) => tracing::debug!(error = %e, "progress not read"),
        }
    }
}

/// Live progress of any index build of session `pid`, for `convert status`.
pub async fn progress_of(client: &Client, pid: i32) -> Option<String> {
    match progress(client, &[pid]).await {
        Ok(rows) => rows.first().map(|p| {
            format!(
                "{}: {} of {} blocks",
                p.phase, p.blocks_done, p.blocks_total
            )
        }),
        Err(e) => {
            tracing::debug!(error = %e, "progress not read");
            None
        }
    }
}
