//! PgBouncer on this host for the demo and the tests: the process and the
//! files it reads. Talking to a PgBouncer's admin console (PAUSE, RESUME,
//! RELOAD) is `pooler::Poolers`, for any PgBouncer, here or elsewhere.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::conf::{ini_line, ini_value, ini_word};
use super::{
    command, find_program, give_to, io, make_server_dir, spawn_watchdog, url_encode, LocalPgError,
    ServerUser,
};

/// The platform's PgBouncer settings (what production runs), written into
/// every PgBouncer started here. `ignore_startup_parameters` is left at its
/// default (empty): a client that sends a startup parameter PgBouncer does
/// not track (`options`, `extra_float_digits`) is refused, as in production.
/// Beyond these the file has only what a topology on this host needs
/// (addresses, auth files, logs) and short server login retries, so tests
/// of hung and restarted servers do not wait PgBouncer's 15 s defaults.
pub const PLATFORM: &str = "pool_mode = transaction\nmax_client_conn = 10000\n\
     default_pool_size = 25\nreserve_pool_size = 10\nreserve_pool_timeout = 3\n\
     server_idle_timeout = 600\nserver_lifetime = 3600\n";

/// PgBouncer on this host, in transaction pooling mode. Clients log in with
/// scram-sha-256 against the passwords of [`PgBouncerAuth`] (PgBouncer logs in
/// to the server with the same); every user must have a password (no `trust`).
#[derive(Debug)]
pub struct LocalPgBouncer {
    pub dir: PathBuf,
    /// The address it listens on (loopback).
    pub addr: String,
    pub port: u16,
    pub ini: PathBuf,
    pub user: Option<ServerUser>,
    pub auth: PgBouncerAuth,
    child: Option<std::process::Child>,
}

/// A user PgBouncer knows.
#[derive(Clone)]
pub struct PgBouncerUser {
    pub name: String,
    pub password: Option<String>,
}

impl std::fmt::Debug for PgBouncerUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgBouncerUser({})", self.name)
    }
}

impl PgBouncerUser {
    pub fn new(name: &str, password: Option<&str>) -> PgBouncerUser {
        PgBouncerUser {
            name: name.to_string(),
            password: password.map(str::to_string),
        }
    }
}

/// Who may log in through PgBouncer: the admin (console only) and the users
/// that reach the databases.
#[derive(Debug, Clone)]
pub struct PgBouncerAuth {
    pub admin: PgBouncerUser,
    pub users: Vec<PgBouncerUser>,
}

impl PgBouncerAuth {
    /// `auth_file` lines: `"name" "password"`, `"` doubled inside quotes; a
    /// line break in either is refused (it would start another entry).
    fn userlist(&self) -> Result<String, LocalPgError> {
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let mut out = String::new();
        for u in std::iter::once(&self.admin).chain(&self.users) {
            // scram-sha-256 only, as deployed: a user without a password is refused.
            let Some(password) = u.password.as_deref().filter(|p| !p.is_empty()) else {
                return Err(LocalPgError::InvalidSetting {
                    file: "userlist.txt",
                    key: u.name.clone(),
                    reason: "every PgBouncer user needs a password (scram-sha-256; no trust)",
                });
            };
            if [&u.name[..], password]
                .iter()
                .any(|s| s.contains(['\n', '\r', '\0']))
            {
                return Err(LocalPgError::InvalidSetting {
                    file: "userlist.txt",
                    key: u.name.clone(),
                    reason: "a user name or password holds a line break or NUL",
                });
            }
            let _ = writeln!(out, "{} {}", q(&u.name), q(password));
        }
        Ok(out)
    }

    fn password_of(&self, user: &str) -> Option<&str> {
        std::iter::once(&self.admin)
            .chain(&self.users)
            .find(|u| u.name == user)
            .and_then(|u| u.password.as_deref())
    }
}

/// One `[databases]` entry.
#[derive(Debug, Clone)]
pub struct PgBouncerDatabase {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

impl PgBouncerDatabase {
    /// The `[databases]` line, or why a name cannot be written bare (the
    /// admin console and the connection string both take them so).
    pub fn ini_line(&self) -> Result<String, LocalPgError> {
        Ok(format!(
            "{} = host={} port={} dbname={}",
            ini_word("database name", &self.name)?,
            ini_word("host", &self.host)?,
            self.port,
            ini_word("dbname", &self.dbname)?
        ))
    }
}

impl LocalPgBouncer {
    /// Writes a pgbouncer.ini into `dir` and starts PgBouncer on `port`.
    /// `extra` lines go into `[pgbouncer]` (e.g. `query_wait_timeout = 10`).
    pub fn start(
        dir: &Path,
        port: u16,
        databases: &[PgBouncerDatabase],
        auth: &PgBouncerAuth,
        extra: &[(&str, &str)],
    ) -> Result<LocalPgBouncer, LocalPgError> {
        let mut text = String::from("[databases]\n");
        for db in databases {
            let _ = writeln!(text, "{}", db.ini_line()?);
        }
        Self::spawn(dir, "127.0.0.1", port, text, auth, extra)
    }

    /// PgBouncer on `addr:port` (a loopback address: several instances may
    /// share a port on 127.0.0.2, .3, ...) whose `[databases]` section is
    /// the shared file `databases` (`%include`): one file for every
    /// instance, as the pods of a Deployment share one configuration.
    pub fn start_shared(
        dir: &Path,
        addr: &str,
        port: u16,
        databases: &Path,
        auth: &PgBouncerAuth,
        extra: &[(&str, &str)],
    ) -> Result<LocalPgBouncer, LocalPgError> {
        let shown = databases.display().to_string();
        ini_value("%include", &shown)?;
        Self::spawn(dir, addr, port, format!("%include {shown}\n"), auth, extra)
    }

    fn spawn(
        dir: &Path,
        addr: &str,
        port: u16,
        databases: String,
        auth: &PgBouncerAuth,
        extra: &[(&str, &str)],
    ) -> Result<LocalPgBouncer, LocalPgError> {
        let user = ServerUser::detect()?;
        make_server_dir(dir, user)?;
        let program = find_program("pgbouncer", None)?;
        let ini = dir.join("pgbouncer.ini");
        let users = dir.join("userlist.txt");
        fs::write(&users, auth.userlist()?).map_err(io("write userlist"))?;
        fs::set_permissions(&users, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io("chmod userlist"))?;
        give_to(&users, user)?;
        let mut text = databases;
        let path = |key: &str, p: &Path| -> Result<String, LocalPgError> {
            let shown = p.display().to_string();
            ini_value(key, &shown)?;
            Ok(shown)
        };
        let _ = write!(
            text,
            "\n[pgbouncer]\nlisten_addr = {addr}\nlisten_port = {port}\nunix_socket_dir = {sock}\n\
             auth_type = scram-sha-256\nauth_file = {users}\nadmin_users = {admin}\n\
             {PLATFORM}\
             server_login_retry = 1\nserver_connect_timeout = 5\nlogfile = {log}\npidfile = {pid}\n",
            addr = ini_word("listen_addr", addr)?,
            sock = path("unix_socket_dir", dir)?,
            users = path("auth_file", &users)?,
            admin = ini_word("admin_users", &auth.admin.name)?,
            log = path("logfile", &dir.join("pgbouncer.log"))?,
            pid = path("pidfile", &dir.join("pgbouncer.pid"))?,
        );
        for (k, v) in extra {
            let _ = writeln!(text, "{}", ini_line(k, v)?);
        }
        fs::write(&ini, text).map_err(io("write pgbouncer.ini"))?;
        give_to(&ini, user)?;
        let mut cmd = command(&program, user);
        cmd.arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(io("start pgbouncer"))?;
        let pooler = LocalPgBouncer {
            dir: dir.to_path_buf(),
            addr: addr.to_string(),
            port,
            ini,
            user,
            auth: auth.clone(),
            child: Some(child),
        };
        let owner = std::process::id();
        let pid = pooler.pid().to_string();
        let kill = [OsStr::new("kill"), OsStr::new("-9"), OsStr::new(&pid)];
        spawn_watchdog(owner, &kill, None)?;
        pooler.wait_listening(Duration::from_secs(10))?;
        Ok(pooler)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn wait_listening(&self, timeout: Duration) -> Result<(), LocalPgError> {
        let deadline = Instant::now() + timeout;
        while std::net::TcpStream::connect((self.addr.as_str(), self.port)).is_err() {
            if Instant::now() >= deadline {
                let log = fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
                return Err(LocalPgError::Timeout {
                    what: format!("pgbouncer listening on port {} (log: {log})", self.port),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(())
    }

    /// Admin console URL, with the admin's password.
    pub fn admin_url(&self) -> String {
        self.url("pgbouncer", &self.auth.admin.name)
    }

    /// URL clients use for database `name` as `user`, with its password when PgBouncer has one.
    pub fn url(&self, name: &str, user: &str) -> String {
        let login = match self.auth.password_of(user) {
            Some(pw) => format!("{}:{}", url_encode(user), url_encode(pw)),
            None => url_encode(user),
        };
        format!(
            "postgres://{login}@{}:{}/{name}?sslmode=disable",
            self.addr, self.port
        )
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalPgBouncer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn databases_and_users_that_would_break_the_files_are_refused() {
        let db = |name: &str, dbname: &str| PgBouncerDatabase {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: 5432,
            dbname: dbname.into(),
        };
        assert_eq!(
            db("app", "app").ini_line().unwrap(),
            "app = host=127.0.0.1 port=5432 dbname=app"
        );
        assert!(db("app\nauth_type = trust", "app").ini_line().is_err());
        assert!(db("app", "app port=1").ini_line().is_err());
        let auth = |pw: &str| PgBouncerAuth {
            admin: PgBouncerUser::new("pgbouncer", Some("admin pw")),
            users: vec![PgBouncerUser::new("app\"user", Some(pw))],
        };
        assert_eq!(
            auth("p\"w").userlist().unwrap(),
            "\"pgbouncer\" \"admin pw\"\n\"app\"\"user\" \"p\"\"w\"\n"
        );
        let e = auth("pw\n\"x\" \"\"").userlist().unwrap_err().to_string();
        assert!(e.contains("userlist.txt") && !e.contains("pw"), "{e}");
        // No trust: a user without a password is refused, never let in.
        let no_password = PgBouncerAuth {
            admin: PgBouncerUser::new("pgbouncer", Some("admin pw")),
            users: vec![PgBouncerUser::new("app", None)],
        };
        let e = no_password.userlist().unwrap_err().to_string();
        assert!(e.contains("needs a password"), "{e}");
    }
}
