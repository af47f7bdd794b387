//! `pgsteward demo`: the whole cycle on a throwaway primary + replica +
//! PgBouncer in a temporary directory: a partition pass, a lag check, then a
//! zero-downtime upgrade to a larger class while a built-in client writes
//! through PgBouncer. Prints the step timeline, the write pause the client saw
//! and how many acknowledged commits the new primary has (all of them).
//!
//! Every server is stopped when the demo returns, fails or panics, and by a
//! watchdog when this process is killed.

use std::path::Path;
use std::time::{Duration, Instant};

use figment::providers::{Format, Toml};
use figment::Figment;

use crate::cli::{DemoArgs, OutputFormat};
use crate::config::Config;
use crate::localpg::{self, Cluster, LocalPgBouncer, PgBouncerDatabase, StopMode};
use crate::outcome::Outcome;
use crate::workload::{Plan, LEDGER_TABLE};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    LocalPg(#[from] crate::localpg::LocalPgError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error(transparent)]
    Upgrade(#[from] crate::upgrade::UpgradeError),
    #[error("demo: partition pass: {0}")]
    Partitions(#[from] crate::partitions::PartitionError),
    #[error("demo: lag check: {0}")]
    Lag(#[from] crate::lag::LagError),
    #[error("demo: temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("demo: the upgrade recorded no new endpoint")]
    NoNewEndpoint,
    #[error("demo: docs/privileges.md compiled into this binary has no block {0}")]
    NoPrivilegeBlock(&'static str),
    #[error("demo: the server's version {0:?} is not a number")]
    ServerVersion(String),
}

impl DemoError {
    /// The failure kind for metrics: one per subsystem.
    pub fn metric_label(&self) -> crate::outcome::ErrorLabel {
        crate::outcome::ErrorLabel::Demo
    }
}

/// The partitioned table of the demo's partition pass ([`LEDGER_TABLE`] is
/// what its client writes to).
const EVENTS_TABLE: &str = "CREATE TABLE events (id bigint NOT NULL, at timestamptz NOT NULL, body text) PARTITION BY RANGE (at)";

/// Every id the client wrote, on whichever node it is read.
const LEDGER_IDS: &str = "SELECT id FROM ledger";
/// The role names docs/privileges.md's blocks use.
const STEWARD: &str = "steward";
const OWNER: &str = "app_owner";

fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every server the demo started, stopped when it is dropped: on an error
/// (`?`), a panic or the normal end alike. Declared after the demo's
/// directory, so it is dropped first: the servers stop before their data
/// directories are removed (a watchdog's `pg_ctl stop` cannot find a server
/// whose directory is gone).
struct Servers {
    clusters: Vec<Cluster>,
    /// Where the local provider makes the upgrade's new primary.
    data_root: std::path::PathBuf,
    pooler: Option<LocalPgBouncer>,
}

impl Servers {
    fn stop(&mut self, mode: StopMode) -> Result<(), DemoError> {
        if let Some(mut p) = self.pooler.take() {
            p.stop();
        }
        if let Ok(entries) = std::fs::read_dir(&self.data_root) {
            for e in entries.flatten() {
                if e.path().join("postmaster.pid").exists() {
                    let _ = Cluster::at(&e.path(), 0, None).map(|c| c.stop(mode));
                }
            }
        }
        let mut first_error = None;
        // Replicas before the primary: nothing reconnects to a stopped primary.
        while let Some(c) = self.clusters.pop() {
            if let Err(e) = c.stop(mode) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.stop(StopMode::Immediate);
    }
}

pub async fn run(args: &DemoArgs) -> Result<Outcome, DemoError> {
    let t0 = Instant::now();
    let user = localpg::ServerUser::detect()?;
    let dir = tempfile::Builder::new()
        .prefix("pgsteward-demo-")
        .tempdir()
        .map_err(DemoError::TempDir)?;
    localpg::make_server_dir(dir.path(), user)?;
    let mut servers = Servers {
        clusters: Vec::new(),
        data_root: dir.path().join("clusters"),
        pooler: None,
    };
    let me = std::process::id();
    // The local provider registers its servers with the same watchdog.
    std::env::set_var(crate::provider::local::OWNER_PID_ENV, me.to_string());
    println!("demo directory {}", dir.path().display());

    let small = settings(&[
        ("shared_buffers", "32MB"),
        ("max_connections", "60"),
        ("wal_receiver_status_interval", "1s"),
        ("log_min_messages", "warning"),
    ]);
    // Authentication as deployed: scram-sha-256 on every TCP login, and
    // distinct users and passwords (made for this run, never shown) for the
    // superuser (setup only), the steward (exactly the grants of
    // docs/privileges.md), the application and the PgBouncer admin.
    let steward_pw = new_password();
    let app_pw = new_password();
    let primary = Cluster::init_with_password(
        &dir.path().join("primary"),
        localpg::free_port()?,
        None,
        &small,
        Some(&new_password()),
    )?;
    // Registered before it starts: a start that times out may leave it running.
    servers.clusters.push(primary.clone());
    primary.start()?;
    localpg::stop_when_gone(&primary, me)?;
    make_roles_and_database(&primary, &steward_pw)?;
    primary.psql(
        "app",
        &format!("SET ROLE {OWNER}; {LEDGER_TABLE}; {EVENTS_TABLE};"),
    )?;
    primary.psql_secret(
        "app",
        &format!(
            "CREATE ROLE app LOGIN NOSUPERUSER PASSWORD {}; GRANT SELECT, INSERT ON ledger TO app;",
            crate::pg::quote_literal(&app_pw)
        ),
    )?;
    let replica = Cluster::basebackup(
        &primary,
        &dir.path().join("replica"),
        localpg::free_port()?,
        &small,
    )?;
    servers.clusters.push(replica.clone());
    replica.start()?;
    localpg::stop_when_gone(&replica, me)?;
    let pooler = LocalPgBouncer::start(
        &dir.path().join("pgbouncer"),
        localpg::free_port()?,
        &[PgBouncerDatabase {
            name: "app".into(),
            host: "127.0.0.1".into(),
            port: primary.port,
            dbname: "app".into(),
        }],
        &localpg::PgBouncerAuth {
            admin: localpg::PgBouncerUser::new("pgbouncer", Some(&new_password())),
            users: vec![
                localpg::PgBouncerUser::new(STEWARD, Some(&steward_pw)),
                localpg::PgBouncerUser::new("app", Some(&app_pw)),
            ],
        },
        &[("query_wait_timeout", "30")],
    )?;
    println!(
        "primary :{}  replica :{}  pgbouncer :{}  ({:.1}s)",
        primary.port,
        replica.port,
        pooler.port,
        t0.elapsed().as_secs_f64()
    );
    let cfg = demo_config(dir.path(), &primary, &replica, &pooler, &steward_pw)?.cluster;
    // The demo's client is the application's role, as in production.
    let pooler_url = pooler.url("app", "app");
    servers.pooler = Some(pooler);

    println!("\n== partition pass (public.events, daily, 3 ahead)");
    let parts = crate::partitions::apply_command(&cfg, OutputFormat::Text).await?;
    println!("\n== lag check");
    let lag = crate::lag::lag_command(&cfg, OutputFormat::Text).await?;

    println!("\n== upgrade to class \"large\" while a client writes through PgBouncer");
    let writer = Plan::ledger_writers(4)
        .pace(Duration::from_millis(2))
        .max_run(Duration::from_secs(120))
        .start(&crate::pg::ConnSpec::parse(&pooler_url)?);
    // Warm up; a slow start only makes the timeline shorter, so go on anyway.
    if let Err(e) = writer.wait_acked(100, Duration::from_secs(10)).await {
        tracing::warn!(error = %e, "the demo's client is slow to start");
    }
    let result = crate::upgrade::start(&cfg, "large", false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = writer.stop().await;
    let summary = result?;

    let new_url = summary
        .record
        .replica_endpoint()
        .ok_or(DemoError::NoNewEndpoint)?
        .to_string();
    // The journal keeps no password: the steward's own login, at the new address.
    let (host, port) = crate::pg::ConnSpec::parse(&new_url)?.host_port();
    let new_endpoint = crate::provider::endpoint_like(&cfg.database.primary, &host, port);
    let client = new_endpoint.spec()?.connect(Duration::from_secs(5)).await?;
    let rows = client
        .query(LEDGER_IDS, &[])
        .await
        .map_err(|source| crate::pg::PgError::Query {
            target: new_endpoint.to_string(),
            source,
        })?;
    let have: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let found = log.acked.iter().filter(|id| have.contains(id)).count();

    println!("\n== step timeline");
    for (step, took, status) in crate::upgrade::step_timings(&summary.record) {
        println!(
            "  {:<18} {:>10}  {:?}",
            step.name(),
            took.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
                .unwrap_or_default(),
            status
        );
    }
    println!("\n== what the client saw");
    if let Some(w) = summary.pause_window {
        println!(
            "  server-side pause (PAUSE -> RESUME):   {:.1} ms",
            w.as_secs_f64() * 1000.0
        );
    }
    println!(
        "  longest transaction:                   {:.1} ms",
        log.max_latency().as_secs_f64() * 1000.0
    );
    println!(
        "  largest gap between commits:           {:.1} ms",
        log.max_gap().as_secs_f64() * 1000.0
    );
    println!(
        "  client errors:                         {}",
        log.errors.len()
    );
    println!(
        "  acknowledged commits on new primary:   {found} of {} {}",
        log.acked.len(),
        if found == log.acked.len() {
            "(all)"
        } else {
            "(MISSING SOME)"
        }
    );
    println!("  new primary: {new_url}");

    // Clean up: the new primary (made by the provider), the replica, PgBouncer.
    drop(client);
    servers.stop(StopMode::Fast)?;
    let kept = dir.keep();
    if args.keep {
        println!("kept {}", kept.display());
    } else {
        // Deleting a few hundred MB of data directories takes seconds on a
        // discard-mounted disk; a detached `rm` does it without holding the prompt.
        let spawned = std::process::Command::new("rm")
            .arg("-rf")
            .arg(&kept)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            println!("could not remove {}: {e}", kept.display());
        }
    }
    println!("demo finished in {:.1}s", t0.elapsed().as_secs_f64());
    let ok = found == log.acked.len() && log.errors.is_empty();
    Ok(if ok { parts.and(lag) } else { Outcome::Problem })
}

/// The steward as docs/privileges.md makes it (never a superuser): the page's
/// blocks for every feature and for `local` upgrades, compiled into this
/// binary, so the demo runs with exactly what an operator grants. The
/// application's tables belong to [`OWNER`], as a migration role's would.
fn make_roles_and_database(primary: &Cluster, steward_pw: &str) -> Result<(), DemoError> {
    use crate::privileges::documented::{self as doc, documented_sql};
    let num = primary.psql("postgres", "SHOW server_version_num")?;
    let num: i32 = num
        .trim()
        .parse()
        .map_err(|_| DemoError::ServerVersion(num.trim().to_string()))?;
    let major = localpg::major_of_version_num(num);
    let block = |name: &'static str| {
        documented_sql(name, major, steward_pw, "app").ok_or(DemoError::NoPrivilegeBlock(name))
    };
    primary.psql("postgres", &format!("CREATE ROLE {OWNER} NOLOGIN"))?;
    primary.psql_secret(
        "postgres",
        &format!(
            "{}{}",
            block(doc::CLUSTER)?,
            block(doc::UPGRADE_LOCAL_CLUSTER)?
        ),
    )?;
    primary.psql("postgres", &format!("CREATE DATABASE app OWNER {OWNER}"))?;
    // Before 15 the public schema is the bootstrap superuser's; an operator
    // hands it to the application's owner as 15 does for new databases.
    let public_owner = if major < 15 {
        format!("ALTER SCHEMA public OWNER TO {OWNER};\n")
    } else {
        String::new()
    };
    primary.psql_secret(
        "app",
        &format!(
            "{public_owner}{}{}",
            block(doc::DATABASE)?,
            block(doc::UPGRADE_LOCAL_DATABASE)?
        ),
    )?;
    Ok(())
}

/// A random password for one demo run.
fn new_password() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(24)
        .collect()
}

fn demo_config(
    dir: &Path,
    primary: &Cluster,
    replica: &Cluster,
    pooler: &LocalPgBouncer,
    steward_pw: &str,
) -> Result<Config, DemoError> {
    let steward_url = |c: &Cluster| {
        format!(
            "postgres://{STEWARD}:{}@127.0.0.1:{}/app?sslmode=disable",
            crate::pg::conninfo::url_encode(steward_pw),
            c.port
        )
    };
    let toml = format!(
        r#"
[database]
primary = "{primary}"
replicas = ["{replica}"]

[partitions]
schedule = "0 * * * *"
[[partitions.tables]]
table = "public.events"
interval = "daily"
premake = 3

[upgrade]
provider = "local"
state_dir = "{state}"
catchup_max_bytes = "1MB"
pause_timeout = "5s"
retire_after = "0s"

[upgrade.local]
data_root = "{root}"
[upgrade.local.classes.large]
shared_buffers = "64MB"
max_connections = "100"
wal_receiver_status_interval = "1s"
log_min_messages = "warning"

[cutover]
kind = "pgbouncer"
admin = ["{admin}"]
config_file = "{ini}"
database = "app"
"#,
        primary = steward_url(primary),
        replica = steward_url(replica),
        state = dir.join("state").display(),
        root = dir.join("clusters").display(),
        admin = pooler.admin_url(),
        ini = pooler.ini.display(),
    );
    Ok(crate::config::from_figment(
        Figment::new().merge(Toml::string(&toml)),
        None,
    )?)
}
