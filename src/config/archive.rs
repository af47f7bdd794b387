//! The `[archive]` section: where `retention_mode = "archive"` puts retired
//! partitions (an S3 bucket or an S3-compatible store such as MinIO) and how
//! the upload is paced. Credentials are deliberately not configurable here:
//! they come from the standard AWS chain (environment, web identity / IRSA,
//! instance profile), so no secret ever sits in this file.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{ByteSize, HumanDuration};

/// `s3://bucket/prefix/`: the bucket and the key prefix every archive of
/// this configuration lives under (empty, or ending in `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Why an `[archive]` value was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveConfigError {
    #[error("key `archive.url`: {0:?} is not an S3 URL; expected s3://BUCKET/PREFIX/ (for MinIO set endpoint_url too)")]
    NotS3(String),
    #[error("key `archive.url`: {0:?} has no valid bucket name; expected 3-63 characters of a-z, 0-9, '.', '-'")]
    Bucket(String),
    #[error("key `archive.url`: {0:?} carries credentials; they come from the AWS chain (AWS_* environment, web identity, instance profile), never from the configuration")]
    Credentials(String),
    #[error("key `archive.endpoint_url`: {0:?} is not an http(s) URL without credentials")]
    Endpoint(String),
}

impl std::str::FromStr for S3Url {
    type Err = ArchiveConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| ArchiveConfigError::NotS3(s.into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.contains('@') || bucket.contains(':') {
            return Err(ArchiveConfigError::Credentials(format!(
                "s3://REDACTED@{}",
                bucket.rsplit('@').next().unwrap_or_default()
            )));
        }
        let ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
        if !ok {
            return Err(ArchiveConfigError::Bucket(s.into()));
        }
        let mut prefix = prefix.trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Url {
            bucket: bucket.into(),
            prefix,
        })
    }
}

impl<'de> Deserialize<'de> for S3Url {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How rows are written into the archive. Only PostgreSQL's text COPY: it
/// restores every type exactly across majors (docs/partitions.md says why
/// not binary COPY, and why not Parquet yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveFormat {
    #[default]
    Text,
}

/// How an archive is verified before its partition is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ArchiveVerify {
    /// HEAD: size and the store's ETag of the upload where that ETag is the
    /// MD5 of the parts sent (it proves the content), else read back.
    #[default]
    Auto,
    /// Always read the whole object back and compare its SHA-256 (a second
    /// transfer of the archive).
    ReadBack,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// `s3://bucket/prefix/`.
    pub url: S3Url,
    /// An S3-compatible store (MinIO): `http://minio.data:9000`.
    #[serde(default)]
    pub endpoint_url: Option<EndpointUrl>,
    /// Default: the AWS chain's region (`AWS_REGION`), else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// `http://host/bucket/key` instead of `http://bucket.host/key` (MinIO wants it).
    #[serde(default)]
    pub force_path_style: bool,
    /// `STANDARD_IA`, `GLACIER_IR`, ...; default: the bucket's.
    #[serde(default)]
    pub storage_class: Option<String>,
    #[serde(default)]
    pub format: ArchiveFormat,
    /// `auto` (the store's checksum where it proves the content, else read
    /// back) or `read-back`.
    #[serde(default)]
    pub verify: ArchiveVerify,
    /// Size of one multipart part; memory is about `part_size` × (`uploads_in_flight` + 1).
    #[serde(default = "default_part_size")]
    pub part_size: ByteSize,
    /// Parts uploaded at once.
    #[serde(default = "default_in_flight")]
    pub uploads_in_flight: u32,
    /// Longest one request to the store may take (a part, a HEAD, a listing),
    /// retries included; past it the store counts as hung.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Longest wait for a TCP (and TLS) connection to the store.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Largest partition (on disk) one pass archives; a larger one is
    /// reported and left attached.
    #[serde(default = "default_max_partition_size")]
    pub max_partition_size: ByteSize,
}

/// An endpoint URL, checked to carry no user or password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl(pub String);

impl<'de> Deserialize<'de> for EndpointUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || serde::de::Error::custom(ArchiveConfigError::Endpoint(redact_url(&s)));
        let u = url::Url::parse(&s).map_err(|_| bad())?;
        if !matches!(u.scheme(), "http" | "https")
            || !u.username().is_empty()
            || u.password().is_some()
        {
            return Err(bad());
        }
        Ok(EndpointUrl(s.trim_end_matches('/').to_string()))
    }
}

/// A URL as it may be shown: its user and password replaced.
fn redact_url(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("REDACTED");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(unparsable)".into(),
    }
}

fn default_part_size() -> ByteSize {
    ByteSize(8 << 20)
}
fn default_in_flight() -> u32 {
    3
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_max_partition_size() -> ByteSize {
    ByteSize(100 << 30)
}

/// S3's multipart limits: parts of 5 MiB to 5 GiB (the last may be smaller).
pub const MIN_PART: u64 = 5 << 20;
pub const MAX_PART: u64 = 5 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls() {
        let u: S3Url = "s3://audit-archive/pgsteward".parse().unwrap();
        assert_eq!(u.bucket, "audit-archive");
        assert_eq!(u.prefix, "pgsteward/");
        assert_eq!(u.to_string(), "s3://audit-archive/pgsteward/");
        let u: S3Url = "s3://bucket".parse().unwrap();
        assert_eq!(u.prefix, "");
        assert!(matches!(
            "https://bucket/x".parse::<S3Url>(),
            Err(ArchiveConfigError::NotS3(_))
        ));
        assert!(matches!(
            "s3://Bad_Bucket/x".parse::<S3Url>(),
            Err(ArchiveConfigError::Bucket(_))
        ));
        let e = "s3://key:secret@bucket/x".parse::<S3Url>().unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn verify_modes() {
        let mode = |toml: &str| {
            crate::config::from_figment(
                figment::Figment::new().merge(
                    <figment::providers::Toml as figment::providers::Format>::string(&format!(
                        "[database]\nprimary = \"postgres://h/db\"\n\
                         [archive]\nurl = \"s3://bucket/p/\"\n{toml}"
                    )),
                ),
                None,
            )
            .map(|c| c.cluster.archive.map(|a| a.verify))
            .map_err(|e| e.to_string())
        };
        assert_eq!(mode(""), Ok(Some(ArchiveVerify::Auto)));
        assert_eq!(mode("verify = \"auto\""), Ok(Some(ArchiveVerify::Auto)));
        assert_eq!(
            mode("verify = \"read-back\""),
            Ok(Some(ArchiveVerify::ReadBack))
        );
        let e = mode("verify = \"readback\"").unwrap_err();
        assert!(
            e.contains("archive.verify") && e.contains("auto, read-back"),
            "{e}"
        );
    }

    #[test]
    fn endpoints_never_carry_credentials() {
        let ok: Result<EndpointUrl, _> = serde_json::from_str("\"http://127.0.0.1:9000/\"");
        assert_eq!(ok.unwrap().0, "http://127.0.0.1:9000");
        let bad: Result<EndpointUrl, _> =
            serde_json::from_str("\"http://minio:s3cr3t@127.0.0.1:9000\"");
        let e = bad.unwrap_err().to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
    }
}
