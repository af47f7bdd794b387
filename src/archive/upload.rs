//! COPY out → multipart upload, no temporary file.
//!
//! Memory is bounded whatever the partition's size: at most
//! `uploads_in_flight` parts are on their way and one is being filled, each
//! `part_size` bytes. When every slot is busy the COPY stream is not read, so
//! the server waits on its socket rather than this process buffering.
//! SHA-256 and the row count (text COPY ends every row with a newline; a
//! newline inside a value is escaped) are computed once per part, over the
//! part's buffer. Each part's MD5, for the ETag the store should report
//! (`etag`), is computed by the part's own task: parts are independent, so
//! it runs beside the reading of the next part rather than after it.
//!
//! The COPY stream is one CopyData message per row (millions of them), so
//! nothing is done per row but one copy into the part's buffer: the
//! deadline, the token and the progress clock are checked once per batch of
//! messages (what one read of the socket brought), and each full part is
//! uploaded by its own task while the next one is read.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use futures::{pin_mut, Stream};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::etag::{self, PartMd5};
use super::progress::Progress;
use super::{ArchiveError, Store};

/// What was uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
    /// The multipart ETag the store should report for these bytes; `None`
    /// when the store's part ETags were not the parts' MD5s (SSE-KMS, a
    /// store with opaque tags): then only reading back verifies.
    pub etag: Option<String>,
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
    // allocation grows past `part_size`. A part's buffer comes back from its
    // upload and is filled again: at most `in_flight + 1` buffers are ever
    // allocated, and freeing and reallocating 8 MiB per part on different
    // threads (the allocator keeps what another thread freed) does not
    // inflate the peak RSS.
    let mut buf = BytesMut::with_capacity(pace.part_size);
    let mut spare: Vec<BytesMut> = Vec::new();
    // The rest of a CopyData message that did not fit in the last part.
    let mut carry = Bytes::new();
    let mut next_part = 1i32;
    let mut etags: Vec<(i32, String)> = Vec::new();
    let mut md5s: Vec<(i32, PartMd5)> = Vec::new();
    // Whether every part's ETag was its MD5 (so the object's ETag will be
    // the multipart ETag of the MD5s).
    let mut md5_etags = true;
    // Each part is its own task: it is signed and sent while the next part
    // is read, on whichever core is free.
    let mut sending: JoinSet<Result<Sent, ArchiveError>> = JoinSet::new();
    let mut progress = Progress::new("archive upload", key, pace.estimate);
    let mut ended = false;
    while !ended {
        // One wait per batch of CopyData messages (what one read of the
        // socket brought), not per row: the deadline, the token and the
        // progress clock cost a few hundred ns each, times millions of rows.
        let filled = tokio::select! {
            f = tokio::time::timeout(stall, fill(stream.as_mut(), &mut carry, &mut buf, pace.part_size)) => {
                f.map_err(|_| stalled())?
                    .map_err(|e| ArchiveError::pg("stream the partition's rows (COPY)", &e))?
            }
            _ = cancel.cancelled() => return Err(ArchiveError::Cancelled),
        };
        ended = filled == Filled::End;
        progress.tick(bytes + buf.len() as u64);
        if buf.len() < pace.part_size && !(ended && (!buf.is_empty() || next_part == 1)) {
            continue;
        }
        // A full part, or the last one (which may be smaller than 5 MiB; an
        // empty object gets one empty part, which S3 accepts as the only
        // part). Hashed and counted whole: one pass over memory per part.
        hasher.update(&buf[..]);
        rows += count_rows(&buf);
        bytes += buf.len() as u64;
        let part = std::mem::take(&mut buf).freeze();
        let (st, k, id, token) = (
            store.clone(),
            key.to_string(),
            upload_id.to_string(),
            cancel.clone(),
        );
        let n = next_part;
        sending.spawn(async move {
            // ~15 ms for 8 MiB: short enough for a worker thread, and on
            // whichever core is not reading COPY data.
            let md5 = etag::part_md5(&part);
            let etag = st.upload_part(&k, &id, n, part.clone(), &token).await?;
            // The SDK's copies are gone once it answered (or not: a new
            // buffer is allocated then).
            Ok(Sent {
                n,
                etag,
                md5,
                buf: part.try_into_mut().ok(),
            })
        });
        next_part += 1;
        // A free slot before reading on: this is the memory bound. Each
        // part's request is bounded by the store's timeout and the token.
        while sending.len() >= pace.in_flight {
            if let Some(done) = sending.join_next().await {
                let sent = joined(store, key, done)?;
                md5_etags &= sent.etag_is_md5();
                spare.extend(sent.buf);
                etags.push((sent.n, sent.etag));
                md5s.push((sent.n, sent.md5));
            }
        }
        if !ended {
            buf = spare.pop().unwrap_or_default();
            buf.clear();
            buf.reserve(pace.part_size);
        }
    }
    drop(spare);
    while let Some(done) = sending.join_next().await {
        let sent = joined(store, key, done)?;
        md5_etags &= sent.etag_is_md5();
        etags.push((sent.n, sent.etag));
        md5s.push((sent.n, sent.md5));
    }
    etags.sort_by_key(|(n, _)| *n);
    md5s.sort_by_key(|(n, _)| *n);
    let md5s: Vec<PartMd5> = md5s.into_iter().map(|(_, m)| m).collect();
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
    if !md5_etags {
        tracing::info!(
            key,
            "the store's part ETags are not their MD5s (SSE-KMS?); the archive is verified by reading it back"
        );
    }
    Ok(Uploaded {
        rows,
        bytes,
        sha256: hex(&hasher.finalize()),
        etag: md5_etags.then(|| etag::multipart(&md5s)),
    })
}

/// Rows in a stretch of text COPY: every row ends with a newline, and a
/// newline inside a value is escaped (`\n`).
fn count_rows(data: &[u8]) -> u64 {
    data.iter().filter(|&&b| b == b'\n').count() as u64
}

/// A part upload's task, joined: a panic or abort is a failed upload.
fn joined(
    store: &Store,
    key: &str,
    r: Result<Result<Sent, ArchiveError>, tokio::task::JoinError>,
) -> Result<Sent, ArchiveError> {
    r.map_err(|e| {
        store.error(
            "upload a part of",
            key,
            format!("the part's task ended without an answer: {e}"),
            "the upload is aborted; the partition is kept and the next pass retries".into(),
        )
    })?
}

/// An uploaded part: its number, the store's ETag of it, its MD5 and its
/// buffer when no one else holds it any more.
struct Sent {
    n: i32,
    etag: String,
    md5: PartMd5,
    buf: Option<BytesMut>,
}

impl Sent {
    /// The store's ETag of the part is the MD5 of what was sent: the store
    /// computes content MD5s, so the object's ETag will prove its content.
    fn etag_is_md5(&self) -> bool {
        etag::normalize(&self.etag) == hex(&self.md5)
    }
}

/// Where one [`fill`] stopped.
#[derive(Debug, PartialEq, Eq)]
enum Filled {
    /// `buf` holds `part_size` bytes.
    Full,
    /// Some data was appended and no more is ready yet.
    Partly,
    /// The COPY stream ended.
    End,
}

/// Appends COPY data to `buf` (starting with `carry`, the rest of a message
/// that did not fit before) until it holds `part_size` bytes, the stream
/// ends, or nothing more is ready after at least one message. Pending only
/// while nothing at all has arrived.
async fn fill<S>(
    mut stream: Pin<&mut S>,
    carry: &mut Bytes,
    buf: &mut BytesMut,
    part_size: usize,
) -> Result<Filled, tokio_postgres::Error>
where
    S: Stream<Item = Result<Bytes, tokio_postgres::Error>>,
{
    let mut got = false;
    poll_fn(|cx| loop {
        if !carry.is_empty() {
            let take = carry.len().min(part_size - buf.len());
            buf.extend_from_slice(&carry[..take]);
            carry.advance(take);
            got = true;
        }
        if buf.len() >= part_size {
            return Poll::Ready(Ok(Filled::Full));
        }
        match stream.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => *carry = chunk,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
            Poll::Ready(None) => return Poll::Ready(Ok(Filled::End)),
            Poll::Pending if got => return Poll::Ready(Ok(Filled::Partly)),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}
