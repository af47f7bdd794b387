//! The S3 client. One [`Store`] per configuration: the bucket, the prefix and
//! a client from the standard AWS chain.
//!
//! Invariants:
//! - Credentials come only from the AWS chain; nothing here stores, logs or
//!   formats one. Store errors are reduced to status, code and message.
//! - Checksums are computed "when required" only: since January 2025 the
//!   SDKs send CRC checksums with every upload by default (aws-chunked
//!   trailers), which MinIO and other S3-compatible stores reject.
//! - Every call is bounded (`archive.request_timeout`, SDK retries included,
//!   `archive.connect_timeout` per connection) and cancellable; a body read
//!   back is bounded per chunk, so a store that stalls mid-object is noticed.

use std::future::Future;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, StorageClass};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::ArchiveError;
use crate::config::ArchiveConfig;

/// Cheap to clone (the SDK client is shared): each part upload is its own task.
#[derive(Clone)]
pub struct Store {
    client: aws_sdk_s3::Client,
    pub bucket: String,
    pub prefix: String,
    /// `s3://bucket/prefix/` and the endpoint, for messages.
    name: String,
    timeout: Duration,
    storage_class: Option<StorageClass>,
}

/// An object's HEAD: what verification by the store's checksum reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    pub etag: Option<String>,
    /// `x-amz-server-side-encryption` (`AES256`, `aws:kms`, ...).
    pub sse: Option<String>,
    /// Encrypted with a customer-provided key (SSE-C).
    pub customer_key: bool,
}

/// The fix an operator needs for a failure of the store.
pub(crate) fn fix_for(
    status: Option<u16>,
    code: Option<&str>,
    timed_out: bool,
    text: &str,
) -> String {
    let keep = "the partition is kept and the next pass retries";
    let lower = text.to_lowercase();
    if timed_out {
        return format!("the store did not answer in time (down or hung?): check that it is up and reachable from this pod (archive.endpoint_url, network policy); {keep}");
    }
    match code {
        Some("NoSuchBucket") => {
            return format!("the bucket does not exist: create it or correct archive.url; {keep}")
        }
        Some(
            "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken"
            | "InvalidToken" | "AllAccessDisabled",
        ) => {
            return format!("the store refused the AWS credentials or their permissions: check the credential chain (AWS_* variables, the ServiceAccount's IAM role) and the bucket policy in docs/partitions.md#iam-policy; {keep}")
        }
        _ => {}
    }
    if lower.contains("credential") {
        return format!("no AWS credentials were found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or give the pod an IAM role (IRSA); {keep}");
    }
    match status {
        Some(s) if s >= 500 => format!("the store failed (HTTP {s}); {keep}"),
        Some(403) => format!("the store refused the request (HTTP 403): check the IAM policy in docs/partitions.md#iam-policy; {keep}"),
        Some(404) => format!("not found (HTTP 404): check archive.url and archive.endpoint_url; {keep}"),
        Some(s) => format!("the store answered HTTP {s}; {keep}"),
        None => format!("the store cannot be reached: check archive.endpoint_url (or the region), DNS and the network; {keep}"),
    }
}

/// Status, code, cause and fix of an SDK error, credentials never included.
fn explain<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> (String, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let timed_out = match e {
        SdkError::TimeoutError(_) => true,
        SdkError::DispatchFailure(d) => d.is_timeout(),
        _ => false,
    };
    let cause = match e {
        SdkError::ServiceError(_) if e.code().is_none() => {
            // An answer the SDK could not read: the causes' own words (never
            // the raw response, which `DisplayErrorContext` would print).
            let chain = causes(e);
            match status {
                Some(s) => format!("HTTP {s}, an answer the client cannot read: {chain}"),
                None => chain,
            }
        }
        SdkError::ServiceError(_) => {
            let code = e.code().unwrap_or("no error code");
            let msg = e.message().unwrap_or("");
            match status {
                Some(s) => format!("HTTP {s} {code} {msg}").trim_end().to_string(),
                None => format!("{code} {msg}").trim_end().to_string(),
            }
        }
        SdkError::TimeoutError(_) => "timed out".to_string(),
        // Connector and construction errors: a chain of causes, no secrets.
        other => causes(other),
    };
    let fix = fix_for(status, e.code(), timed_out, &cause);
    (cause, fix)
}

/// `error: cause: cause`, each by its `Display` only, cut to a readable length.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(c) = next {
        let text = c.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = c.source();
    }
    let mut all = parts.join(": ");
    if all.len() > 400 {
        let mut cut = 400;
        while !all.is_char_boundary(cut) {
            cut -= 1;
        }
        all.truncate(cut);
        all.push_str("...");
    }
    all
}

impl Store {
    /// A client for `cfg`, credentials from the AWS chain (no request is sent yet).
    pub async fn new(cfg: &ArchiveConfig) -> Store {
        let timeout = cfg.request_timeout.0;
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(cfg.connect_timeout.0)
            .operation_timeout(timeout)
            .operation_attempt_timeout(timeout)
            .build();
        let region = aws_config::meta::region::RegionProviderChain::first_try(
            cfg.region.clone().map(aws_config::Region::new),
        )
        .or_default_provider()
        .or_else(aws_config::Region::from_static("us-east-1"));
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(region)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .load()
            .await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(cfg.force_path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(ep) = &cfg.endpoint_url {
            b = b.endpoint_url(ep.0.clone());
        }
        let name = match &cfg.endpoint_url {
            Some(ep) => format!("{} at {}", cfg.url, ep.0),
            None => cfg.url.to_string(),
        };
        Store {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            bucket: cfg.url.bucket.clone(),
            prefix: cfg.url.prefix.clone(),
            name,
            timeout,
            storage_class: cfg.storage_class.as_deref().map(StorageClass::from),
        }
    }

    /// `s3://bucket/prefix/ at endpoint`, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one request under the deadline and the token.
    async fn call<T, E, F>(
        &self,
        op: &'static str,
        key: &str,
        cancel: &CancellationToken,
        fut: F,
    ) -> Result<T, ArchiveError>
    where
        F: Future<Output = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        // The SDK's own operation timeout fires first; this one holds even
        // if a connector ignores it.
        let deadline = self.timeout + Duration::from_secs(1);
        tokio::select! {
            r = tokio::time::timeout(deadline, fut) => match r {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => {
                    let (cause, fix) = explain(&e);
                    Err(self.error(op, key, cause, fix))
                }
                Err(_) => Err(self.error(op, key, format!("no answer within {deadline:?}"), fix_for(None, None, true, ""))),
            },
            _ = cancel.cancelled() => Err(ArchiveError::Cancelled),
        }
    }

    pub(crate) fn error(
        &self,
        op: &'static str,
        key: &str,
        cause: String,
        fix: String,
    ) -> ArchiveError {
        ArchiveError::Store {
            store: self.name.clone(),
            op,
            key: key.to_string(),
            cause,
            fix,
        }
    }

    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        cancel: &CancellationToken,
    ) -> Result<(), ArchiveError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body));
        if let Some(sc) = &self.storage_class {
            req = req.storage_class(sc.clone());
        }
        self.call("upload", key, cancel, req.send())
            .await
            .map(|_| ())
    }

    /// The object's size, or `None` when there is no such object.
    pub async fn size(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<u64>, ArchiveError> {
        Ok(self.head(key, cancel).await?.map(|h| h.size))
    }

    /// What HEAD says of the object, or `None` when there is no such object.
    pub async fn head(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<Head>, ArchiveError> {
        let req = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        match self.call("look up", key, cancel, req).await {
            Ok(h) => Ok(Some(Head {
                size: h.content_length().unwrap_or(0).max(0) as u64,
                etag: h.e_tag().map(str::to_string),
                sse: h.server_side_encryption().map(|s| s.as_str().to_string()),
                customer_key: h.sse_customer_algorithm().is_some(),
            })),
            Err(ArchiveError::Store { cause, .. }) if cause.starts_with("HTTP 404") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The object's body as a stream; read it with [`Store::next_chunk`].
    pub async fn get(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<ByteStream, ArchiveError> {
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        Ok(self.call("download", key, cancel, req).await?.body)
    }

    /// The next chunk of a body, bounded by the request timeout.
    pub async fn next_chunk(
        &self,
        key: &str,
        body: &mut ByteStream,
        cancel: &CancellationToken,
    ) -> Result<Option<Bytes>, ArchiveError> {
        tokio::select! {
            r = tokio::time::timeout(self.timeout, body.next()) => match r {
                Ok(None) => Ok(None),
                Ok(Some(Ok(b))) => Ok(Some(b)),
                Ok(Some(Err(e))) => Err(self.error("download", key, causes(&e), fix_for(None, None, false, ""))),
                Err(_) => Err(self.error("download", key, format!("the body stalled for {:?}", self.timeout), fix_for(None, None, true, ""))),
            },
            _ = cancel.cancelled() => Err(ArchiveError::Cancelled),
        }
    }

    /// A whole (small) object: a manifest.
    pub async fn get_small(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<u8>, ArchiveError> {
        let mut body = self.get(key, cancel).await?;
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk(key, &mut body, cancel).await? {
            out.extend_from_slice(&chunk);
            if out.len() > 16 << 20 {
                return Err(ArchiveError::Manifest {
                    key: key.into(),
                    message: "larger than 16 MiB; not a manifest".into(),
                });
            }
        }
        Ok(out)
    }

    /// Every key under `prefix` (paged).
    pub async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<String>, ArchiveError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send();
            let page = self.call("list", prefix, cancel, req).await?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            match page.next_continuation_token() {
                Some(t) if page.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                _ => return Ok(keys),
            }
        }
    }

    pub async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<(), ArchiveError> {
        let req = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        self.call("delete", key, cancel, req).await.map(|_| ())
    }

    /// Starts a multipart upload; its id.
    pub async fn begin_multipart(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<String, ArchiveError> {
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key);
        if let Some(sc) = &self.storage_class {
            req = req.storage_class(sc.clone());
        }
        let out = self
            .call("start the upload of", key, cancel, req.send())
            .await?;
        out.upload_id().map(str::to_string).ok_or_else(|| {
            self.error(
                "start the upload of",
                key,
                "no upload id in the answer".into(),
                fix_for(Some(500), None, false, ""),
            )
        })
    }

    /// Uploads part `n` (1-based); its ETag.
    ///
    /// The payload is not signed (`UNSIGNED-PAYLOAD`): SigV4's payload hash
    /// would be one more SHA-256 pass over every byte (about 0.7 s of CPU
    /// per GiB) for a guarantee the archive has end to end anyway: each
    /// part's ETag is compared with its MD5 as it is uploaded, and nothing
    /// is dropped before the whole object's ETag, or its SHA-256 read back,
    /// proved the content (verify.rs). A part damaged on the way fails that
    /// proof, and the partition is archived again. (Content-MD5 would have
    /// the store refuse it at once, at the price of the part's MD5 before
    /// it is sent and a second MD5 pass by the store.)
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        n: i32,
        body: Bytes,
        cancel: &CancellationToken,
    ) -> Result<String, ArchiveError> {
        let req = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(n)
            .content_length(body.len() as i64)
            .body(ByteStream::from(body))
            .customize()
            .disable_payload_signing()
            .send();
        let out = self.call("upload a part of", key, cancel, req).await?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    /// Completes the upload of `bytes` bytes. A store that answers 200 with a
    /// body the client cannot read (moto names the result element after the
    /// operation, not as S3 does) is asked for the object's size instead;
    /// the read-back verification comes later anyway.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: Vec<(i32, String)>,
        bytes: u64,
        cancel: &CancellationToken,
    ) -> Result<(), ArchiveError> {
        let parts = etags
            .into_iter()
            .map(|(n, e)| CompletedPart::builder().part_number(n).e_tag(e).build())
            .collect();
        let req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send();
        match self.call("complete the upload of", key, cancel, req).await {
            Ok(_) => Ok(()),
            Err(ArchiveError::Store { cause, .. })
                if cause.starts_with("HTTP 200, an answer the client cannot read")
                    && self.size(key, cancel).await? == Some(bytes) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Abandons a multipart upload (its parts are freed). Not cancellable:
    /// it is the clean-up of a cancelled upload; bounded by the timeout.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), ArchiveError> {
        let never = CancellationToken::new();
        let req = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send();
        match self.call("abort the upload of", key, &never, req).await {
            // Already completed, aborted or expired: nothing left to free.
            Err(ArchiveError::Store { cause, .. })
                if cause.contains("NoSuchUpload") || cause.starts_with("HTTP 404") =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// `check`: the bucket exists and this identity may write, read and
    /// delete under the prefix (a probe object, removed again).
    pub async fn probe(&self, cancel: &CancellationToken) -> Result<String, ArchiveError> {
        // A listing under the prefix, not HeadBucket: the least-privilege
        // policy grants s3:ListBucket only with an s3:prefix condition.
        let req = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .max_keys(1)
            .send();
        self.call("list", &self.prefix, cancel, req).await?;
        let key = format!("{}.pgsteward-check", self.prefix);
        self.put(&key, Bytes::from_static(b"pgsteward check\n"), cancel)
            .await?;
        let size = self.size(&key, cancel).await?;
        self.delete(&key, cancel).await?;
        if size != Some(16) {
            return Err(self.error(
                "read back",
                &key,
                format!("size {size:?}, expected 16"),
                fix_for(Some(500), None, false, ""),
            ));
        }
        Ok(format!(
            "bucket {} writable under {:?}",
            self.bucket, self.prefix
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::fix_for;

    #[test]
    fn every_failure_names_its_fix() {
        assert!(fix_for(None, None, true, "").contains("did not answer in time"));
        assert!(fix_for(Some(404), Some("NoSuchBucket"), false, "")
            .contains("create it or correct archive.url"));
        assert!(
            fix_for(Some(403), Some("InvalidAccessKeyId"), false, "").contains("credential chain")
        );
        assert!(
            fix_for(None, None, false, "failed to load credentials").contains("no AWS credentials")
        );
        assert!(fix_for(Some(503), Some("SlowDown"), false, "").contains("HTTP 503"));
        assert!(fix_for(None, None, false, "connection refused").contains("cannot be reached"));
    }
}
