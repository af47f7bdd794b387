//! `pgsteward check`: the configuration loaded (or the caller would not be
//! here), now reach every endpoint it names and say what each one is, and
//! read every managed table as `partitions plan` would, and write to the archive bucket.

use std::time::Duration;

use serde::Serialize;

use crate::cli::OutputFormat;
use crate::config::{Cluster, ConnString, CutoverKind, DatabaseConfig, PartitionsConfig};
use crate::localpg::LocalPgError;
use crate::outcome::Outcome;
use crate::output;
use crate::partitions::standby;
use crate::pg::{server_message, PgError};

#[derive(Debug, Serialize)]
pub struct Probe {
    pub role: &'static str,
    pub endpoint: String,
    pub ok: bool,
    /// Reachable and usable, but set up in a way the operator should know
    /// about (a hot standby whose queries a pass's locks will stall): shown
    /// as WARN, exit 0.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warning: bool,
    pub detail: String,
    /// The failure is the operator's to fix in the configuration or the
    /// environment (no password anywhere): `check` exits 2, as every command does.
    #[serde(skip)]
    pub usage: bool,
}

/// Why `check` exits 2 after printing its table.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(
        "{count} endpoint(s) cannot log in for want of a configuration or environment fix (above)"
    )]
    Usage { count: usize },
}

impl CheckError {
    pub fn metric_label(&self) -> crate::outcome::ErrorLabel {
        crate::outcome::ErrorLabel::Config
    }
}

/// Why an endpoint failed its probe; its text is the probe's detail.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("{}", server_message(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Unsupported(#[from] LocalPgError),
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),
    #[error("PostgreSQL {0}, but in recovery: this is a replica, not the primary")]
    NotPrimary(String),
    #[error("PostgreSQL {0}, but NOT in recovery: a second writable node")]
    SecondWritable(String),
}

impl ProbeError {
    fn is_usage(&self) -> bool {
        matches!(self, ProbeError::Pg(e) if e.is_usage())
    }
}

use crate::pg::sql::VERSION_AND_RECOVERY as SERVER_PROBE;

async fn probe_server(
    role: &'static str,
    conn: &ConnString,
    timeout: Duration,
    want_primary: bool,
    partitions: &PartitionsConfig,
) -> Probe {
    let endpoint = conn.to_string();
    let result = async {
        let spec = conn.spec()?;
        let client = spec.connect(timeout).await?;
        let row = client.query_one(SERVER_PROBE, &[]).await?;
        let version: String = row.get(0);
        let in_recovery: bool = row.get(1);
        crate::localpg::check_supported(&version)?;
        match (want_primary, in_recovery) {
            (true, true) => Err(ProbeError::NotPrimary(version)),
            (false, false) => Err(ProbeError::SecondWritable(version)),
            (true, false) => Ok((format!("PostgreSQL {version}, primary"), false)),
            (false, true) => {
                // How the pass's replayed locks meet this standby's queries.
                let settings = standby::read_settings(&client).await?;
                let (text, warning) = standby::verdict(&settings, partitions);
                Ok((
                    format!("PostgreSQL {version}, in recovery; {text}"),
                    warning,
                ))
            }
        }
    }
    .await;
    match result {
        Ok((detail, warning)) => Probe {
            role,
            endpoint,
            ok: true,
            warning,
            detail,
            usage: false,
        },
        Err(e) => Probe {
            role,
            endpoint,
            ok: false,
            warning: false,
            usage: e.is_usage(),
            detail: e.to_string(),
        },
    }
}

/// Every instance an admin endpoint stands for (a name: every address it
/// resolves to, see `pooler::members`), each probed on its own.
async fn probe_poolers(conn: &ConnString, timeout: Duration) -> Vec<Probe> {
    let bound = crate::pooler::members::RESOLVE_BOUND.min(timeout);
    match crate::pooler::members::instances_of(conn, bound).await {
        Ok(instances) => {
            let probes = instances
                .iter()
                .map(|i| probe_pooler(&i.admin, i.name.clone(), timeout));
            futures::future::join_all(probes).await
        }
        Err(e) => vec![Probe {
            role: "pooler",
            endpoint: conn.to_string(),
            ok: false,
            warning: false,
            usage: false,
            detail: e.to_string(),
        }],
    }
}

async fn probe_pooler(conn: &ConnString, endpoint: String, timeout: Duration) -> Probe {
    let result = async {
        let spec = conn.spec()?;
        let client = spec.connect(timeout).await?;
        // The admin console speaks only the simple query protocol.
        let msgs = client.simple_query("SHOW VERSION").await?;
        let version = msgs
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap_or_else(|| "PgBouncer".into());
        Ok::<_, ProbeError>(version)
    }
    .await;
    match result {
        Ok(detail) => Probe {
            role: "pooler",
            endpoint,
            ok: true,
            warning: false,
            detail,
            usage: false,
        },
        Err(e) => Probe {
            role: "pooler",
            endpoint,
            ok: false,
            warning: false,
            usage: e.is_usage(),
            detail: e.to_string(),
        },
    }
}

/// Every managed table read as `partitions plan` reads it: one that does not
/// exist or cannot be managed is a problem here too.
async fn probe_tables(cfg: &Cluster) -> Vec<Probe> {
    if cfg.partitions.tables.is_empty() {
        return Vec::new();
    }
    let names: Vec<crate::pg::QualifiedName> = cfg
        .partitions
        .tables
        .iter()
        .map(|t| t.table.clone())
        .collect();
    let read = async {
        let client = crate::partitions::connect(cfg).await?;
        let catalog = crate::partitions::catalog::read(&client, &names).await?;
        // Read after the catalog, as the pass reads it: a table `convert` is
        // working on is plain until its swap, and that is no problem.
        let converting = crate::partitions::converting::read(&client).await;
        Ok::<_, crate::partitions::PartitionError>((catalog, converting))
    }
    .await;
    match read {
        Err(e) => vec![Probe {
            role: "tables",
            endpoint: cfg.database.primary.to_string(),
            ok: false,
            warning: false,
            detail: e.to_string(),
            usage: false,
        }],
        Ok((catalog, converting)) => catalog
            .tables
            .into_iter()
            .map(|(name, lookup)| {
                match (
                    crate::partitions::converting::of(&converting, &name),
                    lookup,
                ) {
                    (Some(c), _) => Probe {
                        role: "table",
                        endpoint: name.to_string(),
                        ok: true,
                        usage: false,
                        warning: false,
                        detail: c.describe(),
                    },
                    (None, Ok(state)) => Probe {
                        role: "table",
                        endpoint: name.to_string(),
                        ok: true,
                        usage: false,
                        warning: false,
                        detail: format!(
                            "partitioned by range on {} ({}), {} partitions{}",
                            state.key_column,
                            format!("{:?}", state.key_type).to_lowercase(),
                            state.partitions.len(),
                            if state.default.is_some() {
                                " and a DEFAULT"
                            } else {
                                ""
                            }
                        ),
                    },
                    (None, Err(msg)) => Probe {
                        role: "table",
                        endpoint: name.to_string(),
                        ok: false,
                        detail: msg.to_string(),
                        usage: false,
                        warning: false,
                    },
                }
            })
            .collect(),
    }
}

/// Whether the steward can keep its state (`pgsteward` schema, capacity
/// samples) on the primary: the GRANT named when it cannot.
async fn probe_schema(database: &DatabaseConfig) -> Probe {
    let endpoint = database.primary.to_string();
    let result = async {
        let spec = database.primary.spec()?;
        let client = spec.connect(database.connect_timeout.0).await?;
        Ok::<_, ProbeError>(crate::schema::readiness(&client, &spec.display).await?)
    }
    .await;
    let (ok, detail) = match result {
        Ok(detail) => (true, detail),
        Err(e) => (false, e.to_string()),
    };
    Probe {
        role: "schema",
        endpoint,
        ok,
        detail,
        usage: false,
        warning: false,
    }
}

/// Publications of the primary's database that publish pgsteward's own
/// tables (`FOR ALL TABLES` cannot leave a schema out; `FOR TABLES IN SCHEMA
/// pgsteward`), when there are any (`schema::published`). Undeclared ones
/// are a warning with the fix, exit 0: archive retention, `convert` and
/// capacity samples refuse to write there (exit 1 where they run); declared
/// ones are an OK line.
async fn probe_publications(database: &DatabaseConfig) -> Option<Probe> {
    use crate::schema::published::{decide, explain, read, Verdict, Writer};
    let endpoint = database.primary.to_string();
    let rows = async {
        let spec = database.primary.spec().ok()?;
        let client = spec.connect(database.connect_timeout.0).await.ok()?;
        tokio::time::timeout(database.connect_timeout.0, read(&client, None, &endpoint))
            .await
            .ok()?
            .ok()
    }
    .await?;
    let acknowledged = &database.subscribers_have_pgsteward_schema;
    let (warning, detail) = match decide(&rows, acknowledged) {
        Verdict::Clear => return None,
        Verdict::Acknowledged(names) => (
            false,
            format!(
                "publication(s) {} publish pgsteward's own tables; declared in \
                 database.subscribers_have_pgsteward_schema (every subscriber has them)",
                names.join(", ")
            ),
        ),
        Verdict::Refuse(refused) => {
            let (_, fix) = explain(Writer::Archive, &refused, acknowledged, &endpoint);
            let list: Vec<String> = refused
                .iter()
                .map(|p| format!("{} ({})", p.name, p.how.as_str()))
                .collect();
            (
                true,
                format!(
                    "publication(s) {} also publish pgsteward's own tables in this database \
                     (pgsteward.retirements, conversions, capacity_samples, schema_version): a subscriber \
                     without them stops applying at the first row pgsteward records there, so archive \
                     retention, convert and capacity samples refuse to write them until declared. Fix: {fix}",
                    list.join(", ")
                ),
            )
        }
    };
    Some(Probe {
        role: "publications",
        endpoint,
        ok: true,
        warning,
        detail,
        usage: false,
    })
}

/// The archive bucket: it exists, and this identity may write, read and
/// delete under the prefix (a probe object, removed again).
async fn probe_archive(cfg: &crate::config::ArchiveConfig) -> Probe {
    let store = crate::archive::Store::new(cfg).await;
    let never = tokio_util::sync::CancellationToken::new();
    match store.probe(&never).await {
        Ok(detail) => Probe {
            role: "archive",
            endpoint: store.name().to_string(),
            ok: true,
            detail,
            usage: false,
            warning: false,
        },
        Err(e) => Probe {
            role: "archive",
            endpoint: store.name().to_string(),
            ok: false,
            detail: e.to_string(),
            usage: false,
            warning: false,
        },
    }
}

/// The steward's privileges for what the configuration asks of it: partition
/// maintenance for every managed table, and `pg_monitor` for lag checks and
/// server statistics. Each missing one is a failed probe naming its GRANT.
/// Upgrade privileges are `upgrade plan`'s to check (they depend on the provider).
async fn probe_privileges(cfg: &Cluster) -> Vec<Probe> {
    let mut needs = vec![crate::privileges::Required::new(
        crate::privileges::Need::RoleMember {
            role: "pg_monitor".into(),
        },
        "lag checks and server statistics",
    )];
    needs.extend(crate::partitions::needs::needs(&cfg.partitions));
    let checked = async {
        let client = crate::partitions::connect(cfg).await?;
        Ok::<_, crate::partitions::PartitionError>(crate::privileges::check(&client, &needs).await?)
    }
    .await;
    match checked {
        Err(e) => vec![Probe {
            role: "privileges",
            endpoint: cfg.database.primary.to_string(),
            ok: false,
            detail: e.to_string(),
            usage: false,
            warning: false,
        }],
        Ok(verdicts) => verdicts
            .into_iter()
            .map(|v| Probe {
                role: "privilege",
                endpoint: v.required.purpose.clone(),
                ok: v.ok,
                detail: match &v.fix {
                    None => v.detail.clone(),
                    Some(fix) => format!("{}; run: {fix}", v.detail),
                },
                usage: false,
                warning: false,
            })
            .collect(),
    }
}

/// Probes every endpoint concurrently and prints the result; an endpoint
/// that cannot log in for want of a password is a usage error (exit 2),
/// reported after the table.
pub async fn run(cfg: &Cluster, format: OutputFormat) -> Result<Outcome, CheckError> {
    let timeout = cfg.database.connect_timeout.0;
    let mut futures = Vec::new();
    futures.push(Box::pin(probe_server(
        "primary",
        &cfg.database.primary,
        timeout,
        true,
        &cfg.partitions,
    ))
        as std::pin::Pin<
            Box<dyn std::future::Future<Output = Probe> + Send + '_>,
        >);
    for r in &cfg.database.replicas {
        futures.push(Box::pin(probe_server(
            "replica",
            r,
            timeout,
            false,
            &cfg.partitions,
        )));
    }
    if let Some(a) = &cfg.archive {
        futures.push(Box::pin(probe_archive(a)));
    }
    let poolers = if cfg.cutover.kind == CutoverKind::Pgbouncer {
        cfg.cutover.admin.as_slice()
    } else {
        &[]
    };
    let pooler_probes = poolers.iter().map(|a| probe_poolers(a, timeout));
    // Polled together: awaiting in turn would add up the timeouts of dead endpoints.
    let (mut probes, pooler_probes) = futures::future::join(
        futures::future::join_all(futures),
        futures::future::join_all(pooler_probes),
    )
    .await;
    probes.extend(pooler_probes.into_iter().flatten());
    if probes.first().is_some_and(|p| p.ok) {
        probes.push(probe_schema(&cfg.database).await);
        probes.extend(probe_publications(&cfg.database).await);
        probes.extend(probe_tables(cfg).await);
        probes.extend(probe_privileges(cfg).await);
    }
    let outcome = if probes.iter().all(|p| p.ok) {
        Outcome::Healthy
    } else {
        Outcome::Problem
    };
    match format {
        OutputFormat::Json => output::print_json(&serde_json::json!({
            "config": "ok",
            "healthy": outcome == Outcome::Healthy,
            "endpoints": probes,
        })),
        OutputFormat::Text => {
            println!(
                "configuration: ok ({} managed tables)",
                cfg.partitions.tables.len()
            );
            let rows: Vec<Vec<String>> = probes
                .iter()
                .map(|p| {
                    vec![
                        p.role.to_string(),
                        p.endpoint.clone(),
                        match (p.ok, p.warning) {
                            (false, _) => "FAIL".into(),
                            (true, true) => "WARN".into(),
                            (true, false) => "ok".into(),
                        },
                        p.detail.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["ROLE", "ENDPOINT", "STATUS", "DETAIL"], &rows)
            );
        }
    }
    match probes.iter().filter(|p| p.usage).count() {
        0 => Ok(outcome),
        count => Err(CheckError::Usage { count }),
    }
}
