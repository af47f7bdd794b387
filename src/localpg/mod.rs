//! PostgreSQL servers and PgBouncer on this host: find the binaries, create a
//! cluster with `initdb` or `pg_basebackup`, start, stop, promote. Used by the
//! local upgrade provider, `pgsteward demo` and the test harness.
//!
//! PostgreSQL refuses to run as root, so when this process is root every server
//! program runs as the `postgres` user, and every directory made for it is
//! handed to that user.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod majors;
pub use majors::{
    check_supported, major_bin_dir, major_of_version_num, parse_major, pg_cache_dir,
    plain_conninfo, program_major, MAX_MAJOR, MIN_MAJOR,
};

#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error("{program} not found {looked}; install it: {install}")]
    MissingBinary {
        program: String,
        /// Where it was looked for.
        looked: String,
        install: &'static str,
    },
    #[error("running as root, but there is no `postgres` user to run the server as (create it: useradd --system postgres)")]
    NoServerUser,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("no free loopback port: {0}")]
    NoPort(std::io::Error),
    #[error("PostgreSQL {version} is not supported: pgsteward needs PostgreSQL 13 or newer (tested on 13 to 18)")]
    Unsupported { version: String },
    #[error("{program} is PostgreSQL {found}, but the server is PostgreSQL {server}; set upgrade.local.bin_dir to the bin directory of PostgreSQL {server} (Debian: /usr/lib/postgresql/{server}/bin, package postgresql-{server})")]
    WrongMajor {
        program: String,
        found: u32,
        server: u32,
    },
    #[error("{file}: cannot write setting {key:?}: {reason}")]
    InvalidSetting {
        file: &'static str,
        key: String,
        reason: &'static str,
    },
    #[error("{path}: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("{what} did not happen within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
}

impl LocalPgError {
    /// The failure kind for metrics: one per subsystem.
    pub fn metric_label(&self) -> crate::outcome::ErrorLabel {
        crate::outcome::ErrorLabel::LocalServer
    }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalPgError {
    let what = what.into();
    move |source| LocalPgError::Io { what, source }
}

mod bouncer;
mod child;
mod cluster;
mod conf;
mod sql;
mod watchdog;
pub use crate::pg::conninfo::url_encode;
pub use bouncer::{LocalPgBouncer, PgBouncerAuth, PgBouncerDatabase, PgBouncerUser};
pub use child::{is_passed_to_children, minimal_env, ChildLogin};
pub use cluster::{Cluster, StopMode};
pub use conf::{conf_line, conf_value, ini_line};
pub(crate) use watchdog::spawn_watchdog;
pub use watchdog::stop_when_gone;

pub const INSTALL_POSTGRES: &str = "apt-get install -y postgresql";
pub const INSTALL_PGBOUNCER: &str = "apt-get install -y pgbouncer";

/// The user server processes run as: `None` means "as this process".
#[derive(Debug, Clone, Copy)]
pub struct ServerUser {
    pub uid: u32,
    pub gid: u32,
}

impl ServerUser {
    /// `postgres` when running as root, otherwise nobody in particular.
    pub fn detect() -> Result<Option<ServerUser>, LocalPgError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Ok(None);
        }
        match nix::unistd::User::from_name("postgres") {
            Ok(Some(u)) => Ok(Some(ServerUser {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            })),
            _ => Err(LocalPgError::NoServerUser),
        }
    }
}

/// Finds a PostgreSQL program: `bin_dir` if given, then PATH, then the newest
/// `/usr/lib/postgresql/*/bin` (Debian keeps server programs off PATH).
pub fn find_program(program: &str, bin_dir: Option<&Path>) -> Result<PathBuf, LocalPgError> {
    let install = if program == "pgbouncer" {
        INSTALL_PGBOUNCER
    } else {
        INSTALL_POSTGRES
    };
    let missing = || LocalPgError::MissingBinary {
        program: program.into(),
        looked: match bin_dir {
            Some(d) => format!("in {}", d.display()),
            None => "on PATH or under /usr/lib/postgresql/*/bin".into(),
        },
        install,
    };
    if let Some(dir) = bin_dir {
        let p = dir.join(program);
        // psql of any major talks to every supported server, and the
        // server-only packages of other majors ship none: look further.
        if p.is_file() || program != "psql" {
            return if p.is_file() { Ok(p) } else { Err(missing()) };
        }
    }
    // Debian's /usr/lib/postgresql/N/bin is preferred to PATH so initdb,
    // postgres and pg_basebackup come from one version.
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions
        .iter()
        .rev()
        .find(|(_, d)| d.join(program).is_file())
    {
        return Ok(dir.join(program));
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join(program);
        if p.is_file() {
            return Ok(p);
        }
    }
    for dir in ["/usr/sbin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(program);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(missing())
}

/// A port on 127.0.0.1 nobody listens on right now, and that no other caller
/// of this function (in this process or another one on the host) has been
/// given. `bind(0)` only says the port is free now: the server binds it
/// later, and in between the kernel may hand the same port to the next
/// caller, whose server then answers for ours. So a port is handed out once
/// per process and held, for the process's lifetime, by an exclusive lock on
/// a file named after it (released by the kernel when the process ends,
/// kill -9 included).
pub fn free_port() -> Result<u16, LocalPgError> {
    static HANDED_OUT: std::sync::Mutex<Vec<PortClaim>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut last = None;
    for _ in 0..FREE_PORT_ATTEMPTS {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(LocalPgError::NoPort)?;
        let port = l.local_addr().map_err(LocalPgError::NoPort)?.port();
        if handed_out.iter().any(|c| c.port == port) {
            continue;
        }
        match PortClaim::take(port) {
            Some(claim) => {
                handed_out.push(claim);
                return Ok(port);
            }
            None => last = Some(port),
        }
    }
    Err(LocalPgError::NoPort(std::io::Error::other(format!(
        "{FREE_PORT_ATTEMPTS} free ports were all claimed by other processes (last {last:?}); \
         lock files in {}",
        port_lock_dir().display()
    ))))
}

const FREE_PORT_ATTEMPTS: usize = 64;

fn port_lock_dir() -> PathBuf {
    std::env::temp_dir().join("pgsteward-ports")
}

/// A port this process was given, and the lock that keeps it ours.
struct PortClaim {
    port: u16,
    _lock: Option<nix::fcntl::Flock<fs::File>>,
}

impl PortClaim {
    /// `None` when another process holds the port's lock. Where no lock file
    /// can be made (read-only temp dir), the port is still ours in-process.
    fn take(port: u16) -> Option<PortClaim> {
        let dir = port_lock_dir();
        let file = fs::create_dir_all(&dir)
            .and_then(|()| {
                let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777));
                let path = dir.join(port.to_string());
                // Another user's lock file: reading is enough to lock it.
                fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .or_else(|_| fs::File::open(&path))
            })
            .ok();
        let Some(file) = file else {
            return Some(PortClaim { port, _lock: None });
        };
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Some(PortClaim {
                port,
                _lock: Some(lock),
            }),
            Err(_) => None,
        }
    }
}

/// Makes `dir` (and its parents) and hands it to the server user with mode 0700.
pub fn make_server_dir(dir: &Path, user: Option<ServerUser>) -> Result<(), LocalPgError> {
    fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    give_to(dir, user)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io(format!("chmod {}", dir.display())))
}

/// Hands a path to the server user (no-op when not root).
pub fn give_to(path: &Path, user: Option<ServerUser>) -> Result<(), LocalPgError> {
    if let Some(u) = user {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
            .map_err(io(format!("chown {}", path.display())))?;
    }
    Ok(())
}

pub(crate) fn command(program: &Path, user: Option<ServerUser>) -> Command {
    let mut cmd = Command::new(program);
    if let Some(u) = user {
        cmd.uid(u.uid).gid(u.gid);
        // A server started from root's cwd may be unable to stat it.
        cmd.current_dir("/");
    }
    minimal_env(&mut cmd, user);
    cmd.env("LC_ALL", "C.UTF-8");
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<String, LocalPgError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io(what.to_string()))?;
    if !out.status.success() {
        let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if detail.is_empty() {
            detail = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        let _ = write!(detail, " ({})", out.status);
        return Err(LocalPgError::Command {
            what: what.to_string(),
            detail,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port is handed out once, and its lock keeps every other holder of
    /// the lock file (another process; here another open of the file) away.
    #[test]
    fn a_free_port_is_handed_out_once_and_locked() {
        let ports: Vec<u16> = (0..20).map(|_| free_port().unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        assert!(
            PortClaim::take(ports[0]).is_none(),
            "port {} not locked",
            ports[0]
        );
    }
}
