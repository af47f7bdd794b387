//! libpq's conventions for what a connection string leaves out: `PG*`
//! environment variables as defaults, and the password file.
//!
//! Precedence, as in libpq: a setting in the connection string, then its
//! environment variable, then the built-in default; for the password, the
//! connection string, then `PGPASSWORD`, then the password file (`passfile`
//! in the string, else `PGPASSFILE`, else `~/.pgpass`).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::conninfo::ConnParams;

/// Connection parameters filled from the environment when the string omits
/// them, with their variables.
pub const ENV_DEFAULTS: [(&str, &str); 9] = [
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("dbname", "PGDATABASE"),
    ("user", "PGUSER"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("application_name", "PGAPPNAME"),
];

/// Where libpq keeps Unix sockets by default; a password file line for
/// `localhost` matches it.
const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// A snapshot of the variables libpq reads, so that resolution is a pure
/// function of it (and tests need not touch the process environment).
#[derive(Debug, Clone, Default)]
pub struct PgEnv {
    vars: BTreeMap<String, String>,
    home: Option<PathBuf>,
    os_user: Option<String>,
}

impl PgEnv {
    /// The process's own environment.
    pub fn from_process() -> PgEnv {
        let mut vars = BTreeMap::new();
        for (_, var) in ENV_DEFAULTS {
            if let Ok(v) = std::env::var(var) {
                vars.insert(var.to_string(), v);
            }
        }
        for var in ["PGPASSWORD", "PGPASSFILE"] {
            if let Ok(v) = std::env::var(var) {
                vars.insert(var.to_string(), v);
            }
        }
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
            .ok()
            .flatten();
        PgEnv {
            vars,
            home: std::env::var_os("HOME")
                .map(PathBuf::from)
                .or_else(|| user.as_ref().map(|u| u.dir.clone())),
            os_user: user.map(|u| u.name),
        }
    }

    /// An empty environment with `vars` set (tests, and callers that must
    /// not consult the process environment).
    pub fn with_vars<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> PgEnv {
        PgEnv {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            home: None,
            os_user: None,
        }
    }

    /// The same environment with `var` set.
    pub fn set(mut self, var: &str, value: &str) -> PgEnv {
        self.vars.insert(var.to_string(), value.to_string());
        self
    }

    pub fn home(mut self, home: impl Into<PathBuf>) -> PgEnv {
        self.home = Some(home.into());
        self
    }

    pub fn os_user(mut self, user: impl Into<String>) -> PgEnv {
        self.os_user = Some(user.into());
        self
    }

    pub fn get(&self, var: &str) -> Option<&str> {
        self.vars
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn os_user_name(&self) -> Option<&str> {
        self.os_user.as_deref()
    }

    /// The password file libpq would read: `passfile` from the string, else
    /// `PGPASSFILE`, else `~/.pgpass`.
    pub fn passfile(&self, from_string: Option<&str>) -> Option<PathBuf> {
        from_string
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| self.get("PGPASSFILE").map(PathBuf::from))
            .or_else(|| self.home.as_ref().map(|h| h.join(".pgpass")))
    }
}

/// Fills what `params` leaves out from the environment (see [`ENV_DEFAULTS`]).
pub fn apply_env_defaults(params: &mut ConnParams, env: &PgEnv) {
    for (key, var) in ENV_DEFAULTS {
        if params.get(key).is_none() {
            if let Some(v) = env.get(var) {
                params.set(key, v);
            }
        }
    }
}

/// Where a password was found, or every place that was looked in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordLookup {
    Found {
        password: String,
        /// "the connection string", "PGPASSWORD", "password file /x/.pgpass".
        source: String,
    },
    NotFound {
        /// One entry per place, saying why it gave nothing.
        looked: Vec<String>,
    },
}

/// The password for a connection to `host:port/dbname` as `user`, found the
/// way libpq finds it. Warnings (a password file with group or world access)
/// are logged, as libpq prints them, and the file is ignored.
pub fn find_password(
    explicit: Option<&str>,
    passfile_param: Option<&str>,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
    env: &PgEnv,
) -> PasswordLookup {
    if let Some(p) = explicit {
        return PasswordLookup::Found {
            password: p.to_string(),
            source: "the connection string".into(),
        };
    }
    let mut looked = vec!["the connection string: no password".to_string()];
    if let Some(p) = env.get("PGPASSWORD") {
        return PasswordLookup::Found {
            password: p.to_string(),
            source: "PGPASSWORD".into(),
        };
    }
    looked.push("PGPASSWORD: not set".into());
    let Some(path) = env.passfile(passfile_param) else {
        looked.push("password file: none (no passfile, PGPASSFILE or HOME)".into());
        return PasswordLookup::NotFound { looked };
    };
    match read_passfile(&path) {
        Err(why) => {
            looked.push(format!("password file {}: {why}", path.display()));
            PasswordLookup::NotFound { looked }
        }
        Ok(text) => {
            // A socket in libpq's default directory is "localhost" to the file.
            let host = if host.is_empty() || DEFAULT_SOCKET_DIRS.contains(&host) {
                "localhost"
            } else {
                host
            };
            let port = if port.is_empty() { "5432" } else { port };
            match match_passfile_line(&text, host, port, dbname, user) {
                Some((line, password)) => PasswordLookup::Found {
                    password,
                    source: format!("password file {} line {line}", path.display()),
                },
                None => {
                    looked.push(format!(
                        "password file {}: no line matches {host}:{port}:{dbname}:{user}",
                        path.display()
                    ));
                    PasswordLookup::NotFound { looked }
                }
            }
        }
    }
}

/// Why libpq would not use a password file: the text after "password file PATH: ".
#[derive(Debug, thiserror::Error)]
enum PassfileError {
    #[error("not found")]
    NotFound,
    #[error("cannot be read: {0}")]
    Unreadable(std::io::Error),
    #[error("ignored: not a plain file")]
    NotPlainFile,
    #[error("ignored: it has group or world access (mode {mode:o}); permissions should be u=rw (0600) or less: chmod 0600 {}", .path.display())]
    OpenToOthers { mode: u32, path: PathBuf },
}

/// The file's text, or why libpq would not use it.
fn read_passfile(path: &Path) -> Result<String, PassfileError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PassfileError::NotFound),
        Err(e) => return Err(PassfileError::Unreadable(e)),
    };
    if !meta.is_file() {
        if first_warning(path) {
            tracing::warn!(path = %path.display(), "password file is not a plain file");
        }
        return Err(PassfileError::NotPlainFile);
    }
    if meta.permissions().mode() & 0o077 != 0 {
        // libpq's own warning, word for word; the file is then ignored.
        if first_warning(path) {
            tracing::warn!(
                "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                path.display()
            );
        }
        return Err(PassfileError::OpenToOthers {
            mode: meta.mode() & 0o777,
            path: path.to_path_buf(),
        });
    }
    std::fs::read_to_string(path).map_err(PassfileError::Unreadable)
}

/// Whether this process has not yet warned about `path`: every connection
/// looks the password up again, and one command makes several, but the
/// operator needs the warning once.
fn first_warning(path: &Path) -> bool {
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut warned = match WARNED.lock() {
        Ok(w) => w,
        // A panic elsewhere while holding it leaves a usable list.
        Err(poisoned) => poisoned.into_inner(),
    };
    if warned.iter().any(|p| p == path) {
        false
    } else {
        warned.push(path.to_path_buf());
        true
    }
}

/// The password of the first line matching `host:port:dbname:user`:
/// `*` matches anything, `\` escapes `:` and `\`, `#` starts a comment line.
pub fn match_passfile(
    text: &str,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    match_passfile_line(text, host, port, dbname, user).map(|(_, password)| password)
}

/// [`match_passfile`] with the matching line's number (from 1), for saying
/// which line a refused password came from.
fn match_passfile_line(
    text: &str,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<(usize, String)> {
    let wanted = [host, port, dbname, user];
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_passfile_line(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = fields[..4]
            .iter()
            .zip(wanted)
            .all(|((raw, value), want)| raw == "*" || value == want);
        if matches {
            return Some((number + 1, fields[4].1.clone()));
        }
    }
    None
}

/// Splits on unescaped `:` into at most five fields (the password keeps any
/// further colons); each field as written (to tell a bare `*` from `\*`) and unescaped.
fn split_passfile_line(line: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let (mut raw, mut value) = (String::new(), String::new());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            raw.push(c);
            if let Some(n) = chars.next() {
                raw.push(n);
                value.push(n);
            }
        } else if c == ':' && fields.len() < 4 {
            fields.push((std::mem::take(&mut raw), std::mem::take(&mut value)));
        } else {
            raw.push(c);
            value.push(c);
        }
    }
    fields.push((raw, value));
    fields
}

/// One line of a password file for exactly `host:port:dbname:user`, escaped.
pub fn passfile_line(host: &str, port: &str, dbname: &str, user: &str, password: &str) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    format!(
        "{}:{}:{}:{}:{}\n",
        esc(host),
        esc(port),
        esc(dbname),
        esc(user),
        esc(password)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passfile_lines_match_like_libpq() {
        let text = "# comment\n\
                    db:5432:app:other:no\n\
                    db:*:app:steward:first\\:one\n\
                    *:*:*:steward:second\n\
                    h\\:x:1:d:u:with:colons\n";
        assert_eq!(
            match_passfile(text, "db", "6432", "app", "steward").as_deref(),
            Some("first:one")
        );
        assert_eq!(
            match_passfile(text, "db", "6432", "other", "steward").as_deref(),
            Some("second")
        );
        assert_eq!(
            match_passfile(text, "h:x", "1", "d", "u").as_deref(),
            Some("with:colons")
        );
        assert_eq!(match_passfile(text, "db", "5432", "app", "nobody"), None);
        // An escaped star is a literal star.
        assert_eq!(match_passfile("\\*:*:*:*:p\n", "db", "1", "d", "u"), None);
        let line = passfile_line("h", "5432", "d", "u", "a:b\\c");
        assert_eq!(
            match_passfile(&line, "h", "5432", "d", "u").as_deref(),
            Some("a:b\\c")
        );
    }

    #[test]
    fn password_precedence_and_every_place_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "*:*:*:u:from-file\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let f = file.to_str().unwrap();
        let env = PgEnv::with_vars([("PGPASSWORD", "from-env"), ("PGPASSFILE", f)]);
        let find =
            |explicit, env: &PgEnv| find_password(explicit, None, "h", "5432", "d", "u", env);
        assert!(
            matches!(find(Some("x"), &env), PasswordLookup::Found { source, .. } if source == "the connection string")
        );
        assert!(
            matches!(find(None, &env), PasswordLookup::Found { password, .. } if password == "from-env")
        );
        let env = PgEnv::with_vars([("PGPASSFILE", f)]);
        assert!(
            matches!(find(None, &env), PasswordLookup::Found { password, .. } if password == "from-file")
        );
        // Group-readable: ignored, and the reason is given.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        match find(None, &env) {
            PasswordLookup::NotFound { looked } => {
                assert_eq!(looked.len(), 3, "{looked:?}");
                assert!(looked[2].contains("group or world access"), "{looked:?}");
            }
            other => panic!("{other:?}"),
        }
        // HOME's .pgpass when nothing else is named.
        let env = PgEnv::with_vars([]).home(dir.path());
        match find(None, &env) {
            PasswordLookup::NotFound { looked } => {
                assert!(looked[2].contains(".pgpass: not found"), "{looked:?}")
            }
            other => panic!("{other:?}"),
        }
    }
}
