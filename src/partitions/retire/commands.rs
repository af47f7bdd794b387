//! `partitions archives` (what the bucket holds, with each retirement's
//! state) and `partitions restore` (an archive back into a table, verified).

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::record::{self, Retirement};
use super::sql;
use crate::archive::restore::{copy_into, standalone_table_sql};
use crate::archive::{keys, ArchiveError, Manifest, Store};
use crate::cli::OutputFormat;
use crate::config::Cluster;
use crate::outcome::Outcome;
use crate::partitions::{session, PartitionError};
use crate::pg::{quote_ident, quote_literal, server_message, Backoff, QualifiedName, Retry};

#[derive(Debug, Serialize)]
pub struct ArchiveListing {
    pub table: String,
    pub partition: String,
    pub key: String,
    pub from: String,
    pub to: String,
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    /// The retirement's state; `archived` for a manifest no retirement row
    /// of this database knows (made elsewhere, or the row was deleted).
    pub state: String,
    pub created_at: Option<String>,
    pub last_error: Option<String>,
}

fn store_of(cfg: &Cluster) -> Result<&crate::config::ArchiveConfig, PartitionError> {
    cfg.archive.as_ref().ok_or(PartitionError::NoArchive)
}

/// Ctrl-C cancels the command's waits.
fn ctrl_c_token() -> CancellationToken {
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    cancel
}

/// `partitions archives [--table T]`.
pub async fn archives_command(
    cfg: &Cluster,
    table: Option<&QualifiedName>,
    output: OutputFormat,
) -> Result<Outcome, PartitionError> {
    let acfg = store_of(cfg)?;
    let cancel = ctrl_c_token();
    let store = Store::new(acfg).await;
    let prefix = match table {
        Some(t) => keys::table_prefix(&store.prefix, t),
        None => store.prefix.clone(),
    };
    let keys_found = store.list(&prefix, &cancel).await?;
    let client = session::connect(cfg).await?;
    let rows: Vec<Retirement> = record::all(&client)
        .await
        .map_err(|e| PartitionError::Query {
            what: "read the retirements",
            message: e.to_string(),
        })?
        .into_iter()
        .filter(|r| table.map_or(true, |t| &r.table == t))
        .collect();
    let mut out = Vec::new();
    for mkey in keys_found
        .iter()
        .filter(|k| k.ends_with(keys::MANIFEST_SUFFIX))
    {
        let m = Manifest::parse(mkey, &store.get_small(mkey, &cancel).await?)?;
        // The newest retirement of that object decides its state.
        let r = rows.iter().rev().find(|r| r.key == m.data_key);
        out.push(ArchiveListing {
            table: m.table.clone(),
            partition: m.partition.clone(),
            key: m.data_key.clone(),
            from: m.from.clone(),
            to: m.to.clone(),
            rows: Some(m.rows),
            bytes: Some(m.bytes),
            sha256: Some(m.sha256.clone()),
            state: r.map_or("archived".into(), |r| r.state.as_str().into()),
            created_at: Some(m.created_at.to_rfc3339()),
            last_error: r.and_then(|r| r.last_error.clone()),
        });
    }
    // Retirements whose manifest is not written yet.
    let listed: Vec<String> = out.iter().map(|o| o.key.clone()).collect();
    for r in rows.iter().filter(|r| !listed.contains(&r.key)) {
        out.push(ArchiveListing {
            table: r.table.to_string(),
            partition: r.partition.to_string(),
            key: r.key.clone(),
            from: r.from.clone(),
            to: r.to.clone(),
            rows: None,
            bytes: None,
            sha256: None,
            state: r.state.as_str().into(),
            created_at: None,
            last_error: r.last_error.clone(),
        });
    }
    let outcome = if rows.iter().any(|r| r.stuck()) {
        Outcome::Problem
    } else {
        Outcome::Healthy
    };
    match output {
        OutputFormat::Json => crate::output::print_json(&out),
        OutputFormat::Text => {
            let lines: Vec<Vec<String>> = out
                .iter()
                .map(|a| {
                    vec![
                        a.table.clone(),
                        a.partition.clone(),
                        format!("{} .. {}", a.from, a.to),
                        a.rows.map_or("-".into(), |n| n.to_string()),
                        a.bytes
                            .map_or("-".into(), |n| crate::config::ByteSize(n).to_string()),
                        a.state.clone(),
                        a.key.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                crate::output::table(
                    &[
                        "TABLE",
                        "PARTITION",
                        "RANGE",
                        "ROWS",
                        "BYTES",
                        "STATE",
                        "KEY"
                    ],
                    &lines
                )
            );
        }
    }
    Ok(outcome)
}

/// Unfinished retirements for `partitions status` (none when unreadable:
/// logged; the rest of `status` still reports).
pub async fn in_flight(client: &tokio_postgres::Client) -> Vec<Retirement> {
    match record::all(client).await {
        Ok(all) => all
            .into_iter()
            .filter(|r| r.state != super::state::State::Dropped)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "retirements not read");
            Vec::new()
        }
    }
}

/// The retirements section of `partitions status`: one line each, and a
/// PROBLEM line for every one stuck for more than a day.
pub fn status_text(open: &[Retirement]) -> String {
    if open.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = open
        .iter()
        .map(|r| {
            vec![
                r.partition.to_string(),
                r.state.as_str().to_string(),
                format!("{:.0}m", r.idle_s / 60.0),
                r.attempts.to_string(),
                r.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut s = format!(
        "\nretirements in flight (retention_mode = \"archive\"):\n{}",
        crate::output::table(
            &["PARTITION", "STATE", "SINCE", "FAILURES", "LAST ERROR"],
            &rows
        )
    );
    for r in open.iter().filter(|r| r.stuck()) {
        s.push_str(&format!(
            "PROBLEM {}: retirement stuck at {} for {:.1} h; see LAST ERROR, `pgsteward partitions apply` retries\n",
            r.partition,
            r.state.as_str(),
            r.idle_s / 3600.0
        ));
    }
    s
}

fn bound_sql(text: &str, key_type: &str) -> String {
    match text {
        "MINVALUE" | "MAXVALUE" => text.to_string(),
        t => format!("{}::{key_type}", quote_literal(t)),
    }
}

/// `partitions restore --table T --from KEY [--into S.T] [--attach]`.
pub async fn restore_command(
    cfg: &Cluster,
    table: &QualifiedName,
    from: &str,
    into: Option<&QualifiedName>,
    attach: bool,
) -> Result<Outcome, PartitionError> {
    let acfg = store_of(cfg)?;
    let cancel = ctrl_c_token();
    let store = Store::new(acfg).await;
    let data_key = keys::data_key_of(from);
    let mkey = keys::manifest_key(&data_key);
    let m = Manifest::parse(&mkey, &store.get_small(&mkey, &cancel).await?)?;
    if m.table != table.to_string() {
        return Err(ArchiveError::Refused(format!(
            "{data_key} is an archive of {}, not of {table}",
            m.table
        ))
        .into());
    }
    let original: QualifiedName =
        m.partition
            .parse()
            .map_err(|e: crate::pg::NameError| ArchiveError::Manifest {
                key: mkey.clone(),
                message: e.to_string(),
            })?;
    let target = into.cloned().unwrap_or(original);
    let mut client = session::connect(cfg).await?;
    let taken: bool = client
        .query_one(sql::TAKEN, &[&target.quoted()])
        .await
        .map_err(|e| PartitionError::query("look the target table up", e))?
        .get(0);
    if taken {
        return Err(ArchiveError::Refused(format!(
            "{target} exists; restore never overwrites: pass --into SCHEMA.TABLE with a new name, or drop {target} first"
        ))
        .into());
    }
    let tx = client
        .transaction()
        .await
        .map_err(|e| PartitionError::query("begin the restore", e))?;
    tx.batch_execute(&standalone_table_sql(&target, &m))
        .await
        .map_err(|e| PartitionError::query("create the restore's table", e))?;
    let rows = copy_into(&store, &tx, &m, &target, &cancel).await?;
    // Loaded UNLOGGED, then made logged in the same transaction: the rows
    // reach the WAL only through the table rewrite, which logical decoding
    // skips (a rewrite's transient heap). No publication and no CDC
    // consumer sees them as INSERTs: a subscriber that kept the partition
    // through the retirement (DDL is not replicated) gets no second copy,
    // one of a FOR ALL TABLES publication without such a table does not
    // stop, and a test_decoding consumer counts nothing twice. Standbys
    // receive the rewrite like any logged write.
    tx.batch_execute(&format!("ALTER TABLE {} SET LOGGED", target.quoted()))
        .await
        .map_err(|e| PartitionError::query("make the restored table logged", e))?;
    tx.commit()
        .await
        .map_err(|e| PartitionError::query("commit the restore", e))?;
    println!(
        "restored {rows} rows of {} ({} .. {}) into {target}: row count and SHA-256 {} verified",
        m.partition, m.from, m.to, m.sha256
    );
    if attach {
        attach_restored(&client, cfg, table, &target, &m, &cancel).await?;
        println!("attached {target} to {table} FOR VALUES FROM ({}) TO ({}); if that range is past retention, the next pass archives and drops it again unless retention is raised", m.from, m.to);
    }
    Ok(Outcome::Healthy)
}

/// Attaches the restored table: the parent's owner, a CHECK matching the
/// bounds (so ATTACH need not scan), then ATTACH under `lock_timeout` with
/// the pass's retries.
async fn attach_restored(
    client: &tokio_postgres::Client,
    cfg: &Cluster,
    parent: &QualifiedName,
    target: &QualifiedName,
    m: &Manifest,
    cancel: &CancellationToken,
) -> Result<(), PartitionError> {
    let col = quote_ident(&m.key_column);
    let (lo, hi) = (
        bound_sql(&m.from, &m.key_type),
        bound_sql(&m.to, &m.key_type),
    );
    let mut conds = Vec::new();
    if lo != "MINVALUE" {
        conds.push(format!("{col} >= {lo}"));
    }
    if hi != "MAXVALUE" {
        conds.push(format!("{col} < {hi}"));
    }
    conds.push(format!("{col} IS NOT NULL"));
    let owner: String = client
        .query_one(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = to_regclass($1)",
            &[&parent.quoted()],
        )
        .await
        .map_err(|e| PartitionError::query("read the parent's owner", e))?
        .get(0);
    let prepare = format!(
        "ALTER TABLE {t} OWNER TO {o}; ALTER TABLE {t} ADD CONSTRAINT pgsteward_restored_bounds CHECK ({c})",
        t = target.quoted(),
        o = quote_ident(&owner),
        c = conds.join(" AND ")
    );
    client
        .batch_execute(&prepare)
        .await
        .map_err(|e| PartitionError::query("prepare the restored table for ATTACH", e))?;
    let attach = format!(
        "ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({lo}) TO ({hi})",
        parent.quoted(),
        target.quoted()
    );
    let mut retry = Retry::new(cfg.partitions.lock_retries, Backoff::LOCK, cancel);
    let cancelled = |_| {
        ArchiveError::Refused(format!(
            "the rows are restored into {target}, but attaching it to {parent} was cancelled; attach it by hand (ALTER TABLE ... ATTACH PARTITION)"
        ))
    };
    loop {
        retry.begin().map_err(cancelled)?;
        let Err(e) = client.batch_execute(&attach).await else {
            break;
        };
        let transient = crate::pg::is_transient_lock_error(&e);
        if !retry
            .again(transient, &server_message(&e))
            .await
            .map_err(cancelled)?
        {
            return Err(ArchiveError::Refused(format!(
                "the rows are restored into {target}, but it cannot be attached to {parent}: {}; attach it by hand (ALTER TABLE ... ATTACH PARTITION) once that is fixed",
                server_message(&e)
            ))
            .into());
        }
    }
    let drop_check = format!(
        "ALTER TABLE {} DROP CONSTRAINT pgsteward_restored_bounds",
        target.quoted()
    );
    if let Err(e) = client.batch_execute(&drop_check).await {
        tracing::warn!(error = %server_message(&e), "the restored partition keeps its redundant bounds CHECK");
    }
    Ok(())
}
