//! How digests are written: lower-case hex, as `sha256sum`, `md5sum` and S3
//! ETags write them, so a manifest's checksum can be compared by hand.

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}
