//! Real servers for tests: PostgreSQL clusters (a primary, streaming replicas
//! made with pg_basebackup) and PgBouncer, in temporary directories on free
//! loopback ports, torn down when the test ends (also when it panics, and by a
//! watchdog when the test process is killed).
//!
//! A missing server binary fails the test with the install command; nothing
//! is skipped silently.
//!
//! Authentication is as deployed: every TCP login (replication included) uses
//! scram-sha-256, with distinct users and passwords for the steward (the
//! `postgres` superuser), the application (`app`, not a superuser) and the
//! PgBouncer admin (`pgbouncer`). URLs the harness hands out carry their
//! password; `pgsteward()` children also get a password file (`PGPASSFILE`)
//! with every harness login, so a URL a test writes by hand authenticates too.
//! Only the Unix socket is `trust`, for the harness's own psql (see
//! `localpg::Cluster::write_hba`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgsteward::localpg::{
    self, Cluster, LocalPgBouncer, PgBouncerAuth, PgBouncerDatabase, PgBouncerUser, ServerUser,
    StopMode,
};
use tempfile::TempDir;

mod cluster;
mod roles;

pub use cluster::*;
pub use roles::*;

/// The application's role: LOGIN, not a superuser.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app p@ss:2";
/// PgBouncer's admin: exists in PgBouncer only, for the console.
pub const ADMIN_USER: &str = "pgbouncer";
pub const ADMIN_PASSWORD: &str = "pgbouncer admin:3@";

/// Fails the test with a message that names the fix.
#[track_caller]
pub fn must<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("test harness: {e}"),
    }
}

fn server_user() -> Option<ServerUser> {
    must(ServerUser::detect())
}

/// A server shared by every test in this process that only needs a database
/// of its own (see [`fresh_db`]). Stopped by its watchdog when the process exits.
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<(Cluster, PathBuf)> = OnceLock::new();
    &SHARED
        .get_or_init(|| {
            // Not a TempDir: statics are never dropped, so the directory is named
            // per process and left for the OS's /tmp cleaning.
            let dir = std::env::temp_dir().join(format!("pgsteward-shared-{}", std::process::id()));
            must(localpg::make_server_dir(&dir, server_user()));
            let cluster = new_primary(&dir, "primary");
            remove_when_gone(&dir);
            must(cluster.psql(
                "postgres",
                "ALTER SYSTEM SET max_locks_per_transaction = 256",
            ));
            must(cluster.stop(StopMode::Fast));
            must(cluster.start());
            (cluster, dir)
        })
        .0
}

/// Removes `dir` once this process is gone and its servers had time to stop.
pub fn remove_when_gone(dir: &Path) {
    remove_when_process_gone(dir, std::process::id());
}

/// Removes `dir` once process `pid` is gone and its servers had time to stop.
pub fn remove_when_process_gone(dir: &Path, pid: u32) {
    let script = format!(
        "while [ -d /proc/{pid} ]; do sleep 1; done; sleep 3; rm -rf '{}'",
        dir.display()
    );
    let _ = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// A new, empty database on the shared server; returns its URL.
pub fn fresh_db(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let name = format!(
        "{}_{}",
        prefix
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        n
    );
    let cluster = shared();
    must(cluster.psql("postgres", &format!("CREATE DATABASE \"{name}\"")));
    prepare_db(cluster, &name);
    cluster.url(&name)
}

/// Who logs in through a harness PgBouncer.
pub fn pooler_auth() -> PgBouncerAuth {
    PgBouncerAuth {
        admin: PgBouncerUser::new(ADMIN_USER, Some(ADMIN_PASSWORD)),
        users: vec![
            PgBouncerUser::new(SUPER_USER, Some(SUPER_PASSWORD)),
            PgBouncerUser::new(STEWARD_USER, Some(STEWARD_PASSWORD)),
            PgBouncerUser::new(OWNER_USER, Some(OWNER_PASSWORD)),
            PgBouncerUser::new(APP_USER, Some(APP_PASSWORD)),
        ],
    }
}

/// Makes the application role on `cluster` if it is not there yet (the
/// password travels on psql's standard input, not its command line).
pub fn create_app_role(cluster: &Cluster) {
    must(cluster.psql_secret(
        "postgres",
        &format!(
            "SELECT 'CREATE ROLE {APP_USER} LOGIN NOSUPERUSER PASSWORD ' || quote_literal({})
               WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_USER}') \\gexec\n",
            pgsteward::pg::quote_literal(APP_PASSWORD)
        ),
    ));
}

/// Lets the application role read and write every table (and use every
/// sequence) in `dbname`'s public schema, as an application owner would grant.
pub fn grant_app(cluster: &Cluster, dbname: &str) {
    create_app_role(cluster);
    must(cluster.psql(
        dbname,
        &format!(
            "GRANT USAGE ON SCHEMA public TO {APP_USER}; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_USER}; \
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {APP_USER}"
        ),
    ));
}

/// The application's URL for `dbname` directly on `cluster` (see [`create_app_role`]).
pub fn app_url(cluster: &Cluster, dbname: &str) -> String {
    with_password(&cluster.url(dbname), APP_USER, APP_PASSWORD)
}

/// The application's URL through `pooler` for its database `name`.
pub fn app_pooler_url(pooler: &LocalPgBouncer, name: &str) -> String {
    pooler.url(name, APP_USER)
}

/// The PgBouncer admin console's URL (the admin's password included).
pub fn admin_url(pooler: &LocalPgBouncer) -> String {
    pooler.admin_url()
}

/// `url` logging in as `user` with `password` (percent-encoded).
pub fn with_password(url: &str, user: &str, password: &str) -> String {
    let mut u = must(url::Url::parse(url).map_err(|e| e.to_string()));
    must(u.set_username(user).map_err(|_| "cannot set the user"));
    must(
        u.set_password(Some(password))
            .map_err(|_| "cannot set the password"),
    );
    u.to_string()
}

/// A URL without a password (as the upgrade journal keeps them) made to log
/// in: the steward's password for `postgres`, the application's for `app`.
pub fn authed(url: &str) -> String {
    let u = must(url::Url::parse(url).map_err(|e| e.to_string()));
    if u.password().is_some() {
        return url.to_string();
    }
    match u.username() {
        APP_USER => with_password(url, APP_USER, APP_PASSWORD),
        STEWARD_USER => with_password(url, STEWARD_USER, STEWARD_PASSWORD),
        OWNER_USER => with_password(url, OWNER_USER, OWNER_PASSWORD),
        "" | SUPER_USER => with_password(url, SUPER_USER, SUPER_PASSWORD),
        _ => url.to_string(),
    }
}

/// A password file (0600) with every harness login, written once per test process.
pub fn passfile() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pgsteward-pgpass-{}", std::process::id()));
        must(std::fs::create_dir_all(&dir).map_err(|e| e.to_string()));
        let path = dir.join("pgpass");
        let text: String = [
            (SUPER_USER, SUPER_PASSWORD),
            (STEWARD_USER, STEWARD_PASSWORD),
            (OWNER_USER, OWNER_PASSWORD),
            (APP_USER, APP_PASSWORD),
            (ADMIN_USER, ADMIN_PASSWORD),
        ]
        .iter()
        .map(|(u, p)| pgsteward::pg::libpq::passfile_line("*", "*", "*", u, p))
        .collect();
        must(std::fs::write(&path, text).map_err(|e| e.to_string()));
        must(
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|e| e.to_string()),
        );
        remove_when_gone(&dir);
        path
    })
}

/// The libpq environment of the harness's own connections: this process's,
/// plus the harness password file.
pub fn pg_env() -> pgsteward::pg::PgEnv {
    pgsteward::pg::PgEnv::from_process().set("PGPASSFILE", &passfile().display().to_string())
}

/// PgBouncer in front of `cluster`, database `app` → `dbname`, with
/// scram-sha-256 logins for the steward, the application and the admin.
pub fn pooler(
    dir: &Path,
    cluster: &Cluster,
    dbname: &str,
    extra: &[(&str, &str)],
) -> LocalPgBouncer {
    create_app_role(cluster);
    let port = must(localpg::free_port());
    let db = PgBouncerDatabase {
        name: "app".into(),
        host: "127.0.0.1".into(),
        port: cluster.port,
        dbname: dbname.into(),
    };
    must(LocalPgBouncer::start(
        &dir.join("pgbouncer"),
        port,
        &[db],
        &pooler_auth(),
        extra,
    ))
}

/// The pgsteward binary built for these tests.
pub fn pgsteward() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsteward"));
    // The environment of the developer must not leak into tests: no
    // PGSTEWARD_* settings, no PG* connection defaults or passwords.
    for (k, _) in std::env::vars() {
        if k.starts_with("PGSTEWARD_") || k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PGSTEWARD_LOG_LEVEL", "warn");
    cmd.env("PGPASSFILE", passfile());
    cmd
}

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("pgsteward.toml");
    must(std::fs::write(&path, toml).map_err(|e| e.to_string()));
    path
}

/// Runs a SQL statement with tokio-postgres and returns the rows.
pub async fn query(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let spec = must(pgsteward::pg::ConnSpec::parse_with(url, &pg_env()));
    let client = must(spec.connect(Duration::from_secs(10)).await);
    must(client.query(sql, &[]).await)
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let spec = must(pgsteward::pg::ConnSpec::parse_with(url, &pg_env()));
    must(spec.connect(Duration::from_secs(10)).await)
}

/// A child's exit status and both outputs, for assertion messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
