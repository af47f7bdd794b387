//! The `local` provider: PostgreSQL clusters on this host. The new server is a
//! `pg_basebackup -R` copy of the source in `upgrade.local.data_root/<id>` on a
//! free loopback port, with the target class's settings; it is promoted with
//! `pg_promote()` and the old primary is retired with `pg_ctl stop`.
//!
//! Everything is derived from the file system so a restarted saga finds it:
//! the data directory is `data_root/<id>`, its port is in its `pgsteward.conf`,
//! and that file is written only after the base backup completed, so its
//! presence marks a complete copy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{ConnString, LocalProviderConfig, ProviderKind};
use crate::localpg::{self, Cluster, StopMode};
use crate::provider::settings::class_wins;
use crate::provider::slotsync;
use crate::provider::sql::{CLASS_SETTING, IN_RECOVERY, MAKE_STANDBY_SLOT, PROMOTE, SOURCE_FACTS};
use crate::provider::{
    endpoint_like, replica_id, settings, Check, Follow, Precheck, Provider, ProviderError,
    ReplicaInfo, ServerState, SourceFacts,
};

/// How long one replica may take to answer while it is repointed.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(10);

/// Set by tests and the demo: every server this provider starts is stopped
/// once that process is gone (see `localpg::stop_when_gone`). Never set in production.
pub const OWNER_PID_ENV: &str = "PGSTEWARD_LOCAL_OWNER_PID";

pub struct LocalProvider {
    /// A connection to the server about to be promoted, opened before the write pause.
    promote_conn: tokio::sync::Mutex<Option<(String, tokio_postgres::Client)>>,
    primary: ConnString,
    connect_timeout: Duration,
    cfg: LocalProviderConfig,
}

impl LocalProvider {
    pub fn new(cfg: &crate::config::Cluster) -> Result<LocalProvider, ProviderError> {
        Ok(LocalProvider {
            promote_conn: tokio::sync::Mutex::new(None),
            primary: cfg.database.primary.clone(),
            connect_timeout: cfg.database.connect_timeout.0,
            cfg: cfg.upgrade.local.clone(),
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.data_root.join(id)
    }

    fn class_settings(&self, class: &str) -> Result<Vec<(String, String)>, ProviderError> {
        let settings = self.cfg.classes.get(class).ok_or_else(|| {
            ProviderError::Usage(format!(
                "target class {class:?} is not defined; add [upgrade.local.classes.{class}] (defined: {})",
                self.known_classes()
            ))
        })?;
        Ok(settings
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect())
    }

    fn known_classes(&self) -> String {
        let names: Vec<&str> = self.cfg.classes.keys().map(String::as_str).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// The port recorded in the cluster's `pgsteward.conf`; `None` while the copy is incomplete.
    fn recorded_port(dir: &Path) -> Option<u16> {
        let text = std::fs::read_to_string(dir.join("pgsteward.conf")).ok()?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "port").then(|| v.trim().parse().ok())?
        })
    }

    fn cluster(&self, dir: &Path, port: u16) -> Result<Cluster, ProviderError> {
        Ok(Cluster::at(dir, port, self.cfg.bin_dir.as_deref())?)
    }

    fn endpoint(&self, port: u16) -> ConnString {
        endpoint_like(&self.primary, "127.0.0.1", port)
    }

    fn watch(cluster: &Cluster) {
        if let Some(pid) = std::env::var(OWNER_PID_ENV)
            .ok()
            .and_then(|p| p.parse().ok())
        {
            if let Err(e) = localpg::stop_when_gone(cluster, pid) {
                tracing::warn!(error = %e, "cannot start the server watchdog");
            }
        }
    }

    async fn connect(
        &self,
        endpoint: &ConnString,
    ) -> Result<tokio_postgres::Client, ProviderError> {
        Ok(endpoint.spec()?.connect(self.connect_timeout).await?)
    }

    /// The source's values of the settings a standby may not run below.
    async fn source_floors(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<Vec<(String, i64)>, ProviderError> {
        settings::source_floors(client)
            .await
            .map_err(|e| pg_err(&self.primary, e))
    }
}

/// The stable part of a local source's name: the data directory's base name
/// without the `-u<id>` suffixes earlier upgrades appended, so names (and the
/// socket paths derived from them) do not grow with every upgrade.
pub fn source_name(data_directory: &Path) -> String {
    let base = data_directory
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pg".into());
    let mut kept = Vec::new();
    for part in base.split('-') {
        if part.len() > 8 && part.starts_with('u') && part[1..].chars().all(|c| c.is_ascii_digit())
        {
            break;
        }
        kept.push(part);
    }
    let name = kept.join("-");
    if name.is_empty() {
        "pg".into()
    } else {
        name
    }
}

/// Whether `current` (as `current_setting` shows it) already equals `wanted`.
/// `program` is of the server's major, or the error says which it is and how to fix it.
fn same_major(program: &Path, server: u32) -> Result<(), localpg::LocalPgError> {
    let found = localpg::program_major(program)?;
    if found == server {
        Ok(())
    } else {
        Err(localpg::LocalPgError::WrongMajor {
            program: program.display().to_string(),
            found,
            server,
        })
    }
}

fn same_setting(current: &str, wanted: &str) -> bool {
    let norm = |s: &str| {
        s.trim()
            .trim_matches('\'')
            .to_ascii_lowercase()
            .replace(' ', "")
    };
    norm(current) == norm(wanted)
}

fn blocking_err(e: tokio::task::JoinError) -> ProviderError {
    ProviderError::Api {
        op: "local server task",
        detail: e.to_string(),
    }
}

#[async_trait::async_trait]
impl Provider for LocalProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Local
    }

    fn new_server_address(&self, new_id: &str) -> String {
        format!(
            "127.0.0.1 on a free port chosen when it is made (recorded in its pgsteward.conf), \
             data directory {}",
            self.dir(new_id).display()
        )
    }

    /// The new server streams through a slot of its own and synchronizes
    /// the source's failover slots (`provider::slotsync`); `upgrade::slots`
    /// refuses any logical slot before PostgreSQL 17 or without failover.
    fn syncs_failover_slots(&self) -> bool {
        true
    }

    fn carries_physical_slots(&self) -> bool {
        true
    }

    async fn precheck(&self, target_class: &str) -> Result<Precheck, ProviderError> {
        let settings = self.class_settings(target_class)?;
        let client = self.connect(&self.primary).await?;
        let row = client
            .query_one(SOURCE_FACTS, &[])
            .await
            .map_err(|e| pg_err(&self.primary, e))?;
        let data_directory = PathBuf::from(row.get::<_, String>(0));
        let server_major = localpg::major_of_version_num(row.get(2));
        let mut checks = Vec::new();
        let mut differing = Vec::new();
        for (name, wanted) in &settings {
            let row = client
                .query_opt(CLASS_SETTING, &[name])
                .await
                .map_err(|e| pg_err(&self.primary, e))?;
            match row {
                None => checks.push(Check::new(
                    format!("class setting {name}"),
                    false,
                    format!("{name} is not a server setting; fix [upgrade.local.classes.{target_class}]"),
                )),
                Some(r) => {
                    let current: String = r.get(2);
                    if !same_setting(&current, wanted) {
                        differing.push(format!("{name} {current} -> {wanted}"));
                    }
                }
            }
        }
        let (_, below) =
            settings::with_source_floors(&self.source_floors(&client).await?, &settings);
        checks.push(Check::new(
            "class keeps the source's standby minimums",
            below.is_empty(),
            below
                .iter()
                .map(|b| format!("{b} in [upgrade.local.classes.{target_class}]"))
                .collect::<Vec<_>>()
                .join("; "),
        ));
        checks.push(Check::new(
            "target class differs",
            !differing.is_empty(),
            if differing.is_empty() {
                format!("the source already runs with every setting of class {target_class:?}; pick a larger class")
            } else {
                differing.join(", ")
            },
        ));
        let root_ok = std::fs::create_dir_all(&self.cfg.data_root).is_ok();
        checks.push(Check::new(
            "data_root writable",
            root_ok,
            if root_ok {
                self.cfg.data_root.display().to_string()
            } else {
                format!(
                    "cannot create {}; set upgrade.local.data_root to a writable directory",
                    self.cfg.data_root.display()
                )
            },
        ));
        // The copy is made and run by the source's major: pg_basebackup
        // refuses newer servers, and a data directory runs only under its own
        // major's postgres.
        for program in ["pg_basebackup", "pg_ctl", "postgres"] {
            let found = localpg::find_program(program, self.cfg.bin_dir.as_deref())
                .and_then(|p| same_major(&p, server_major).map(|()| p));
            checks.push(Check::new(
                format!("{program} of PostgreSQL {server_major} installed"),
                found.is_ok(),
                match found {
                    Ok(p) => p.display().to_string(),
                    Err(e) => e.to_string(),
                },
            ));
        }
        Ok(Precheck {
            source: SourceFacts {
                id: source_name(&data_directory),
                data_directory: Some(data_directory),
                extra: Default::default(),
                // Local replicas are repointed (follow_new_primary), not replaced.
                readers: Vec::new(),
                // Read by the upgrade itself (`upgrade::observe`).
                slots: Vec::new(),
            },
            checks,
        })
    }

    /// Crash safety: a base backup interrupted half way leaves a directory
    /// without `pgsteward.conf`; it is removed and made again. A complete copy
    /// that is not running is started.
    async fn create_replica(
        &self,
        source: &SourceFacts,
        upgrade_id: &str,
        target_class: &str,
    ) -> Result<ReplicaInfo, ProviderError> {
        let id = replica_id(&source.id, upgrade_id);
        let dir = self.dir(&id);
        let class = self.class_settings(target_class)?;
        // A standby refuses to start below its primary's values of a few
        // settings; the copy keeps the source's unless the class raises them.
        let client = self.connect(&self.primary).await?;
        let (mut settings, below) =
            settings::with_source_floors(&self.source_floors(&client).await?, &class);
        if let Some(b) = below.first() {
            return Err(ProviderError::Usage(format!(
                "{b} in [upgrade.local.classes.{target_class}]"
            )));
        }
        let spec = self.primary.spec()?;
        // Logical slots to carry: the copy streams through a slot of its own
        // (made before it copies anything) and synchronizes them.
        let slot_sync = source
            .syncs_logical_slots()
            .then(|| slotsync::standby_slot(&id));
        if let Some(slot) = &slot_sync {
            client
                .execute(MAKE_STANDBY_SLOT, &[slot])
                .await
                .map_err(|e| pg_err(&self.primary, e))?;
            settings.extend(
                slotsync::SYNC_SETTINGS
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            );
        }
        drop(client);
        let dbname = spec.dbname().to_string();
        let (host, source_port) = spec.host_port();
        let user = spec.user().unwrap_or("postgres").to_string();
        // database.primary's own password, wherever libpq's rules found it
        // (string, PGPASSWORD, password file): handed to pg_basebackup in a
        // private password file, never on its command line.
        let password = spec.password().map(str::to_string);
        let bin_dir = self.cfg.bin_dir.clone();
        let cluster = tokio::task::spawn_blocking(move || -> Result<Cluster, ProviderError> {
            let cluster = match LocalProvider::recorded_port(&dir) {
                Some(port) => Cluster::at(&dir, port, bin_dir.as_deref())?,
                None => {
                    if dir.exists() {
                        tracing::info!(dir = %dir.display(), "removing an incomplete base backup");
                        remove_cluster_files(&dir)?;
                    }
                    let port = localpg::free_port()?;
                    let mut login = localpg::ChildLogin::new(
                        &host,
                        source_port,
                        &user,
                        password.as_deref(),
                        localpg::ServerUser::detect()?,
                    )?;
                    if slot_sync.is_some() {
                        login.slot = slot_sync;
                        login.dbname = Some(dbname);
                    }
                    let cluster =
                        Cluster::basebackup_as(&login, &dir, port, bin_dir.as_deref(), &settings)?;
                    class_wins(&dir, &settings)?;
                    cluster
                }
            };
            if !cluster.is_running() {
                cluster.start()?;
            }
            Ok(cluster)
        })
        .await
        .map_err(blocking_err)??;
        LocalProvider::watch(&cluster);
        Ok(ReplicaInfo {
            id,
            state: ServerState::Available,
            endpoint: Some(self.endpoint(cluster.port)),
            class: Some(target_class.to_string()),
        })
    }

    async fn describe(&self, id: &str) -> Result<ReplicaInfo, ProviderError> {
        let dir = self.dir(id);
        let (state, endpoint) = if !dir.exists() {
            (ServerState::Missing, None)
        } else {
            match LocalProvider::recorded_port(&dir) {
                None => (ServerState::Creating, None),
                Some(port) => {
                    let cluster = self.cluster(&dir, port)?;
                    let state = if cluster.is_running() {
                        ServerState::Available
                    } else {
                        ServerState::Failed(format!(
                            "not running (log: {}); `upgrade resume` starts it",
                            cluster.log_file.display()
                        ))
                    };
                    (state, Some(self.endpoint(port)))
                }
            }
        };
        Ok(ReplicaInfo {
            id: id.to_string(),
            state,
            endpoint,
            class: None,
        })
    }

    async fn prepare_promote(&self, id: &str) -> Result<(), ProviderError> {
        let mut slot = self.promote_conn.lock().await;
        if let Some((held, c)) = slot.as_ref() {
            if held == id && !c.is_closed() {
                return Ok(());
            }
        }
        let endpoint = self.running_endpoint(id).await?;
        *slot = Some((id.to_string(), self.connect(&endpoint).await?));
        Ok(())
    }

    async fn promote(&self, id: &str) -> Result<(), ProviderError> {
        self.prepare_promote(id).await?;
        let slot = self.promote_conn.lock().await;
        let Some((_, client)) = slot.as_ref() else {
            return Err(ProviderError::Api {
                op: "promote",
                detail: "no connection".into(),
            });
        };
        let target = || format!("server {id}");
        let in_recovery: bool = client
            .query_one(IN_RECOVERY, &[])
            .await
            .map_err(|e| api("promote", target(), e))?
            .get(0);
        if in_recovery {
            // wait => false: pg_promote(wait => true) sleeps in 100 ms steps; the saga
            // polls pg_is_in_recovery() on its own connection instead.
            client
                .query_one(PROMOTE, &[])
                .await
                .map_err(|e| api("promote", target(), e))?;
        }
        Ok(())
    }

    async fn retire_old(&self, source: &SourceFacts) -> Result<(), ProviderError> {
        let Some(dir) = source.data_directory.clone() else {
            return Err(ProviderError::WrongState {
                id: source.id.clone(),
                state: "unknown data directory".into(),
                hint: "the precheck did not record it; stop the old server by hand".into(),
            });
        };
        let keep = self.cfg.keep_old_data;
        let bin_dir = self.cfg.bin_dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(), ProviderError> {
            let cluster = Cluster::at(&dir, 0, bin_dir.as_deref())?;
            cluster.stop(StopMode::Fast)?;
            if !keep && dir.exists() {
                remove_cluster_files(&dir)?;
            }
            Ok(())
        })
        .await
        .map_err(blocking_err)?
    }

    /// Rewrites host and port in each replica's `primary_conninfo`
    /// (reloadable since PostgreSQL 13) with `ALTER SYSTEM`: self-managed
    /// servers allow it. One that does not answer does not hold up the upgrade.
    async fn follow_new_primary(
        &self,
        replicas: &[ConnString],
        new_primary: &ConnString,
    ) -> Vec<(ConnString, Follow)> {
        let Ok(spec) = new_primary.spec() else {
            return Vec::new();
        };
        let (host, port) = spec.host_port();
        let mut out = Vec::new();
        for r in replicas {
            let once = tokio::time::timeout(
                FOLLOW_TIMEOUT + self.connect_timeout,
                self.follow_one(r, &host, port),
            );
            let outcome = match once.await {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => Follow::Unreachable(e.to_string()),
                Err(_) => Follow::Unreachable(format!("no answer within {FOLLOW_TIMEOUT:?}")),
            };
            out.push((r.clone(), outcome));
        }
        out
    }

    async fn delete_replica(&self, id: &str) -> Result<(), ProviderError> {
        let dir = self.dir(id);
        let bin_dir = self.cfg.bin_dir.clone();
        let slot = slotsync::standby_slot(id);
        let named = slot.clone();
        let streamed_through_slot =
            tokio::task::spawn_blocking(move || -> Result<bool, ProviderError> {
                if !dir.exists() {
                    return Ok(false);
                }
                // `primary_slot_name` in the copy's postgresql.auto.conf
                // (pg_basebackup -R -S wrote it): the source has its slot.
                let through_slot = std::fs::read_to_string(dir.join("postgresql.auto.conf"))
                    .is_ok_and(|t| t.contains(&named));
                let cluster = Cluster::at(&dir, 0, bin_dir.as_deref())?;
                cluster.stop(StopMode::Immediate)?;
                remove_cluster_files(&dir)?;
                Ok(through_slot)
            })
            .await
            .map_err(blocking_err)??;
        // Its slot on the source would keep WAL there forever. A copy that
        // stopped before writing its settings may have left one too: tried,
        // but then a source that does not answer does not fail the delete.
        match self.drop_standby_slot(&slot).await {
            Err(e) if !streamed_through_slot => {
                tracing::warn!(slot = %slot, error = %e, "could not check the source for the deleted server's slot");
                Ok(())
            }
            other => other,
        }
    }
}

impl LocalProvider {
    async fn running_endpoint(&self, id: &str) -> Result<ConnString, ProviderError> {
        let info = self.describe(id).await?;
        match info.endpoint {
            Some(e) if info.state == ServerState::Available => Ok(e),
            _ => Err(ProviderError::WrongState {
                id: id.to_string(),
                state: format!("{:?}", info.state),
                hint: "only a running replica can be promoted".into(),
            }),
        }
    }
}

fn api(op: &'static str, target: String, e: tokio_postgres::Error) -> ProviderError {
    ProviderError::Api {
        op,
        detail: format!("{target}: {}", crate::pg::server_message(&e)),
    }
}

/// Removes a data directory and the log and socket directory `Cluster` keeps beside it.
fn remove_cluster_files(dir: &Path) -> Result<(), ProviderError> {
    for p in [dir.to_path_buf(), dir.with_extension("sock")] {
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| ProviderError::Api {
                op: "remove data directory",
                detail: format!("{}: {e}", p.display()),
            })?;
        }
    }
    let log = dir.with_extension("log");
    if log.exists() {
        let _ = std::fs::remove_file(log);
    }
    Ok(())
}

fn pg_err(target: &ConnString, e: tokio_postgres::Error) -> ProviderError {
    ProviderError::Pg(crate::pg::PgError::Query {
        target: target.to_string(),
        source: e,
    })
}

// Dropping the new server's slot, repointing a replica: SQL on running servers.
#[path = "local_running.rs"]
mod running;

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
