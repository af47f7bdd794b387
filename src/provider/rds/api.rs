//! The few RDS calls the provider makes, behind a small trait: implemented by
//! [`SdkRds`] (aws-sdk-rds) and, in tests, by scripted doubles that play
//! status sequences moto cannot show (slow creates, `backing-up`, throttling).
//! Plain data in and out, so a double needs no SDK types.

use std::collections::BTreeMap;

use aws_sdk_rds::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_rds::operation::modify_db_instance::builders::ModifyDBInstanceFluentBuilder;
use aws_sdk_rds::types::Tag;
use tokio::sync::OnceCell;

/// What the provider reads about one DB instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    /// `DBInstanceArn`: its region is the source's region when
    /// `upgrade.rds.region` is not set (cross-region readers are told apart by it).
    pub arn: Option<String>,
    /// `DBInstanceStatus`: `creating`, `available`, `backing-up`, `failed`, ...
    pub status: String,
    pub class: String,
    pub engine: String,
    /// `EngineVersion`, e.g. `15.4` (cascading replicas need 14.1 or later).
    pub engine_version: String,
    pub backup_retention: i32,
    /// `Endpoint.Address` and `Endpoint.Port`; absent while creating.
    pub endpoint: Option<(String, u16)>,
    pub parameter_group: Option<String>,
    pub subnet_group: Option<String>,
    pub security_groups: Vec<String>,
    pub multi_az: bool,
    pub tags: BTreeMap<String, String>,
    /// `ReadReplicaSourceDBInstanceIdentifier`: set while the instance is a replica.
    pub replica_source: Option<String>,
    /// `ReadReplicaDBInstanceIdentifiers`: replicas fed by this instance.
    pub read_replicas: Vec<String>,
    /// `AllocatedStorage` in GiB (capacity planning).
    pub allocated_storage_gib: i64,
    /// `MaxAllocatedStorage` in GiB: `None` when storage autoscaling is off.
    pub max_allocated_storage_gib: Option<i64>,
}

/// `CreateDBInstanceReadReplica` as the provider issues it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateReplica {
    pub id: String,
    pub source: String,
    pub class: String,
    pub parameter_group: Option<String>,
    pub subnet_group: Option<String>,
    pub security_groups: Vec<String>,
    pub multi_az: bool,
    pub tags: BTreeMap<String, String>,
}

/// How the provider reacts to a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// Rate limited: retried with backoff.
    Throttled,
    /// Network, timeout or 5xx: retried with backoff.
    Transient,
    /// `DBInstanceNotFound`, `DBSnapshotNotFound`.
    NotFound,
    /// `DBInstanceAlreadyExists`, `DBSnapshotAlreadyExists`.
    AlreadyExists,
    /// `InvalidDBInstanceState`: the instance is busy (e.g. `backing-up`).
    InvalidState,
    /// Anything else: reported to the operator as RDS said it.
    Other,
}

/// A failed call, with the API's own code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", .code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub code: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ApiErrorKind, code: &str, message: &str) -> ApiError {
        ApiError {
            kind,
            code: Some(code.to_string()),
            message: message.to_string(),
        }
    }
}

/// The error codes RDS (and the AWS query protocol) use for rate limiting.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "RequestThrottledException",
];

/// Classifies an error code from the API.
pub fn kind_of_code(code: &str) -> ApiErrorKind {
    if THROTTLING_CODES.contains(&code) {
        return ApiErrorKind::Throttled;
    }
    match code {
        "DBInstanceNotFound"
        | "DBInstanceNotFoundFault"
        | "DBSnapshotNotFound"
        | "DBSnapshotNotFoundFault" => ApiErrorKind::NotFound,
        "DBInstanceAlreadyExists"
        | "DBInstanceAlreadyExistsFault"
        | "DBSnapshotAlreadyExists"
        | "DBSnapshotAlreadyExistsFault" => ApiErrorKind::AlreadyExists,
        "InvalidDBInstanceState" | "InvalidDBInstanceStateFault" => ApiErrorKind::InvalidState,
        "InternalFailure" | "ServiceUnavailable" | "InternalError" => ApiErrorKind::Transient,
        _ => ApiErrorKind::Other,
    }
}

#[async_trait::async_trait]
pub trait RdsApi: Send + Sync {
    /// `DescribeDBInstances` for one id; `None` when there is no such instance.
    async fn describe_instance(&self, id: &str) -> Result<Option<Instance>, ApiError>;
    async fn create_read_replica(&self, req: &CreateReplica) -> Result<(), ApiError>;
    async fn promote_read_replica(&self, id: &str) -> Result<(), ApiError>;
    /// `ModifyDBInstance NewDBInstanceIdentifier` with `ApplyImmediately`.
    async fn rename_instance(&self, id: &str, new_id: &str) -> Result<(), ApiError>;
    /// `ModifyDBInstance BackupRetentionPeriod` with `ApplyImmediately`: a
    /// read replica needs automated backups before it can feed replicas.
    async fn set_backup_retention(&self, id: &str, days: i32) -> Result<(), ApiError>;
    /// `DeleteDBInstance`: with `FinalDBSnapshotIdentifier` when given, else
    /// `SkipFinalSnapshot` (only ever for a replica that never took writes).
    async fn delete_instance(&self, id: &str, final_snapshot: Option<&str>)
        -> Result<(), ApiError>;
    /// `DescribeDBSnapshots` for one id: its status, `None` when absent.
    async fn snapshot_status(&self, snapshot_id: &str) -> Result<Option<String>, ApiError>;
}

/// Where and how the SDK client is made.
#[derive(Debug, Clone, Default)]
pub struct SdkSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// Static credentials instead of the default chain (tests against moto).
    pub static_credentials: Option<(String, String)>,
}

/// The real client. Built on first use: loading the default credential chain
/// (environment, profile, web identity, IMDS) is asynchronous.
pub struct SdkRds {
    settings: SdkSettings,
    client: OnceCell<aws_sdk_rds::Client>,
}

impl SdkRds {
    pub fn new(settings: SdkSettings) -> SdkRds {
        SdkRds {
            settings,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &aws_sdk_rds::Client {
        self.client
            .get_or_init(|| async { aws_sdk_rds::Client::new(&self.settings.load().await) })
            .await
    }

    /// One ModifyDBInstance of `id`, applied now rather than in the next
    /// maintenance window: the upgrade waits on its effect.
    async fn modify_now(
        &self,
        id: &str,
        set: impl FnOnce(ModifyDBInstanceFluentBuilder) -> ModifyDBInstanceFluentBuilder,
    ) -> Result<(), ApiError> {
        let modify = self
            .client()
            .await
            .modify_db_instance()
            .db_instance_identifier(id);
        set(modify)
            .apply_immediately(true)
            .send()
            .await
            .map(|_| ())
            .map_err(sdk_error)
    }
}

impl SdkSettings {
    /// The SDK configuration these settings describe, for any AWS client
    /// (RDS here, CloudWatch for capacity planning).
    pub async fn load(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        if let Some((key, secret)) = &self.static_credentials {
            loader = loader.credentials_provider(aws_sdk_rds::config::Credentials::new(
                key.clone(),
                secret.clone(),
                None,
                None,
                "pgsteward-static",
            ));
        }
        loader.load().await
    }
}

/// The describe calls answer "no such instance/snapshot" with an error;
/// to their callers absence is an answer (`None`), not a failure.
fn absent_as_none<T>(r: Result<Option<T>, ApiError>) -> Result<Option<T>, ApiError> {
    match r {
        Err(e) if e.kind == ApiErrorKind::NotFound => Ok(None),
        other => other,
    }
}

/// Any AWS SDK error (RDS, CloudWatch) as an [`ApiError`], classified for retries.
pub fn sdk_error<E, R>(err: SdkError<E, R>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = aws_sdk_rds::error::DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().map(str::to_string);
            let message = ctx.err().message().map(str::to_string).unwrap_or(detail);
            let kind = code.as_deref().map_or(ApiErrorKind::Other, kind_of_code);
            ApiError {
                kind,
                code,
                message,
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ApiError {
                kind: ApiErrorKind::Transient,
                code: None,
                message: detail,
            }
        }
        // Construction failures (missing region, no credentials) are not worth retrying.
        _ => ApiError {
            kind: ApiErrorKind::Other,
            code: None,
            message: detail,
        },
    }
}

fn instance(db: &aws_sdk_rds::types::DbInstance) -> Instance {
    Instance {
        id: db.db_instance_identifier().unwrap_or_default().to_string(),
        arn: db.db_instance_arn().map(str::to_string),
        status: db.db_instance_status().unwrap_or_default().to_string(),
        class: db.db_instance_class().unwrap_or_default().to_string(),
        engine: db.engine().unwrap_or_default().to_string(),
        engine_version: db.engine_version().unwrap_or_default().to_string(),
        backup_retention: db.backup_retention_period().unwrap_or(0),
        endpoint: db.endpoint().and_then(|e| {
            let port = u16::try_from(e.port()?).ok()?;
            Some((e.address()?.to_string(), port))
        }),
        parameter_group: db
            .db_parameter_groups()
            .first()
            .and_then(|g| g.db_parameter_group_name())
            .map(str::to_string),
        subnet_group: db
            .db_subnet_group()
            .and_then(|g| g.db_subnet_group_name())
            .map(str::to_string),
        security_groups: db
            .vpc_security_groups()
            .iter()
            .filter_map(|g| g.vpc_security_group_id().map(str::to_string))
            .collect(),
        multi_az: db.multi_az().unwrap_or(false),
        tags: db
            .tag_list()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string())))
            .collect(),
        replica_source: db
            .read_replica_source_db_instance_identifier()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        read_replicas: db.read_replica_db_instance_identifiers().to_vec(),
        allocated_storage_gib: db.allocated_storage().map_or(0, i64::from),
        max_allocated_storage_gib: db.max_allocated_storage().map(i64::from),
    }
}

#[async_trait::async_trait]
impl RdsApi for SdkRds {
    async fn describe_instance(&self, id: &str) -> Result<Option<Instance>, ApiError> {
        let out = self
            .client()
            .await
            .describe_db_instances()
            .db_instance_identifier(id)
            .send()
            .await;
        absent_as_none(
            out.map(|out| out.db_instances().iter().map(instance).find(|i| i.id == id))
                .map_err(sdk_error),
        )
    }

    async fn create_read_replica(&self, req: &CreateReplica) -> Result<(), ApiError> {
        let tags = req
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let security_groups =
            (!req.security_groups.is_empty()).then(|| req.security_groups.clone());
        self.client()
            .await
            .create_db_instance_read_replica()
            .db_instance_identifier(&req.id)
            .source_db_instance_identifier(&req.source)
            .db_instance_class(&req.class)
            .set_db_parameter_group_name(req.parameter_group.clone())
            .set_db_subnet_group_name(req.subnet_group.clone())
            .set_vpc_security_group_ids(security_groups)
            .multi_az(req.multi_az)
            .set_tags(Some(tags))
            .send()
            .await
            .map(|_| ())
            .map_err(sdk_error)
    }

    async fn promote_read_replica(&self, id: &str) -> Result<(), ApiError> {
        self.client()
            .await
            .promote_read_replica()
            .db_instance_identifier(id)
            .send()
            .await
            .map(|_| ())
            .map_err(sdk_error)
    }

    async fn rename_instance(&self, id: &str, new_id: &str) -> Result<(), ApiError> {
        self.modify_now(id, |m| m.new_db_instance_identifier(new_id))
            .await
    }

    async fn set_backup_retention(&self, id: &str, days: i32) -> Result<(), ApiError> {
        self.modify_now(id, |m| m.backup_retention_period(days))
            .await
    }

    async fn delete_instance(
        &self,
        id: &str,
        final_snapshot: Option<&str>,
    ) -> Result<(), ApiError> {
        let call = self
            .client()
            .await
            .delete_db_instance()
            .db_instance_identifier(id)
            .delete_automated_backups(false);
        let call = match final_snapshot {
            Some(snap) => call
                .skip_final_snapshot(false)
                .final_db_snapshot_identifier(snap),
            None => call.skip_final_snapshot(true),
        };
        call.send().await.map(|_| ()).map_err(sdk_error)
    }

    async fn snapshot_status(&self, snapshot_id: &str) -> Result<Option<String>, ApiError> {
        let out = self
            .client()
            .await
            .describe_db_snapshots()
            .db_snapshot_identifier(snapshot_id)
            .send()
            .await;
        absent_as_none(
            out.map(|out| {
                out.db_snapshots()
                    .iter()
                    .find(|s| s.db_snapshot_identifier() == Some(snapshot_id))
                    .map(|s| s.status().unwrap_or("unknown").to_string())
            })
            .map_err(sdk_error),
        )
    }
}
