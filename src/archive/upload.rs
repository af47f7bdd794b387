//! COPY out → multipart upload, no temporary file.
//!
//! Memory is bounded whatever the partition's size: at most
//! `uploads_in_flight` parts are on their way and one is being filled, each
//! `part_size` bytes. When every slot is busy the COPY stream is not read, so
//! the server waits on its socket rather than this process buffering.
//!
//! The task that reads COPY does nothing but copy each CopyData message into
//! the part's buffer: it is the critical path (the server sends as fast as
//! it is read). Everything computed over the bytes runs in the part's own
//! task, on a blocking thread, beside the reading of the next part: the row
//! count (text COPY ends every row with a newline; a newline inside a value
//! is escaped), the part's MD5 (for the ETag the store should report,
//! `etag`), and the archive's SHA-256. SHA-256 is one sequential state over
//! every part in order, so it is handed from each part's task to the next
//! (`HashChain`): part n hashes once part n−1 has, whatever order the
//! uploads finish in.
//!
//! The deadline, the token and the progress clock are checked once per batch
//! of messages (what one read of the socket brought), not per row.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use futures::{pin_mut, Stream};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::digest::hex;
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
    let mut chain = HashChain::new();
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
        // part).
        bytes += buf.len() as u64;
        let part = std::mem::take(&mut buf).freeze();
        let (st, k, id, token) = (
            store.clone(),
            key.to_string(),
            upload_id.to_string(),
            cancel.clone(),
        );
        let n = next_part;
        let sha = chain.link();
        sending.spawn(async move {
            let (measured, hashed, etag) = tokio::join!(
                measure_part(&st, &k, part.clone()),
                chain_part(&st, &k, part.clone(), sha),
                st.upload_part(&k, &id, n, part.clone(), &token)
            );
            let (rows, md5) = measured?;
            hashed?;
            // The SDK's copies are gone once it answered (or not: a new
            // buffer is allocated then).
            Ok(Sent {
                n,
                etag: etag?,
                md5,
                rows,
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
                rows += sent.rows;
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
        rows += sent.rows;
        etags.push((sent.n, sent.etag));
        md5s.push((sent.n, sent.md5));
    }
    etags.sort_by_key(|(n, _)| *n);
    md5s.sort_by_key(|(n, _)| *n);
    let md5s: Vec<PartMd5> = md5s.into_iter().map(|(_, m)| m).collect();
    // Every part's task hashed its part (each joined above), so the chain's
    // last link holds the SHA-256 of all of them, in order.
    let sha256 = chain.finish(store, key).await?;
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
        sha256,
        etag: md5_etags.then(|| etag::multipart(&md5s)),
    })
}

/// Rows in a stretch of text COPY: every row ends with a newline, and a
/// newline inside a value is escaped (`\n`). Counted in runs of 255 bytes
/// into a byte counter, which the compiler turns into vector compares: six
/// times faster than counting into a `usize` byte by byte.
fn count_rows(data: &[u8]) -> u64 {
    data.chunks(255)
        .map(|run| {
            run.iter()
                .fold(0u8, |n, &b| n.wrapping_add(u8::from(b == b'\n')))
        })
        .map(u64::from)
        .sum()
}

/// The archive's SHA-256, handed from each part's task to the next so that
/// the parts are hashed in order while they are uploaded in any order.
struct HashChain {
    /// Where the next part's task receives the state from.
    tail: oneshot::Receiver<Sha256>,
}

/// A part's place in the chain: the state after the previous part, and
/// where to hand it on once this part is hashed.
struct ChainLink {
    previous: oneshot::Receiver<Sha256>,
    next: oneshot::Sender<Sha256>,
}

impl HashChain {
    fn new() -> Self {
        let (start, tail) = oneshot::channel();
        // The receiver is alive: it is `tail`.
        let _ = start.send(Sha256::new());
        Self { tail }
    }

    fn link(&mut self) -> ChainLink {
        let (next, tail) = oneshot::channel();
        ChainLink {
            previous: std::mem::replace(&mut self.tail, tail),
            next,
        }
    }

    async fn finish(self, store: &Store, key: &str) -> Result<String, ArchiveError> {
        let state = self
            .tail
            .await
            .map_err(|_| hash_failed(store, key, BROKEN_CHAIN))?;
        Ok(hex(&state.finalize()))
    }
}

const BROKEN_CHAIN: &str = "a part's task ended before it hashed its part";

fn hash_failed(store: &Store, key: &str, why: impl std::fmt::Display) -> ArchiveError {
    store.error(
        "hash a part of",
        key,
        why.to_string(),
        "the upload is aborted; the partition is kept and the next pass retries".into(),
    )
}

/// The part's rows and MD5, on a blocking thread: the runtime's workers
/// stay free for the COPY stream and the uploads.
async fn measure_part(
    store: &Store,
    key: &str,
    part: Bytes,
) -> Result<(u64, PartMd5), ArchiveError> {
    tokio::task::spawn_blocking(move || (count_rows(&part), etag::part_md5(&part)))
        .await
        .map_err(|e| hash_failed(store, key, e))
}

/// Adds the part to the archive's SHA-256 once the previous part has been
/// (on a blocking thread), then hands the state on.
async fn chain_part(
    store: &Store,
    key: &str,
    part: Bytes,
    link: ChainLink,
) -> Result<(), ArchiveError> {
    let mut state = link
        .previous
        .await
        .map_err(|_| hash_failed(store, key, BROKEN_CHAIN))?;
    let hashed = tokio::task::spawn_blocking(move || {
        state.update(&part);
        state
    })
    .await
    .map_err(|e| hash_failed(store, key, e))?;
    // The next part's task is gone only when the upload failed already.
    let _ = link.next.send(hashed);
    Ok(())
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

/// An uploaded part: its number, the store's ETag of it, its MD5, its rows
/// and its buffer when no one else holds it any more.
struct Sent {
    n: i32,
    etag: String,
    md5: PartMd5,
    rows: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_rows_counts_every_newline_across_run_boundaries() {
        // Lengths around the 255-byte runs, and runs of only newlines (a
        // byte counter must not overflow: at most 255 per run).
        for len in [0usize, 1, 254, 255, 256, 510, 511, 4096, 70_000] {
            let all: Vec<u8> = vec![b'\n'; len];
            assert_eq!(count_rows(&all), len as u64, "all newlines, {len}");
            let mixed: Vec<u8> = (0..len)
                .map(|i| if i % 7 == 3 { b'\n' } else { b'x' })
                .collect();
            let naive = mixed.iter().filter(|&&b| b == b'\n').count() as u64;
            assert_eq!(count_rows(&mixed), naive, "mixed, {len}");
        }
    }

    #[tokio::test]
    async fn the_hash_chain_hashes_parts_in_order_whatever_order_they_finish() {
        let parts: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + i as usize]).collect();
        let mut chain = HashChain::new();
        let links: Vec<ChainLink> = parts.iter().map(|_| chain.link()).collect();
        // Run the links last first: each must wait for the one before it.
        let mut tasks = Vec::new();
        for (part, link) in parts.iter().zip(links).rev() {
            let part = part.clone();
            tasks.push(tokio::spawn(async move {
                let mut state = link.previous.await.ok()?;
                state.update(&part);
                link.next.send(state).ok()
            }));
        }
        for t in tasks {
            assert!(matches!(t.await, Ok(Some(()))));
        }
        let got = hex(&chain.tail.await.map(|s| s.finalize()).unwrap_or_default());
        let whole: Vec<u8> = parts.concat();
        assert_eq!(got, hex(&Sha256::digest(&whole)));
    }
}
