//! `pgsteward check`: the configuration loaded (or the caller would not be
//! here), now reach every endpoint it names and say what each one is, and
//! read every managed table as `partitions plan` would.

use std::time::Duration;

use serde::Serialize;

use crate::cli::OutputFormat;
use crate::config::{Config, ConnString, CutoverKind, PartitionsConfig};
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
    #[error("PostgreSQL {0}, but in recovery: this is a replica, not the primary")]
    NotPrimary(String),
    #[error("PostgreSQL {0}, but NOT in recovery: a second writable node")]
    SecondWritable(String),
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
        },
        Err(e) => Probe {
            role,
            endpoint,
            ok: false,
            warning: false,
            detail: e.to_string(),
        },
    }
}

async fn probe_pooler(conn: &ConnString, timeout: Duration) -> Probe {
    let endpoint = conn.to_string();
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
        },
        Err(e) => Probe {
            role: "pooler",
            endpoint,
            ok: false,
            warning: false,
            detail: e.to_string(),
        },
    }
}

/// Every managed table read as `partitions plan` reads it: one that does not
/// exist or cannot be managed is a problem here too.
async fn probe_tables(cfg: &Config) -> Vec<Probe> {
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
        crate::partitions::catalog::read(&client, &names).await
    }
    .await;
    match read {
        Err(e) => vec![Probe {
            role: "tables",
            endpoint: cfg.database.primary.to_string(),
            ok: false,
            warning: false,
            detail: e.to_string(),
        }],
        Ok(catalog) => catalog
            .tables
            .into_iter()
            .map(|(name, lookup)| match lookup {
                Ok(state) => Probe {
                    role: "table",
                    endpoint: name.to_string(),
                    ok: true,
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
                Err(msg) => Probe {
                    role: "table",
                    endpoint: name.to_string(),
                    ok: false,
                    warning: false,
                    detail: msg.to_string(),
                },
            })
            .collect(),
    }
}

/// Probes every endpoint concurrently and prints the result.
pub async fn run(cfg: &Config, format: OutputFormat) -> Outcome {
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
    if cfg.cutover.kind == CutoverKind::Pgbouncer {
        for a in &cfg.cutover.admin {
            futures.push(Box::pin(probe_pooler(a, timeout)));
        }
    }
    // Polled together: awaiting in turn would add up the timeouts of dead endpoints.
    let mut probes: Vec<Probe> = futures::future::join_all(futures).await;
    if probes.first().is_some_and(|p| p.ok) {
        probes.extend(probe_tables(cfg).await);
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
    outcome
}
