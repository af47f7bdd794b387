//! COPY out → multipart upload, no temporary file.
//!
//! Memory is bounded whatever the partition's size: at most
//! `uploads_in_flight` parts are on their way and one is being filled, each
//! `part_size` bytes. When every slot is busy the COPY stream is not read, so
//! the server waits on its socket rather than this process buffering.
//! SHA-256 and the row count (text COPY ends every row with a newline; a
//! newline inside a value is escaped) are computed as the bytes pass.

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{pin_mut, StreamExt};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::progress::Progress;
use super::{ArchiveError, Store};

/// What was uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// Pacing of one upload.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub part_size: usize,
    pub in_flight: usize,
    /// Expected bytes, for the ETA in the progress log (0: unknown).
    pub estimate: u64,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Streams `copy_sql` (a `COPY ... TO STDOUT`) run on `client` into the
/// multipart upload `upload_id` of `key`, then completes it. The caller
/// started the upload and recorded its id first (so a killed process's
/// parts can be freed). On any error the upload is aborted.
pub async fn stream_copy(
    store: &Store,
    client: &Client,
    copy_sql: &str,
    key: &str,
    upload_id: &str,
    pace: Pace,
    cancel: &CancellationToken,
) -> Result<Uploaded, ArchiveError> {
    let r = stream_inner(store, client, copy_sql, key, upload_id, pace, cancel).await;
    if r.is_err() {
        if let Err(e) = store.abort_multipart(key, upload_id).await {
            tracing::warn!(key, error = %e, "multipart upload not aborted; a bucket lifecycle rule frees its parts");
        }
    }
    r
}

async fn stream_inner(
    store: &Store,
    client: &Client,
    copy_sql: &str,
    key: &str,
    upload_id: &str,
    pace: Pace,
    cancel: &CancellationToken,
) -> Result<Uploaded, ArchiveError> {
    // A primary that stops answering (hung, partitioned away) must not hold
    // the pass: no COPY data for `stall` fails the upload (the partition
    // stays detached; the next pass uploads again). Not a bound on the whole
    // COPY, which takes as long as the partition is big.
    let stall = store.timeout();
    let stalled = || {
        ArchiveError::Pg {
        what: "stream the partition's rows (COPY)".into(),
        message: format!(
            "the primary sent no COPY data for {stall:?} (archive.request_timeout); is it hung or unreachable?"
        ),
    }
    };
    let stream = tokio::select! {
        s = tokio::time::timeout(stall, client.copy_out(copy_sql)) => match s {
            Ok(s) => s.map_err(|e| ArchiveError::pg("start COPY", &e))?,
            Err(_) => return Err(stalled()),
        },
        _ = cancel.cancelled() => return Err(ArchiveError::Cancelled),
    };
    pin_mut!(stream);
    let mut hasher = Sha256::new();
    let (mut rows, mut bytes) = (0u64, 0u64);
    // Exactly one part's capacity: a full part is moved out whole, so no
    // allocation outlives its part or grows past `part_size`.
    let mut buf: Vec<u8> = Vec::with_capacity(pace.part_size);
    let mut next_part = 1i32;
    let mut etags: Vec<(i32, String)> = Vec::new();
    let mut sending = FuturesUnordered::new();
    let mut progress = Progress::new("archive upload", key, pace.estimate);
    let send = |n: i32, body: Bytes| async move {
        store
            .upload_part(key, upload_id, n, body, cancel)
            .await
            .map(|etag| (n, etag))
    };
    loop {
        let chunk = tokio::select! {
            c = tokio::time::timeout(stall, stream.next()) => c.map_err(|_| stalled())?,
            _ = cancel.cancelled() => return Err(ArchiveError::Cancelled),
        };
        let Some(chunk) = chunk else { break };
        let chunk =
            chunk.map_err(|e| ArchiveError::pg("stream the partition's rows (COPY)", &e))?;
        hasher.update(&chunk);
        rows += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        bytes += chunk.len() as u64;
        let mut rest: &[u8] = &chunk;
        while !rest.is_empty() {
            let take = rest.len().min(pace.part_size - buf.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if buf.len() < pace.part_size {
                break;
            }
            let part = std::mem::replace(&mut buf, Vec::with_capacity(pace.part_size));
            sending.push(send(next_part, Bytes::from(part)));
            next_part += 1;
            // A free slot before reading on: this is the memory bound.
            while sending.len() >= pace.in_flight {
                if let Some(done) = sending.next().await {
                    etags.push(done?);
                }
            }
        }
        progress.tick(bytes);
    }
    // The last part may be smaller than 5 MiB; an empty object gets one
    // empty part, which S3 accepts as the only part.
    if !buf.is_empty() || next_part == 1 {
        sending.push(send(next_part, Bytes::from(std::mem::take(&mut buf))));
    }
    while let Some(done) = sending.next().await {
        etags.push(done?);
    }
    etags.sort_by_key(|(n, _)| *n);
    store
        .complete_multipart(key, upload_id, etags, bytes, cancel)
        .await?;
    let secs = progress.elapsed().as_secs_f64().max(1e-3);
    tracing::info!(
        key,
        rows,
        bytes,
        seconds = format!("{secs:.1}"),
        mib_per_s = format!("{:.1}", bytes as f64 / secs / (1 << 20) as f64),
        "archive uploaded"
    );
    Ok(Uploaded {
        rows,
        bytes,
        sha256: hex(&hasher.finalize()),
    })
}
