//! Partition archives in object storage (S3, or an S3-compatible store such
//! as MinIO): the rows of a detached partition streamed out of PostgreSQL
//! with text `COPY ... TO STDOUT` straight into a multipart upload, a
//! manifest beside them, a verification (the store's ETag of the upload, or
//! reading it back), and the way back in.
//!
//! This module knows objects and COPY streams, not partitions' life cycle:
//! `partitions::retire` decides when a partition is detached, uploaded,
//! verified and dropped, and records each state.
//!
//! * `keys`: deterministic object keys from (table, bounds) (pure).
//! * `manifest`: the JSON object written beside the data.
//! * `copy`: the session settings and SQL that make text COPY exact.
//! * `store`: the S3 client: every call bounded and cancellable, errors that
//!   name the store and the fix, never a credential.
//! * `upload`: COPY out → multipart upload, bounded memory, SHA-256 and the
//!   parts' MD5s on the fly.
//! * `digest`: how digests are written (hex).
//! * `etag`: the multipart ETag an upload should get, and when an ETag proves
//!   the content (pure).
//! * `verify`: HEAD and compare size and ETag, or read the object back and
//!   compare size and SHA-256; then the manifest.
//! * `restore`: object → `COPY ... FROM STDIN`, verified as it streams.

mod copy;
pub mod digest;
mod error;
pub mod etag;
pub mod keys;
pub mod manifest;
mod progress;
pub mod restore;
pub mod store;
pub mod upload;
pub mod verify;

pub use copy::{columns, copy_out_sql, prepare_session, Column, COPY_SETTINGS};
pub use error::ArchiveError;
pub use manifest::Manifest;
pub use store::Store;
