//! What a child process gets: a minimal environment, and a password only
//! through a private password file.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Command;

use super::{give_to, io, LocalPgError, ServerUser};

/// Environment variables a child may keep: what finds programs and formats
/// text. Nothing else passes: no `AWS_*` credentials, no `PGSTEWARD_*`
/// settings (connection strings with passwords), no `PGPASSWORD`; a server
/// lets any superuser read its environment (`COPY ... FROM PROGRAM 'env'`).
pub fn is_passed_to_children(var: &str) -> bool {
    matches!(var, "PATH" | "LANG" | "TZ" | "HOME" | "TMPDIR") || var.starts_with("LC_")
}

/// Clears `cmd`'s environment down to [`is_passed_to_children`]; `HOME` is
/// the server user's when the child runs as that user.
pub fn minimal_env(cmd: &mut Command, user: Option<ServerUser>) {
    cmd.env_clear();
    for (k, v) in std::env::vars_os() {
        if k.to_str().is_some_and(is_passed_to_children) {
            cmd.env(k, v);
        }
    }
    if let Some(u) = user {
        if let Ok(Some(pw)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(u.uid)) {
            cmd.env("HOME", pw.dir);
        }
    }
}

/// A login for a child process: the password reaches it through a password
/// file in a private directory (0700, file 0600), never its arguments, and
/// the directory is removed when this is dropped.
pub struct ChildLogin {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub(crate) password: Option<String>,
    _dir: Option<tempfile::TempDir>,
    passfile: Option<PathBuf>,
    /// A standby made with this login streams through this physical slot
    /// of its source (`pg_basebackup -S`, then `primary_slot_name`).
    pub slot: Option<String>,
    /// A standby made with this login names this database in its
    /// `primary_conninfo`: PostgreSQL 17+'s slot synchronization connects there.
    pub dbname: Option<String>,
}

impl ChildLogin {
    /// A login as `user` at `host:port`, with `password` if there is one.
    /// The password file is readable by `owner` (the child's user) only.
    pub fn new(
        host: &str,
        port: u16,
        user: &str,
        password: Option<&str>,
        owner: Option<ServerUser>,
    ) -> Result<ChildLogin, LocalPgError> {
        let mut login = ChildLogin {
            host: host.to_string(),
            port,
            user: user.to_string(),
            password: password.map(str::to_string),
            _dir: None,
            passfile: None,
            slot: None,
            dbname: None,
        };
        if let Some(pw) = password {
            let dir = tempfile::Builder::new()
                .prefix("pgsteward-login-")
                .tempdir()
                .map_err(io("create a private directory for a password file"))?;
            let path = dir.path().join("pgpass");
            let line = crate::pg::libpq::passfile_line("*", "*", "*", user, pw);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io(format!("write {}", path.display())))?;
            std::io::Write::write_all(&mut f, line.as_bytes())
                .map_err(io(format!("write {}", path.display())))?;
            give_to(dir.path(), owner)?;
            give_to(&path, owner)?;
            login.passfile = Some(path);
            login._dir = Some(dir);
        }
        Ok(login)
    }

    /// Points `cmd` (a libpq program) at the password file.
    pub fn apply(&self, cmd: &mut Command) {
        if let Some(p) = &self.passfile {
            cmd.env("PGPASSFILE", p);
        }
    }
}
