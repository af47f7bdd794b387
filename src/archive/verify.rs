//! Verification before a DROP: the data object must have the recorded size
//! and either the ETag its upload should have given it (one HEAD: the
//! store's own checksum of the parts it received, see `etag`) or, read
//! back, the recorded SHA-256; and the manifest beside it must describe the
//! same bytes.
//!
//! The ETag is used only where it proves the content: `archive.verify =
//! "auto"`, an expected ETag recorded at upload (retirements uploaded by
//! earlier releases have none), no SSE-KMS or customer key on the object,
//! and an ETag of the MD5 form. Anything else reads the object back, a
//! second transfer but the one check every S3-compatible store supports the
//! same way.

use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::digest::hex;
use super::manifest::Manifest;
use super::progress::Progress;
use super::store::Head;
use super::{etag, keys, ArchiveError, Store};
use crate::config::ArchiveVerify;

/// What the upload recorded of the object.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub bytes: u64,
    pub sha256: &'a str,
    /// The multipart ETag the store should report (`None`: not recorded).
    pub etag: Option<&'a str>,
}

/// How the data object was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum By {
    /// HEAD: size and the store's ETag.
    ETag,
    /// Read back and hashed, and why the ETag was not enough.
    ReadBack(&'static str),
}

impl By {
    pub fn as_str(&self) -> &'static str {
        match self {
            By::ETag => "etag",
            By::ReadBack(_) => "read-back",
        }
    }
}

/// A verified archive: its manifest, how, and how long it took.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    pub by: By,
    pub seconds: f64,
}

/// Why the ETag of `head` does not prove the content (so: read back), or
/// `None` when it does. Pure.
pub fn read_back_because(
    mode: ArchiveVerify,
    expected: Option<&str>,
    head: &Head,
) -> Option<&'static str> {
    if mode == ArchiveVerify::ReadBack {
        return Some("archive.verify = \"read-back\"");
    }
    if expected.is_none() {
        return Some("no expected ETag recorded at upload");
    }
    if etag::encryption_hides_content(head.sse.as_deref(), head.customer_key) {
        return Some("the object is encrypted with SSE-KMS or a customer key");
    }
    match &head.etag {
        Some(e) if etag::md5_form(e) => None,
        _ => Some("the store's ETag is not an MD5"),
    }
}

/// Compares `key` with what its upload recorded (HEAD, then the ETag or a
/// read-back, as `mode` and the object allow), then reads its manifest and
/// compares it too.
pub async fn verify(
    store: &Store,
    key: &str,
    want: Expected<'_>,
    mode: ArchiveVerify,
    cancel: &CancellationToken,
) -> Result<Verified, ArchiveError> {
    let started = Instant::now();
    let mismatch = |what, expected: String, found: String| ArchiveError::Mismatch {
        key: key.to_string(),
        what,
        expected,
        found,
    };
    let head = match store.head(key, cancel).await? {
        None => return Err(mismatch("the object", "present".into(), "missing".into())),
        Some(h) if h.size != want.bytes => {
            return Err(mismatch(
                "its size",
                want.bytes.to_string(),
                h.size.to_string(),
            ))
        }
        Some(h) => h,
    };
    let by = match (read_back_because(mode, want.etag, &head), want.etag) {
        (None, Some(expected)) => {
            let found = head.etag.as_deref().map(etag::normalize);
            if found.as_deref() != Some(&etag::normalize(expected)) {
                return Err(mismatch(
                    "its ETag (the store's MD5 of the parts)",
                    expected.into(),
                    found.unwrap_or_default(),
                ));
            }
            By::ETag
        }
        (why, _) => {
            read_back(store, key, want, cancel).await?;
            By::ReadBack(why.unwrap_or("no expected ETag recorded at upload"))
        }
    };
    let mkey = keys::manifest_key(key);
    let manifest = Manifest::parse(&mkey, &store.get_small(&mkey, cancel).await?)?;
    let (bytes, sha256) = (want.bytes, want.sha256);
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
    Ok(Verified {
        manifest,
        by,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Reads `key` back whole: it must have `want.bytes` bytes and SHA-256
/// `want.sha256`.
async fn read_back(
    store: &Store,
    key: &str,
    want: Expected<'_>,
    cancel: &CancellationToken,
) -> Result<(), ArchiveError> {
    let mismatch = |what, expected: String, found: String| ArchiveError::Mismatch {
        key: key.to_string(),
        what,
        expected,
        found,
    };
    let mut body = store.get(key, cancel).await?;
    let mut hasher = Sha256::new();
    let mut read = 0u64;
    let mut progress = Progress::new("archive verification", key, want.bytes);
    while let Some(chunk) = store.next_chunk(key, &mut body, cancel).await? {
        hasher.update(&chunk);
        read += chunk.len() as u64;
        progress.tick(read);
    }
    if read != want.bytes {
        return Err(mismatch(
            "the size read back",
            want.bytes.to_string(),
            read.to_string(),
        ));
    }
    let found = hex(&hasher.finalize());
    if found != want.sha256 {
        return Err(mismatch("its SHA-256", want.sha256.into(), found));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(etag: Option<&str>, sse: Option<&str>, customer_key: bool) -> Head {
        Head {
            size: 10,
            etag: etag.map(str::to_string),
            sse: sse.map(str::to_string),
            customer_key,
        }
    }

    #[test]
    fn the_etag_is_used_only_where_it_proves_the_content() {
        let md5 = Some("\"0123456789abcdef0123456789abcdef-3\"");
        let want = Some("0123456789abcdef0123456789abcdef-3");
        let auto = ArchiveVerify::Auto;
        assert_eq!(read_back_because(auto, want, &head(md5, None, false)), None);
        assert_eq!(
            read_back_because(auto, want, &head(md5, Some("AES256"), false)),
            None
        );
        for (mode, want, h) in [
            (ArchiveVerify::ReadBack, want, head(md5, None, false)),
            (auto, None, head(md5, None, false)),
            (auto, want, head(md5, Some("aws:kms"), false)),
            (auto, want, head(md5, None, true)),
            (auto, want, head(Some("\"opaque\""), None, false)),
            (auto, want, head(None, None, false)),
        ] {
            assert!(
                read_back_because(mode, want, &h).is_some(),
                "{mode:?} {want:?} {h:?}"
            );
        }
    }
}
