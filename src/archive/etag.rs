//! The store's own checksum of an upload: the ETag S3 computes as it
//! receives the parts. Pure functions; `upload` computes what to expect,
//! `verify` decides whether the ETag the store reports proves the content.
//!
//! Why an ETag proves the content (where it does): for an object uploaded
//! in parts without SSE-KMS or customer keys, S3 (and MinIO, moto and the
//! other S3-compatible stores) report `hex(md5(md5(part 1) ‖ … ‖ md5(part
//! n)))-n`, computed by the store over the bytes it received. The part MD5s
//! here are computed over the same buffers the SHA-256 of the archive is, so
//! an equal ETag (and size) means the store holds these parts, all of them,
//! in this order. MD5 is broken against someone crafting collisions, not
//! against corruption, truncation or another upload replacing the object;
//! restores still check the manifest's SHA-256.

use md5::{Digest, Md5};

use super::digest::hex;

/// MD5 of one part (16 bytes).
pub type PartMd5 = [u8; 16];

pub fn part_md5(data: &[u8]) -> PartMd5 {
    Md5::digest(data).into()
}

/// The ETag of a multipart upload of these parts, in order.
pub fn multipart(parts: &[PartMd5]) -> String {
    let mut all = Md5::new();
    for p in parts {
        all.update(p);
    }
    format!("{}-{}", hex(&all.finalize()), parts.len())
}

/// An ETag as compared: without quotes (S3 sends them, and a weak `W/`
/// prefix is not a content hash), lower case.
pub fn normalize(etag: &str) -> String {
    etag.trim().trim_matches('"').to_ascii_lowercase()
}

/// True when `etag` has the form of an MD5 ETag: 32 hex digits, then
/// `-<parts>` for a multipart upload. Anything else (a store's own opaque
/// tag, a weak tag) says nothing about the bytes.
pub fn md5_form(etag: &str) -> bool {
    let e = normalize(etag);
    let (digest, parts) = match e.split_once('-') {
        Some((d, n)) => (d, Some(n)),
        None => (e.as_str(), None),
    };
    let parts_ok = match parts {
        None => true,
        Some(n) => !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()),
    };
    digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit()) && parts_ok
}

/// What HEAD says of the object's encryption: S3 does not make the ETag an
/// MD5 of the content under SSE-KMS (`aws:kms`, `aws:kms:dsse`) or with
/// customer-provided keys (SSE-C). SSE-S3 (`AES256`) keeps it an MD5.
pub fn encryption_hides_content(sse: Option<&str>, customer_algorithm: bool) -> bool {
    customer_algorithm || sse.is_some_and(|s| s.starts_with("aws:kms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etag_is_the_md5_of_the_part_md5s() {
        // The empty part (an empty partition is one empty part).
        let empty = part_md5(b"");
        assert_eq!(hex(&empty), "d41d8cd98f00b204e9800998ecf8427e");
        let one = multipart(&[empty]);
        assert!(one.ends_with("-1") && md5_form(&one), "{one}");
        // Two parts: MD5 over the concatenated binary digests, not the hex.
        let (a, b) = (part_md5(b"abc"), part_md5(b"def"));
        let mut cat = a.to_vec();
        cat.extend_from_slice(&b);
        assert_eq!(multipart(&[a, b]), format!("{}-2", hex(&part_md5(&cat))));
        assert_ne!(multipart(&[a, b]), multipart(&[b, a]), "order matters");
    }

    #[test]
    fn only_md5_shaped_etags_count() {
        assert!(md5_form("\"d41d8cd98f00b204e9800998ecf8427e\""));
        assert!(md5_form("\"D41D8CD98F00B204E9800998ECF8427E-12\""));
        assert!(!md5_form("W/\"d41d8cd98f00b204e9800998ecf8427e\""));
        assert!(!md5_form("\"d41d8cd98f00b204e9800998ecf8427e-\""));
        assert!(!md5_form("\"d41d8cd98f00b204e9800998ecf8427e-x\""));
        assert!(!md5_form("\"0123abcd\""));
        assert!(!md5_form(""));
        assert_eq!(normalize(" \"ABC-2\" "), "abc-2");
    }

    #[test]
    fn kms_and_customer_keys_hide_the_content() {
        assert!(encryption_hides_content(Some("aws:kms"), false));
        assert!(encryption_hides_content(Some("aws:kms:dsse"), false));
        assert!(encryption_hides_content(None, true));
        assert!(!encryption_hides_content(Some("AES256"), false));
        assert!(!encryption_hides_content(None, false));
    }
}
