//! The PgBouncer admin console (simple query protocol only: the console does
//! not speak the extended protocol) and the `[databases]` rewrite.
//!
//! Every configured admin endpoint is driven together: PAUSE waits until all
//! of them have paused, RELOAD and RESUME go to all. Each endpoint has two
//! connections: PAUSE blocks its connection until in-flight transactions end,
//! so RESUME (the way back after a missed deadline) needs the other one.

pub mod sql;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::config::{Config, ConnString};

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
    #[error("pgbouncer config {path}: {detail}")]
    Ini { path: PathBuf, detail: String },
    #[error(
        "no pgbouncer admin endpoint configured: set cutover.admin (or cutover.kind = \"none\")"
    )]
    NotConfigured,
}

/// One `[databases]` entry as `SHOW DATABASES` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseEntry {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub paused: bool,
}

struct Endpoint {
    admin: ConnString,
    ini: Option<PathBuf>,
    /// Runs PAUSE (which blocks it).
    pause_conn: Option<Client>,
    /// Everything else.
    ctl_conn: Option<Client>,
    /// This process's PAUSE on this endpoint returned (drained) and no RESUME followed.
    paused_here: bool,
}

/// The longest any one query of the upgrade (an admin command here, or a
/// statement of a saga step) may take outside the write pause
/// (inside it, the pause deadline is the bound): a hung server fails the step
/// instead of hanging it. Twice `database.connect_timeout`, at least 10 s, at
/// most `upgrade.step_timeout`.
pub fn query_timeout(cfg: &Config) -> Duration {
    (cfg.database.connect_timeout.0 * 2)
        .max(Duration::from_secs(10))
        .min(cfg.upgrade.step_timeout.0)
}

/// The spec of a connection through PgBouncer (its admin console or a
/// pooled database): `conn` without any startup `options`. A stock
/// PgBouncer refuses a startup parameter it neither tracks nor ignores
/// (1.18: `options` at all; 1.20+: a `-c` of an untracked setting such as
/// `statement_timeout`), and in transaction pooling a session setting
/// would leak to other clients' server connections anyway: whatever a
/// pooled statement needs it sets with `SET LOCAL` inside its own
/// transaction. Every connection pgsteward makes to a PgBouncer is made
/// from this spec.
pub fn pooler_spec(conn: &ConnString) -> Result<crate::pg::ConnSpec, crate::pg::PgError> {
    let raw = conn.expose();
    match crate::pg::conninfo::ConnParams::parse(raw) {
        Ok(mut p) => {
            p.take("options");
            crate::pg::ConnSpec::parse(&p.to_key_value())
        }
        // Unparseable: the spec's own error names why.
        Err(_) => crate::pg::ConnSpec::parse(raw),
    }
}

/// A session through PgBouncer on `conn` (see [`pooler_spec`]), with TCP
/// keepalives so a PgBouncer that vanished is noticed in seconds.
pub async fn pooled_session(conn: &ConnString, timeout: Duration) -> Result<Client, PoolerError> {
    let mut spec = pooler_spec(conn)?;
    spec.config.keepalives(true);
    spec.config.keepalives_idle(Duration::from_secs(5));
    spec.config.keepalives_interval(Duration::from_secs(2));
    spec.config.keepalives_retries(3);
    Ok(spec.connect(timeout).await?)
}

/// All configured PgBouncers, driven as one.
pub struct Poolers {
    endpoints: Vec<Endpoint>,
    connect_timeout: Duration,
    /// Bound of every admin command but PAUSE (which has its own).
    query_timeout: Duration,
    /// Inside the pause window: no command outlives the pause deadline.
    deadline: Option<tokio::time::Instant>,
    pub database: String,
}

impl Poolers {
    pub fn from_config(cfg: &Config) -> Poolers {
        Poolers {
            endpoints: cfg
                .cutover
                .admin
                .iter()
                .enumerate()
                .map(|(i, admin)| Endpoint {
                    admin: admin.clone(),
                    ini: cfg.pooler_config_file(i).map(Path::to_path_buf),
                    pause_conn: None,
                    ctl_conn: None,
                    paused_here: false,
                })
                .collect(),
            connect_timeout: cfg.database.connect_timeout.0,
            query_timeout: query_timeout(cfg),
            deadline: None,
            database: cfg.cutover.database.clone(),
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

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn admins(&self) -> impl Iterator<Item = &ConnString> {
        self.endpoints.iter().map(|e| &e.admin)
    }

    /// Opens the admin connections that are not open yet (before the write
    /// pause, so logins do not count against it).
    pub async fn connect(&mut self) -> Result<(), PoolerError> {
        let timeout = self
            .connect_timeout
            .min(self.limit().max(Duration::from_millis(1)));
        for e in &mut self.endpoints {
            if e.ctl_conn.as_ref().map_or(true, |c| c.is_closed()) {
                e.ctl_conn = Some(pooled_session(&e.admin, timeout).await?);
            }
            if e.pause_conn.as_ref().map_or(true, |c| c.is_closed()) {
                e.pause_conn = Some(pooled_session(&e.admin, timeout).await?);
            }
        }
        Ok(())
    }

    fn ctl(e: &Endpoint) -> Result<&Client, PoolerError> {
        e.ctl_conn.as_ref().ok_or_else(|| PoolerError::Command {
            target: e.admin.to_string(),
            command: "connect".into(),
            detail: "not connected".into(),
        })
    }

    /// `PAUSE db` on every endpoint; returns when all finished pausing.
    /// Past `timeout` (or on any error) RESUME is sent everywhere and the error returned.
    ///
    /// A PAUSE already in force is never lifted unless this process made it
    /// (then it has drained already and is kept): a PAUSE of another upgrade
    /// or of an operator is theirs to RESUME.
    pub async fn pause(&mut self, timeout: Duration) -> Result<(), PoolerError> {
        self.connect().await?;
        let db = self.database.clone();
        let cmd = sql::pause(&db);
        let mut futs = Vec::new();
        let mut mine = Vec::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let paused = self
                .show_databases_of(e)
                .await?
                .iter()
                .any(|d| d.name == db && d.paused);
            if paused && e.paused_here {
                continue;
            }
            if paused {
                return Err(PoolerError::PausedByOther {
                    target: e.admin.to_string(),
                    database: db,
                });
            }
            mine.push(i);
            let Some(c) = e.pause_conn.as_ref() else {
                return Err(PoolerError::Command {
                    target: e.admin.to_string(),
                    command: cmd.clone(),
                    detail: "not connected".into(),
                });
            };
            let admin = e.admin.clone();
            let cmd = cmd.clone();
            futs.push(async move { simple(c, &admin, &cmd, timeout).await });
        }
        let all = futures::future::try_join_all(futs);
        let result = match tokio::time::timeout(timeout, all).await {
            Ok(Ok(_)) => {
                for i in mine {
                    self.endpoints[i].paused_here = true;
                }
                return Ok(());
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PoolerError::PauseTimeout {
                target: self
                    .admins()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                timeout,
            }),
        };
        // The pausing connections are still waiting for their answer; drop them.
        // The PAUSEs sent are ours (a PAUSE pending counts as one): lift them.
        for &i in &mine {
            self.endpoints[i].pause_conn = None;
            self.endpoints[i].paused_here = true;
        }
        // The way back is not bound by the deadline that was just missed.
        self.deadline = None;
        if let Err(e) = self.resume().await {
            tracing::error!(error = %e, "resume after a failed pause failed");
        }
        result
    }

    /// `RESUME db` everywhere; a database that is not paused is fine. Only
    /// called for a PAUSE of this upgrade (this process's, or one its journal
    /// proves it sent before a crash).
    pub async fn resume(&mut self) -> Result<(), PoolerError> {
        self.connect().await?;
        let cmd = sql::resume(&self.database);
        // The way back gets its full time even after a missed pause deadline.
        let limit = self.query_timeout;
        for e in &mut self.endpoints {
            match simple(Self::ctl(e)?, &e.admin, &cmd, limit).await {
                Ok(_) => {}
                Err(PoolerError::Command { detail, .. }) if detail.contains("not paused") => {}
                Err(err) => return Err(err),
            }
            e.paused_here = false;
        }
        Ok(())
    }

    /// `RELOAD` everywhere: PgBouncer rereads its file and reconnects changed databases.
    pub async fn reload(&mut self) -> Result<(), PoolerError> {
        self.connect().await?;
        for e in &self.endpoints {
            simple(Self::ctl(e)?, &e.admin, sql::RELOAD, self.limit()).await?;
        }
        Ok(())
    }

    /// Rewrites the `[databases]` entry in every config file to `host:port`.
    pub fn rewrite(&self, host: &str, port: u16) -> Result<(), PoolerError> {
        let mut done = std::collections::HashSet::new();
        for e in &self.endpoints {
            let Some(ini) = &e.ini else {
                return Err(PoolerError::Ini {
                    path: PathBuf::new(),
                    detail: format!("no config file for {}; set cutover.config_file", e.admin),
                });
            };
            if done.insert(ini.clone()) {
                rewrite_ini(ini, &self.database, host, port)?;
            }
        }
        Ok(())
    }

    async fn show_databases_of(&self, e: &Endpoint) -> Result<Vec<DatabaseEntry>, PoolerError> {
        let rows = simple(Self::ctl(e)?, &e.admin, sql::SHOW_DATABASES, self.limit()).await?;
        Ok(rows
            .iter()
            .map(|r| DatabaseEntry {
                name: r.get("name").unwrap_or_default().to_string(),
                host: r.get("host").unwrap_or_default().to_string(),
                port: r.get("port").and_then(|p| p.parse().ok()).unwrap_or(0),
                database: r.get("database").unwrap_or_default().to_string(),
                paused: r.get("paused").is_some_and(|p| p == "1"),
            })
            .collect())
    }

    /// The cutover database's entry on every endpoint (`None` where it is missing).
    pub async fn entries(&mut self) -> Result<Vec<(String, Option<DatabaseEntry>)>, PoolerError> {
        self.connect().await?;
        let mut out = Vec::new();
        for e in &self.endpoints {
            let entry = self
                .show_databases_of(e)
                .await?
                .into_iter()
                .find(|d| d.name == self.database);
            out.push((e.admin.to_string(), entry));
        }
        Ok(out)
    }

    /// Server connections of the cutover database per endpoint, as `host:port` strings.
    pub async fn servers(&mut self) -> Result<Vec<String>, PoolerError> {
        self.connect().await?;
        let mut out = Vec::new();
        for e in &self.endpoints {
            for r in simple(Self::ctl(e)?, &e.admin, sql::SHOW_SERVERS, self.limit()).await? {
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
        self.connect().await?;
        let mut out = Vec::new();
        for e in &self.endpoints {
            let rows = simple(Self::ctl(e)?, &e.admin, sql::SHOW_CONFIG, self.limit()).await?;
            let map = rows
                .iter()
                .filter_map(|r| {
                    Some((
                        r.get("key")?.to_string(),
                        r.get("value").unwrap_or_default().to_string(),
                    ))
                })
                .collect();
            out.push((e.admin.to_string(), map));
        }
        Ok(out)
    }

    /// The cutover database on the first endpoint as the steward: the
    /// pooler's address and TLS settings from `cutover.admin`, the user and
    /// password of `database.primary` (the admin's credentials are for the
    /// console only; they may not log in to the application database at all).
    pub fn client_url(&self, steward: &crate::pg::ConnSpec) -> Option<ConnString> {
        let admin = self.endpoints.first()?.admin.expose();
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
        p.set("dbname", self.database.as_str());
        Some(ConnString::new(p.to_key_value()))
    }
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
    target: &ConnString,
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

/// The `host` and `port` the `[databases]` entry `db` of `text` points at.
pub fn ini_target(text: &str, db: &str) -> Option<(String, u16)> {
    let mut section = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.to_ascii_lowercase();
            continue;
        }
        if section != "[databases]" {
            continue;
        }
        let Some((k, v)) = t.split_once('=') else {
            continue;
        };
        if k.trim() != db {
            continue;
        }
        let mut host = None;
        let mut port = 5432;
        for tok in v.split_whitespace() {
            match tok.split_once('=') {
                Some(("host", h)) => host = Some(h.to_string()),
                Some(("port", p)) => port = p.parse().unwrap_or(5432),
                _ => {}
            }
        }
        return Some((host.unwrap_or_default(), port));
    }
    None
}

/// `text` with the `[databases]` entry `db` pointed at `host:port`; other
/// parameters of the entry and every other line are kept as they are.
pub fn retarget_ini(text: &str, db: &str, host: &str, port: u16) -> Option<String> {
    let mut section = String::new();
    let mut found = false;
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.to_ascii_lowercase();
        }
        let entry = (section == "[databases]"
            && !t.starts_with('[')
            && !t.starts_with(';')
            && !t.starts_with('#'))
        .then(|| t.split_once('='))
        .flatten()
        .filter(|(k, _)| k.trim() == db);
        match entry {
            Some((k, v)) if !found => {
                found = true;
                let mut toks: Vec<String> = v
                    .split_whitespace()
                    .filter(|tok| !tok.starts_with("host=") && !tok.starts_with("port="))
                    .map(str::to_string)
                    .collect();
                toks.insert(0, format!("port={port}"));
                toks.insert(0, format!("host={host}"));
                out.push_str(&format!("{} = {}\n", k.trim(), toks.join(" ")));
            }
            _ => out.push_str(line),
        }
    }
    found.then_some(out)
}

/// Points entry `db` of the pgbouncer.ini at `path` to `host:port`, atomically:
/// a temporary file beside it (same mode and owner), fsync, rename, fsync of
/// the directory. A file already pointing there is left alone.
pub fn rewrite_ini(path: &Path, db: &str, host: &str, port: u16) -> Result<(), PoolerError> {
    let ini_err = |detail: String| PoolerError::Ini {
        path: path.to_path_buf(),
        detail,
    };
    let text = fs::read_to_string(path).map_err(|e| ini_err(e.to_string()))?;
    if ini_target(&text, db) == Some((host.to_string(), port)) {
        return Ok(());
    }
    let new = retarget_ini(&text, db, host, port).ok_or_else(|| {
        ini_err(format!(
            "no entry `{db} = ...` in its [databases] section; add it or fix cutover.database"
        ))
    })?;
    let meta = fs::metadata(path).map_err(|e| ini_err(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pgbouncer.ini".into());
    let tmp = dir.join(format!(".{name}.pgsteward-tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| ini_err(format!("create {}: {e}", tmp.display())))?;
        f.write_all(new.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| ini_err(format!("write {}: {e}", tmp.display())))?;
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| ini_err(e.to_string()))?;
    // Keep the owner so PgBouncer (often another user) can still read it; only root can chown.
    if nix::unistd::Uid::effective().is_root() {
        std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| ini_err(e.to_string()))?;
    }
    fs::rename(&tmp, path).map_err(|e| ini_err(format!("rename: {e}")))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ini_err(format!("fsync {}: {e}", dir.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing pgsteward sends through a PgBouncer carries startup
    /// `options`, whatever the configured strings hold: the admin console's
    /// sessions and the verify write's both come from [`pooler_spec`].
    #[test]
    fn no_pooler_connection_carries_startup_options() {
        let admin = ConnString::new(
            "postgres://pgbouncer:pw@127.0.0.1:6432/pgbouncer?options=-c%20statement_timeout%3D5000",
        );
        let spec = pooler_spec(&admin).unwrap();
        assert_eq!(spec.config.get_options(), None);
        assert_eq!(spec.config.get_dbname(), Some("pgbouncer"));
        let kv = ConnString::new("host=pooler port=6432 user=pgbouncer dbname=pgbouncer options='-c work_mem=1MB'");
        assert_eq!(pooler_spec(&kv).unwrap().config.get_options(), None);
        let poolers = Poolers {
            endpoints: vec![Endpoint {
                admin,
                ini: None,
                pause_conn: None,
                ctl_conn: None,
                paused_here: false,
            }],
            connect_timeout: Duration::from_secs(1),
            query_timeout: Duration::from_secs(1),
            deadline: None,
            database: "app".into(),
        };
        let steward = crate::pg::ConnSpec::parse(
            "postgres://steward:pw@db:5432/app?options=-c%20statement_timeout%3D5000",
        )
        .unwrap();
        let client = poolers.client_url(&steward).unwrap();
        let spec = pooler_spec(&client).unwrap();
        assert_eq!(spec.config.get_options(), None);
        assert_eq!(spec.config.get_user(), Some("steward"));
        assert_eq!(spec.config.get_dbname(), Some("app"));
        assert!(!client.expose().contains("options"));
    }

    const INI: &str = "[databases]\n; app = host=old\napp = host=10.0.0.1 port=5432 dbname=app pool_size=20\nother = host=10.0.0.9\n\n[pgbouncer]\nlisten_port = 6432\n";

    #[test]
    fn reads_the_target() {
        assert_eq!(ini_target(INI, "app"), Some(("10.0.0.1".into(), 5432)));
        assert_eq!(ini_target(INI, "other"), Some(("10.0.0.9".into(), 5432)));
        assert_eq!(ini_target(INI, "nope"), None);
    }

    #[test]
    fn retargets_one_entry_only() {
        let out = retarget_ini(INI, "app", "127.0.0.1", 7000).unwrap();
        assert!(out.contains("app = host=127.0.0.1 port=7000 dbname=app pool_size=20\n"));
        assert!(out.contains("; app = host=old\n"));
        assert!(out.contains("other = host=10.0.0.9\n"));
        assert!(out.contains("listen_port = 6432"));
        assert_eq!(ini_target(&out, "app"), Some(("127.0.0.1".into(), 7000)));
        assert!(retarget_ini(INI, "missing", "h", 1).is_none());
    }

    #[test]
    fn rewrite_is_atomic_and_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pgbouncer.ini");
        fs::write(&p, INI).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        rewrite_ini(&p, "app", "127.0.0.1", 7000).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(ini_target(&text, "app"), Some(("127.0.0.1".into(), 7000)));
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        rewrite_ini(&p, "app", "127.0.0.1", 7000).unwrap();
    }
}
