//! Verification before a DROP: the data object is read back from the store
//! and must have the recorded size and SHA-256, and the manifest beside it
//! must describe the same bytes. Reading back costs a second transfer, but
//! it is the one check every S3-compatible store supports the same way
//! (multipart ETags are not content hashes under SSE-KMS, and checksums are
//! only computed "when required" for MinIO's sake).

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::manifest::Manifest;
use super::progress::Progress;
use super::upload::hex;
use super::{keys, ArchiveError, Store};

/// Reads `key` back and compares it with `bytes` and `sha256`; then reads
/// its manifest and compares it too. Returns the manifest.
pub async fn verify(
    store: &Store,
    key: &str,
    bytes: u64,
    sha256: &str,
    cancel: &CancellationToken,
) -> Result<Manifest, ArchiveError> {
    let mismatch = |what, expected: String, found: String| ArchiveError::Mismatch {
        key: key.to_string(),
        what,
        expected,
        found,
    };
    match store.size(key, cancel).await? {
        None => return Err(mismatch("the object", "present".into(), "missing".into())),
        Some(n) if n != bytes => {
            return Err(mismatch("its size", bytes.to_string(), n.to_string()))
        }
        Some(_) => {}
    }
    let mut body = store.get(key, cancel).await?;
    let mut hasher = Sha256::new();
    let mut read = 0u64;
    let mut progress = Progress::new("archive verification", key, bytes);
    while let Some(chunk) = store.next_chunk(key, &mut body, cancel).await? {
        hasher.update(&chunk);
        read += chunk.len() as u64;
        progress.tick(read);
    }
    if read != bytes {
        return Err(mismatch(
            "the size read back",
            bytes.to_string(),
            read.to_string(),
        ));
    }
    let found = hex(&hasher.finalize());
    if found != sha256 {
        return Err(mismatch("its SHA-256", sha256.into(), found));
    }
    let mkey = keys::manifest_key(key);
    let manifest = Manifest::parse(&mkey, &store.get_small(&mkey, cancel).await?)?;
    if manifest.sha256 != sha256 || manifest.bytes != bytes || manifest.data_key != key {
        return Err(mismatch(
            "the manifest",
            format!("{bytes} bytes, sha256 {sha256}, data {key}"),
            format!(
                "{} bytes, sha256 {}, data {}",
                manifest.bytes, manifest.sha256, manifest.data_key
            ),
        ));
    }
    Ok(manifest)
}
