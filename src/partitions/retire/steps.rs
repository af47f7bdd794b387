//! The effects of each retirement step: observe, act, record. DDL runs
//! through the pass's session (`Exec::run`: lock_timeout, retries,
//! cancellation); rows are streamed on a session of their own.

use chrono::Utc;
use tokio_postgres::Client;

use super::record::Retirement;
use super::sql;
use super::state::{bound_text, Facts, State};
use crate::archive::manifest::{Manifest, MANIFEST_VERSION};
use crate::archive::upload::{Pace, Uploaded};
use crate::archive::verify::{By, Expected};
use crate::archive::{self, keys, ArchiveError, Store, COPY_SETTINGS};
use crate::heap::boxed;
use crate::partitions::ddl::{sql_detach, sql_drop_table};
use crate::partitions::exec::{Exec, StepError};
use crate::partitions::model::{DetachHow, Range, TableState};
use crate::partitions::period::key_text;
use crate::partitions::report::TableReport;
use crate::partitions::session;
use crate::pg::{server_message, QualifiedName};

/// Longest wait for the DROP's lock on a retired partition (see `drop`).
const DROP_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The trigger that makes a retiring partition read-only.
const BARRIER: &str = "pgsteward_retiring";

fn pg(what: &str) -> impl FnOnce(tokio_postgres::Error) -> StepError + '_ {
    move |e| StepError::Refused(format!("cannot {what}: {}", server_message(&e)))
}

fn archive_err(partition: &QualifiedName, e: ArchiveError) -> StepError {
    match e {
        ArchiveError::Cancelled => StepError::Cancelled,
        e => StepError::Refused(format!("{partition} not archived: {e}")),
    }
}

/// `Some(reason)` while an upgrade's cutover holds partition DDL (the DDL gate).
pub(super) async fn gate(ex: &Exec<'_>) -> Result<Option<String>, StepError> {
    crate::partitions::gate_of(ex.gate)
        .await
        .map_err(|e| StepError::Refused(format!("cannot run partition DDL: {e}")))
}

pub(super) async fn facts(ex: &Exec<'_>, partition: &QualifiedName) -> Result<Facts, StepError> {
    let row = ex
        .client
        .query_one(sql::FACTS, &[&partition.quoted()])
        .await
        .map_err(pg("look the partition up"))?;
    Ok(Facts {
        exists: row.get(0),
        attached: row.get(1),
        detach_pending: row.get(2),
    })
}

pub(super) async fn total_size(ex: &Exec<'_>, t: &QualifiedName) -> Result<u64, StepError> {
    let row = ex
        .client
        .query_one(sql::TOTAL_SIZE, &[&t.quoted()])
        .await
        .map_err(pg("read the partition's size"))?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

/// Records the intent to retire `partition` (`detaching`), before any DDL.
pub(super) async fn insert_intent(
    ex: &Exec<'_>,
    table: &TableState,
    partition: &QualifiedName,
    range: Range,
) -> Result<Retirement, StepError> {
    let prefix = ex
        .cfg
        .archive
        .as_ref()
        .map_or("", |a| a.url.prefix.as_str());
    let kt = table.key_type;
    let key = keys::data_key(
        prefix,
        &table.table,
        &bound_text(kt, range.lo),
        &bound_text(kt, range.hi),
    );
    let (from, to) = (
        key_text(kt, chrono_tz::UTC, range.lo),
        key_text(kt, chrono_tz::UTC, range.hi),
    );
    let row = ex
        .client
        .query_one(
            sql::INSERT_DETACHING,
            &[
                &table.table.schema,
                &table.table.name,
                &partition.schema,
                &partition.name,
                &from,
                &to,
                &key,
            ],
        )
        .await
        .map_err(pg("record the retirement"))?;
    tracing::info!(partition = %partition, key, "retirement to object storage begins");
    Ok(Retirement {
        id: row.get(0),
        table: table.table.clone(),
        partition: partition.clone(),
        from,
        to,
        key,
        state: State::Detaching,
        upload_id: None,
        rows: None,
        bytes: None,
        sha256: None,
        etag: None,
        attempts: 0,
        last_error: None,
        age_s: 0.0,
        idle_s: 0.0,
    })
}

/// The write barrier and the `detached` record: one transaction with the
/// plain DETACH, or right after a concurrent one.
fn barrier_and_record(r: &Retirement) -> String {
    let p = r.partition.quoted();
    // NO FORCE ROW LEVEL SECURITY: the owner (whose membership the steward
    // reads through) must see every row, or COPY and count(*) would agree on
    // a filtered subset and the rest be dropped unarchived. Only the owner is
    // affected, and the table is read-only from here on.
    format!(
        "ALTER TABLE {p} NO FORCE ROW LEVEL SECURITY; \
         DROP TRIGGER IF EXISTS {BARRIER} ON {p}; \
         CREATE TRIGGER {BARRIER} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {p} \
         FOR EACH STATEMENT EXECUTE FUNCTION pgsteward.refuse_write_to_retiring(); \
         UPDATE pgsteward.retirements SET state = 'detached', updated_at = now() \
         WHERE id = {} AND state = 'detaching'",
        r.id
    )
}

pub(super) async fn record_detached(
    ex: &Exec<'_>,
    r: &mut Retirement,
    report: &mut TableReport,
) -> Result<(), StepError> {
    ex.run(&barrier_and_record(r), report).await?;
    r.state = State::Detached;
    Ok(())
}

/// Detaches as the plan said, or (resuming) as the table allows now.
pub(super) async fn detach(
    ex: &Exec<'_>,
    r: &mut Retirement,
    how: Option<DetachHow>,
    report: &mut TableReport,
) -> Result<(), StepError> {
    let how = match how {
        Some(h) => h,
        None => {
            let row = ex
                .client
                .query_one(sql::DETACH_FACTS, &[&r.table.quoted()])
                .await
                .map_err(pg("read how the parent detaches"))?;
            let (has_default, version): (bool, i32) = (row.get(0), row.get(1));
            if has_default || version < 140_000 {
                DetachHow::Plain
            } else {
                DetachHow::Concurrently
            }
        }
    };
    match how {
        DetachHow::Finalize => finalize(ex, r, report).await,
        DetachHow::Plain => {
            let batch = format!(
                "{}; {}",
                sql_detach(&r.table, &r.partition, DetachHow::Plain),
                barrier_and_record(r)
            );
            ex.run(&batch, report).await?;
            r.state = State::Detached;
            Ok(())
        }
        DetachHow::Concurrently => {
            let sql = sql_detach(&r.table, &r.partition, DetachHow::Concurrently);
            if let Err(e) = ex.run(&sql, report).await {
                // Interrupted after its first transaction: only FINALIZE completes it.
                if matches!(e, StepError::Cancelled)
                    || !facts(ex, &r.partition).await?.detach_pending
                {
                    return Err(e);
                }
                return finalize(ex, r, report).await;
            }
            record_detached(ex, r, report).await
        }
    }
}

pub(super) async fn finalize(
    ex: &Exec<'_>,
    r: &mut Retirement,
    report: &mut TableReport,
) -> Result<(), StepError> {
    ex.run(
        &sql_detach(&r.table, &r.partition, DetachHow::Finalize),
        report,
    )
    .await?;
    record_detached(ex, r, report).await
}

/// COPY out of the detached partition into `key`, then the manifest, then
/// `uploaded`. The upload's id is recorded first, so a process killed under
/// it has its parts freed by the next attempt.
pub(super) async fn upload(
    ex: &Exec<'_>,
    store: &Store,
    r: &mut Retirement,
) -> Result<Uploaded, StepError> {
    let p = r.partition.clone();
    if let Some(old) = r.upload_id.take() {
        if let Err(e) = boxed(|| store.abort_multipart(&r.key, &old)).await {
            tracing::warn!(key = %r.key, error = %e, "an earlier multipart upload was not aborted; a bucket lifecycle rule frees its parts");
        }
    }
    let copy: Client = session::connect(ex.cfg)
        .await
        .map_err(|e| StepError::Refused(format!("cannot open a COPY session: {e}")))?;
    archive::prepare_session(&copy)
        .await
        .map_err(|e| archive_err(&p, e))?;
    // One snapshot for the columns, the version and every row.
    copy.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(pg("begin the COPY transaction"))?;
    let columns = archive::columns(&copy, &p)
        .await
        .map_err(|e| archive_err(&p, e))?;
    let version: String = copy
        .query_one(sql::SERVER_VERSION, &[])
        .await
        .map_err(pg("read the server version"))?
        .get(0);
    let estimate = total_size(ex, &p).await?;
    let Some(acfg) = &ex.cfg.archive else {
        return Err(StepError::Refused("no [archive] section".into()));
    };
    // The archive's calls on the heap (crate::heap): AWS SDK futures are
    // tens of KiB each in a debug build.
    let upload_id = boxed(|| store.begin_multipart(&r.key, ex.cancel))
        .await
        .map_err(|e| archive_err(&p, e))?;
    ex.client
        .execute(sql::SET_UPLOAD_ID, &[&r.id, &upload_id])
        .await
        .map_err(pg("record the upload id"))?;
    r.upload_id = Some(upload_id.clone());
    super::failpoint("retire-upload-begun")?;
    let pace = Pace {
        part_size: acfg.part_size.0 as usize,
        in_flight: acfg.uploads_in_flight.max(1) as usize,
        estimate,
    };
    let sql = archive::copy_out_sql(&p, &columns);
    let up = boxed(|| {
        archive::upload::stream_copy(store, &copy, &sql, &r.key, &upload_id, pace, ex.cancel)
    })
    .await
    .map_err(|e| archive_err(&p, e))?;
    copy.batch_execute("COMMIT")
        .await
        .map_err(pg("end the COPY transaction"))?;
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        table: r.table.to_string(),
        partition: p.to_string(),
        from: r.from.clone(),
        to: r.to.clone(),
        key_column: String::new(),
        key_type: String::new(),
        columns,
        rows: up.rows,
        bytes: up.bytes,
        sha256: up.sha256.clone(),
        format: "text".into(),
        copy_settings: COPY_SETTINGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        data_key: r.key.clone(),
        postgresql_version: version,
        pgsteward_version: env!("CARGO_PKG_VERSION").into(),
        created_at: Utc::now(),
    };
    let manifest = with_key_of(ex, r, manifest).await?;
    let manifest_key = keys::manifest_key(&r.key);
    boxed(|| store.put(&manifest_key, manifest.to_json().into(), ex.cancel))
        .await
        .map_err(|e| archive_err(&p, e))?;
    let (rows, bytes) = (up.rows as i64, up.bytes as i64);
    ex.client
        .execute(
            sql::RECORD_UPLOADED,
            &[&r.id, &rows, &bytes, &up.sha256, &up.etag],
        )
        .await
        .map_err(pg("record the upload"))?;
    r.state = State::Uploaded;
    r.rows = Some(rows);
    r.bytes = Some(bytes);
    r.sha256 = Some(up.sha256.clone());
    r.etag = up.etag.clone();
    r.upload_id = None;
    Ok(up)
}

/// The parent's partition key (column and type) in the manifest, for
/// `restore --attach` without the database that made the archive.
async fn with_key_of(
    ex: &Exec<'_>,
    r: &Retirement,
    mut m: Manifest,
) -> Result<Manifest, StepError> {
    const KEY_OF: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
         FROM pg_partitioned_table p JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] \
         WHERE p.partrelid = to_regclass($1)";
    if let Some(row) = ex
        .client
        .query_opt(KEY_OF, &[&r.table.quoted()])
        .await
        .map_err(pg("read the partition key"))?
    {
        m.key_column = row.get(0);
        m.key_type = row.get(1);
    }
    Ok(m)
}

/// Compare the object with what its upload recorded (the store's ETag, or
/// read back: `archive.verify`); count the partition's rows. A mismatch
/// sends the retirement back to `detached` (archived again next pass).
pub(super) async fn verify(
    ex: &Exec<'_>,
    store: &Store,
    r: &mut Retirement,
) -> Result<(), StepError> {
    let p = r.partition.clone();
    let (Some(bytes), Some(sha), Some(rows)) = (r.bytes, r.sha256.clone(), r.rows) else {
        return redo(ex, r, "the upload's figures are not recorded".into()).await;
    };
    let want = Expected {
        bytes: bytes as u64,
        sha256: &sha,
        etag: r.etag.as_deref(),
    };
    let mode = ex
        .cfg
        .archive
        .as_ref()
        .map(|a| a.verify)
        .unwrap_or_default();
    let done = match boxed(|| archive::verify::verify(store, &r.key, want, mode, ex.cancel)).await {
        Ok(v) => v,
        Err(e @ (ArchiveError::Mismatch { .. } | ArchiveError::Manifest { .. })) => {
            return redo(ex, r, e.to_string()).await;
        }
        Err(e) => return Err(archive_err(&p, e)),
    };
    let count = count_rows(ex, &p).await?;
    if count != rows || done.manifest.rows != rows as u64 {
        return redo(
            ex,
            r,
            format!(
                "{p} has {count} rows, its archive {} (manifest {})",
                rows, done.manifest.rows
            ),
        )
        .await;
    }
    ex.client
        .execute(sql::RECORD_VERIFIED, &[&r.id])
        .await
        .map_err(pg("record the verification"))?;
    r.state = State::Verified;
    let (by, why) = match &done.by {
        By::ETag => (done.by.as_str(), ""),
        By::ReadBack(why) => (done.by.as_str(), *why),
    };
    tracing::info!(
        partition = %p,
        key = %r.key,
        rows,
        bytes,
        by,
        read_back_because = why,
        seconds = format!("{:.1}", done.seconds),
        "archive verified"
    );
    Ok(())
}

/// `count(*)` with `row_security = off`: a policy that would hide rows is an
/// error, never a smaller count.
async fn count_rows(ex: &Exec<'_>, p: &QualifiedName) -> Result<i64, StepError> {
    let sql = format!(
        "BEGIN; SET LOCAL row_security = off; SELECT count(*) FROM {}; COMMIT",
        p.quoted()
    );
    let msgs = match ex.client.simple_query(&sql).await {
        Ok(m) => m,
        Err(e) => {
            let _ = ex.client.batch_execute("ROLLBACK").await;
            return Err(pg("count the partition's rows")(e));
        }
    };
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .ok_or_else(|| StepError::Refused(format!("cannot count the rows of {p}")))
}

async fn redo(ex: &Exec<'_>, r: &mut Retirement, why: String) -> Result<(), StepError> {
    ex.client
        .execute(sql::RECORD_REDO_UPLOAD, &[&r.id, &why])
        .await
        .map_err(pg("record the failed verification"))?;
    r.state = State::Detached;
    Err(StepError::Refused(format!(
        "{} archive did not verify ({why}); it is archived again next pass",
        r.partition
    )))
}

/// DROP under ACCESS EXCLUSIVE after checking, in the same transaction, that
/// the retirement's row says `verified` (locked, so nothing moves it back
/// meanwhile) and the row count is the archive's; `dropped` is recorded
/// there too. The in-memory state brought us here; the record decides.
pub(super) async fn drop(
    ex: &Exec<'_>,
    r: &mut Retirement,
    report: &mut TableReport,
) -> Result<(), StepError> {
    let Some(rows) = r.rows else {
        return Err(StepError::Refused(format!(
            "{}: no row count recorded; not dropped",
            r.partition
        )));
    };
    let p = r.partition.quoted();
    // The partition is detached and read-only: no client statement queues
    // behind this lock, so it may wait longer than lock_timeout. It must:
    // autovacuum, which a freshly detached table attracts, yields a lock only
    // after deadlock_timeout (1 s by default), and a 200 ms lock_timeout
    // would give up before every time.
    let wait = ex
        .cfg
        .partitions
        .lock_timeout
        .0
        .max(DROP_LOCK_WAIT)
        .as_millis();
    let mut n = 0;
    let tag = loop {
        let t = format!("$pgsteward{n}$");
        if !p.contains(&t) {
            break t;
        }
        n += 1;
    };
    let batch = format!(
        "SET LOCAL row_security = off; SET LOCAL lock_timeout = '{wait}ms'; \
         LOCK TABLE {p} IN ACCESS EXCLUSIVE MODE; \
         DO {tag} BEGIN \
           IF NOT EXISTS (SELECT 1 FROM pgsteward.retirements WHERE id = {id} AND state = 'verified' FOR UPDATE) THEN \
             RAISE EXCEPTION 'its retirement is no longer recorded as verified; not dropped'; \
           END IF; \
           IF (SELECT count(*) FROM {p}) <> {rows} THEN \
             RAISE EXCEPTION 'rows changed since the archive was verified (archive: {rows} rows); not dropped'; \
           END IF; END {tag}; \
         {}; \
         UPDATE pgsteward.retirements SET state = 'dropped', last_error = NULL, updated_at = now() \
         WHERE id = {id} AND state = 'verified'",
        sql_drop_table(&r.partition),
        id = r.id
    );
    ex.run(&batch, report).await?;
    r.state = State::Dropped;
    Ok(())
}

pub(super) async fn record_dropped_outside(
    ex: &Exec<'_>,
    r: &mut Retirement,
) -> Result<(), StepError> {
    let note = "dropped outside pgsteward after its archive verified".to_string();
    ex.client
        .execute(sql::RECORD_DROPPED, &[&r.id, &note])
        .await
        .map_err(pg("record the drop"))?;
    r.state = State::Dropped;
    Ok(())
}

/// Best effort: the error stays with the retirement for `status`.
pub(super) async fn record_error(ex: &Exec<'_>, id: i64, error: &str) {
    if let Err(e) = ex.client.execute(sql::RECORD_ERROR, &[&id, &error]).await {
        tracing::warn!(error = %server_message(&e), "retirement error not recorded");
    }
}
