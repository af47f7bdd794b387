//! The PgBouncer admin console (simple query protocol only: the console does
//! not speak the extended protocol) and the `[databases]` rewrite (`ini`).
//!
//! An admin endpoint stands for every instance its name resolves to
//! (`members`: a headless Service's pods). Every instance is driven
//! together, and on each every `[databases]` entry that reaches the primary
//! (see [`Poolers::discover`]), not only `cutover.database`: PAUSE is sent to
//! all at once and confirmed on each (`window`), RELOAD and RESUME go to
//! all. PAUSE blocks its connection until in-flight transactions end, so
//! each paused database has a connection of its own and everything else
//! (RESUME, the way back after a missed deadline) goes over another.
//!
//! **RESUME reaches every instance independently**: each over its own
//! connection (opened then if it is not open), under its own timeout, all
//! at once; a hung instance delays nobody else's RESUME, and the error says
//! which instances and databases were not resumed.
//!
//! `stats` reads the pools (SHOW POOLS, DATABASES, LISTS, STATS) for the
//! metrics and the pre-pause health gate.

pub mod ini;
pub mod members;
pub mod reach;
pub mod sql;
pub mod stats;
mod window;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::config::{Cluster, ConnString};
pub use ini::{database_lines, ini_entries, ini_target, retarget_ini, rewrite_ini, Durability};
use members::Instance;
use reach::{discover_one, show_databases};
pub use reach::{pooled_session, pooler_spec, Servers};
pub use stats::{GateLimits, InstanceStats, PoolStats};
pub use window::{InstancePause, PauseReport};

#[derive(Debug, thiserror::Error)]
pub enum PoolerError {
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error("pgbouncer {target}: {command} failed: {detail}")]
    Command {
        target: String,
        command: String,
        detail: String,
    },
    #[error("pgbouncer {target} did not finish PAUSE within {timeout:?}: a transaction is still open through it (see SHOW CLIENTS); writes were resumed")]
    PauseTimeout { target: String, timeout: Duration },
    #[error("pgbouncer {target}: database {database} is already paused, and not by this upgrade; refusing to lift someone else's PAUSE (RESUME it by hand once its owner is done)")]
    PausedByOther { target: String, database: String },
    #[error("pgbouncer {target}: no answer to {command} within {after:?}")]
    Timeout {
        target: String,
        command: String,
        after: Duration,
    },
    #[error("RESUME reached {resumed} PgBouncer database(s) but not: {}", .failed.join("; "))]
    NotResumed { resumed: usize, failed: Vec<String> },
    #[error("pgbouncer config {path}: {detail}")]
    Ini { path: PathBuf, detail: String },
    #[error(
        "no pgbouncer admin endpoint configured: set cutover.admin (or cutover.kind = \"none\")"
    )]
    NotConfigured,
    #[error("pgbouncer {endpoint}: {detail}")]
    Resolve { endpoint: String, detail: String },
    #[error("pgbouncer {target}: PAUSE returned but SHOW DATABASES shows {database} not paused; writes were resumed")]
    NotPaused { target: String, database: String },
    #[error("the pause was not started, a pooler is saturated (clients would time out in the pause): {}", .0.join("; "))]
    Saturated(Vec<String>),
}

/// One `[databases]` entry as `SHOW DATABASES` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseEntry {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub paused: bool,
    /// The entry's own `pool_mode`, `None` when it uses the instance's.
    pub pool_mode: Option<String>,
}

/// A configured admin endpoint (`cutover.admin`), and its pgbouncer.ini.
struct Source {
    admin: ConnString,
    ini: Option<PathBuf>,
}

/// One PgBouncer instance (see `members`).
struct Endpoint {
    /// Which `cutover.admin` entry stands for it.
    source: usize,
    /// Its label and key: `ip:port`, or the endpoint's own `host:port`.
    instance: String,
    /// What messages call it.
    name: String,
    /// The admin URL pinned to this instance.
    admin: ConnString,
    ini: Option<PathBuf>,
    /// Still listed by its name (false: it left, but this upgrade's PAUSE
    /// is in force there, so RESUME is still owed to it).
    listed: bool,
    /// One per paused database: PAUSE blocks it.
    pause_conns: BTreeMap<String, Client>,
    /// Everything else.
    ctl_conn: Option<Client>,
    /// The databases cut over here (see [`Poolers::discover`]); empty until then.
    dbs: Vec<String>,
    /// Databases whose PAUSE this process sent and no RESUME followed.
    paused_here: BTreeSet<String>,
    /// When this process's PAUSE and RESUME reached it (the pause report).
    timing: window::Timing,
}

impl Endpoint {
    fn new(source: usize, inst: Instance, ini: Option<PathBuf>) -> Endpoint {
        Endpoint {
            source,
            instance: inst.key,
            name: inst.name,
            admin: inst.admin,
            ini,
            listed: true,
            pause_conns: BTreeMap::new(),
            ctl_conn: None,
            dbs: Vec::new(),
            paused_here: BTreeSet::new(),
            timing: window::Timing::default(),
        }
    }
}

/// The longest any one query of the upgrade (an admin command here, or a
/// statement of a saga step) may take outside the write pause
/// (inside it, the pause deadline is the bound): a hung server fails the step
/// instead of hanging it. Twice `database.connect_timeout`, at least 10 s, at
/// most `upgrade.step_timeout`.
pub fn query_timeout(cfg: &Cluster) -> Duration {
    (cfg.database.connect_timeout.0 * 2)
        .max(Duration::from_secs(10))
        .min(cfg.upgrade.step_timeout.0)
}

/// All configured PgBouncers, driven as one.
pub struct Poolers {
    sources: Vec<Source>,
    /// Every instance found (see `members`); empty until resolved.
    endpoints: Vec<Endpoint>,
    members_known: bool,
    connect_timeout: Duration,
    /// Bound of every admin command but PAUSE (which has its own).
    query_timeout: Duration,
    /// Inside the pause window: no command outlives the pause deadline.
    deadline: Option<tokio::time::Instant>,
    /// `cutover.database`: the entry clients use, always cut over, and the
    /// one the verify write goes through.
    pub database: String,
    /// The servers whose entries are cut over (the old primary; the new one
    /// once known, so a resumed run finds entries already repointed).
    servers: Vec<(String, u16)>,
    /// Every entry, whatever it points at (see [`Poolers::cut_over_every_entry`]).
    every_entry: bool,
}

impl Poolers {
    pub fn from_config(cfg: &Cluster) -> Poolers {
        let servers = cfg
            .database
            .primary
            .spec()
            .map(|s| vec![s.host_port()])
            .unwrap_or_default();
        Poolers {
            sources: cfg
                .cutover
                .admin
                .iter()
                .enumerate()
                .map(|(i, admin)| Source {
                    admin: admin.clone(),
                    ini: cfg.cutover.pooler_config_file(i).map(Path::to_path_buf),
                })
                .collect(),
            endpoints: Vec::new(),
            members_known: false,
            connect_timeout: cfg.database.connect_timeout.0,
            query_timeout: query_timeout(cfg),
            deadline: None,
            database: cfg.cutover.database.clone(),
            servers,
            every_entry: false,
        }
    }

    /// Every entry of every instance is cut over (the service's rescue of an
    /// abandoned window, which knows neither server for sure): RESUME of an
    /// entry that is not paused does nothing.
    pub fn cut_over_every_entry(&mut self) {
        self.every_entry = true;
        for e in &mut self.endpoints {
            e.dbs.clear();
        }
    }

    /// Entries pointing at `host:port` are cut over too (the new server,
    /// once known). Forgets what was discovered.
    pub fn add_server(&mut self, host: &str, port: u16) {
        let s = (host.to_string(), port);
        if !self.servers.contains(&s) {
            self.servers.push(s);
            for e in &mut self.endpoints {
                e.dbs.clear();
            }
        }
    }

    pub fn set_deadline(&mut self, deadline: Option<tokio::time::Instant>) {
        self.deadline = deadline;
    }

    /// How long the next admin command may take.
    fn limit(&self) -> Duration {
        match self.deadline {
            Some(d) => self
                .query_timeout
                .min(d.saturating_duration_since(tokio::time::Instant::now())),
            None => self.query_timeout,
        }
    }

    /// PgBouncer's admin console takes database names as bare words.
    pub fn valid_database_name(name: &str) -> bool {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    /// No admin endpoint configured.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Every database cut over, per instance (after [`Poolers::discover`]).
    pub fn targets(&self) -> Vec<(String, Vec<String>)> {
        self.endpoints
            .iter()
            .map(|e| (e.name.clone(), e.dbs.clone()))
            .collect()
    }

    /// The pgbouncer.ini of instance `i` (its endpoint's `cutover.config_file`).
    pub fn config_file_of(&self, i: usize) -> Option<&Path> {
        self.endpoints.get(i)?.ini.as_deref()
    }

    /// The connect bound now: `connect_timeout`, or less inside the pause.
    fn connect_limit(&self) -> Duration {
        self.connect_timeout
            .min(self.limit().max(Duration::from_millis(1)))
    }

    /// Opens the control connections that are not open yet, every instance
    /// at once (a hung one costs its connect bound, once).
    async fn connect_ctl(&mut self) -> Result<(), PoolerError> {
        self.ensure_members().await?;
        let timeout = self.connect_limit();
        let runs = self.endpoints.iter_mut().map(|e| async move {
            if e.ctl_conn.as_ref().map_or(true, |c| c.is_closed()) {
                e.ctl_conn = Some(open(&e.name, &e.admin, timeout).await?);
            }
            Ok::<_, PoolerError>(())
        });
        let results = futures::future::join_all(runs).await;
        // An instance that left its name and now refuses connections is a
        // pod gone with its clients: nothing to reload or resume there, and
        // it must not block the cutover. Any other failure is the error.
        let mut gone = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Err(err) if !self.endpoints[i].listed && window::refused(&err) => {
                    tracing::warn!(pooler = %self.endpoints[i].name, error = %err, "an instance that left its name refuses connections: gone with its clients, forgotten");
                    gone.push(i);
                }
                Err(err) => return Err(err),
                Ok(()) => {}
            }
        }
        for i in gone.into_iter().rev() {
            self.endpoints.remove(i);
        }
        Ok(())
    }

    /// Which databases each instance cuts over: `cutover.database` and every
    /// entry `SHOW DATABASES` shows reaching one of the servers (the admin
    /// console's own `pgbouncer` entry aside). Idempotent; kept until
    /// [`Poolers::add_server`].
    ///
    /// Every instance on its own, at once: one that does not answer within
    /// the command bound is read from its pgbouncer.ini instead (the
    /// entries RESUME must reach), and holds up no other.
    pub async fn discover(&mut self) -> Result<(), PoolerError> {
        self.ensure_members().await?;
        if self.endpoints.iter().all(|e| !e.dbs.is_empty()) {
            return Ok(());
        }
        let servers = self.servers_to_cut_over().await;
        let (connect_timeout, limit) = (self.connect_timeout, self.limit());
        let db = self.database.clone();
        let runs = self
            .endpoints
            .iter_mut()
            .filter(|e| e.dbs.is_empty())
            .map(|e| discover_one(e, &servers, &db, connect_timeout, limit));
        futures::future::join_all(runs).await;
        Ok(())
    }

    /// The servers whose entries are cut over, resolved; `None`: every entry.
    async fn servers_to_cut_over(&self) -> Option<Servers> {
        if self.every_entry {
            None
        } else {
            Some(Servers::resolve(&self.servers).await)
        }
    }

    /// Opens every connection the window needs (before the write pause, so
    /// logins do not count against it): control, and one per database to pause.
    pub async fn connect(&mut self) -> Result<(), PoolerError> {
        self.discover().await?;
        self.connect_ctl().await?;
        let timeout = self.connect_limit();
        // An instance that left its name is not paused again (a PAUSE of
        // ours there stays owed its RESUME).
        let runs = self
            .endpoints
            .iter_mut()
            .filter(|e| e.listed)
            .map(|e| async move {
                for db in e.dbs.clone() {
                    if e.pause_conns.get(&db).map_or(true, |c| c.is_closed()) {
                        let c = open(&e.name, &e.admin, timeout).await?;
                        e.pause_conns.insert(db, c);
                    }
                }
                Ok::<_, PoolerError>(())
            });
        futures::future::try_join_all(runs).await?;
        Ok(())
    }

    fn ctl(e: &Endpoint) -> Result<&Client, PoolerError> {
        e.ctl_conn.as_ref().ok_or_else(|| PoolerError::Command {
            target: e.name.clone(),
            command: "connect".into(),
            detail: "not connected".into(),
        })
    }

    /// `RELOAD` everywhere: PgBouncer rereads its file and reconnects changed databases.
    /// Every instance at once.
    pub async fn reload(&mut self) -> Result<(), PoolerError> {
        self.connect_ctl().await?;
        let limit = self.limit();
        let runs = self
            .endpoints
            .iter()
            .map(|e| async move { simple(Self::ctl(e)?, &e.name, sql::RELOAD, limit).await });
        futures::future::try_join_all(runs).await?;
        Ok(())
    }

    async fn show_databases_of(&self, e: &Endpoint) -> Result<Vec<DatabaseEntry>, PoolerError> {
        show_databases(Self::ctl(e)?, &e.name, self.limit()).await
    }

    /// Every entry of every instance, as `SHOW DATABASES` shows them.
    pub async fn all_entries(&mut self) -> Result<Vec<(String, Vec<DatabaseEntry>)>, PoolerError> {
        self.connect_ctl().await?;
        let this = &*self;
        let runs = this.endpoints.iter().map(|e| async move {
            Ok::<_, PoolerError>((e.name.clone(), this.show_databases_of(e).await?))
        });
        futures::future::try_join_all(runs).await
    }

    /// Every cut-over database's entry on every instance: (instance,
    /// database, the entry, `None` where it is missing).
    pub async fn entries(
        &mut self,
    ) -> Result<Vec<(String, String, Option<DatabaseEntry>)>, PoolerError> {
        self.discover().await?;
        self.connect_ctl().await?;
        let shown =
            futures::future::try_join_all(self.endpoints.iter().map(|e| self.show_databases_of(e)))
                .await?;
        let mut out = Vec::new();
        for (e, shown) in self.endpoints.iter().zip(shown) {
            for db in &e.dbs {
                let entry = shown.iter().find(|d| &d.name == db).cloned();
                out.push((e.name.clone(), db.clone(), entry));
            }
        }
        Ok(out)
    }

    /// Server connections of the cutover database per endpoint, as `host:port` strings.
    pub async fn servers(&mut self) -> Result<Vec<String>, PoolerError> {
        self.connect_ctl().await?;
        let mut out = Vec::new();
        for e in &self.endpoints {
            for r in simple(Self::ctl(e)?, &e.name, sql::SHOW_SERVERS, self.limit()).await? {
                if r.get("database") == Some(self.database.as_str()) {
                    out.push(format!(
                        "{}:{}",
                        r.get("addr").unwrap_or_default(),
                        r.get("port").unwrap_or_default()
                    ));
                }
            }
        }
        Ok(out)
    }

    /// `SHOW CONFIG` of every endpoint as key → value maps.
    pub async fn configs(
        &mut self,
    ) -> Result<Vec<(String, BTreeMap<String, String>)>, PoolerError> {
        self.connect_ctl().await?;
        let mut out = Vec::new();
        for e in &self.endpoints {
            let rows = simple(Self::ctl(e)?, &e.name, sql::SHOW_CONFIG, self.limit()).await?;
            let map = rows
                .iter()
                .filter_map(|r| {
                    Some((
                        r.get("key")?.to_string(),
                        r.get("value").unwrap_or_default().to_string(),
                    ))
                })
                .collect();
            out.push((e.name.clone(), map));
        }
        Ok(out)
    }

    /// Database `db` on instance `i` as the steward: the instance's address
    /// and TLS settings from `cutover.admin`, the user and password of
    /// `database.primary` (the admin's credentials are for the console
    /// only; they may not log in to the application database at all).
    pub fn client_url_of(
        &self,
        i: usize,
        db: &str,
        steward: &crate::pg::ConnSpec,
    ) -> Option<ConnString> {
        let admin = self.endpoints.get(i)?.admin.expose();
        let mut p = crate::pg::conninfo::ConnParams::parse(admin).ok()?;
        for key in [
            "user",
            "password",
            "passfile",
            "dbname",
            "aws_iam",
            "aws_region",
            "options",
        ] {
            p.take(key);
        }
        p.set("user", steward.user()?);
        if let Some(password) = steward.password() {
            p.set("password", password);
        }
        p.set("dbname", db);
        Some(ConnString::new(p.to_key_value()))
    }

    /// The cutover database on the first instance as the steward (see [`Poolers::client_url_of`]).
    pub fn client_url(&self, steward: &crate::pg::ConnSpec) -> Option<ConnString> {
        self.client_url_of(0, &self.database, steward)
    }

    /// How many instances are known (after a resolution).
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }
}

/// A session on an instance's admin console, its errors naming the instance.
async fn open(name: &str, admin: &ConnString, timeout: Duration) -> Result<Client, PoolerError> {
    pooled_session(admin, timeout)
        .await
        .map_err(|e| PoolerError::Command {
            target: name.to_string(),
            command: "connect".into(),
            detail: e.to_string(),
        })
}

/// A row of a simple-protocol result by column name.
pub struct Row(tokio_postgres::SimpleQueryRow);

impl Row {
    pub fn get(&self, col: &str) -> Option<&str> {
        let idx = self.0.columns().iter().position(|c| c.name() == col)?;
        self.0.get(idx)
    }
}

async fn simple(
    c: &Client,
    target: &str,
    cmd: &str,
    after: Duration,
) -> Result<Vec<Row>, PoolerError> {
    let msgs = tokio::time::timeout(after, c.simple_query(cmd))
        .await
        .map_err(|_| PoolerError::Timeout {
            target: target.to_string(),
            command: cmd.to_string(),
            after,
        })?
        .map_err(|e| PoolerError::Command {
            target: target.to_string(),
            command: cmd.to_string(),
            detail: crate::pg::server_message(&e),
        })?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(Row(r)),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
