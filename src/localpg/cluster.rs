//! One PostgreSQL cluster on this host: create it (`initdb`, `pg_basebackup`),
//! configure it, start and stop it, and run setup SQL through `psql`.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::conf::{base_settings, conf_line, conf_string, unescape_conf};
use super::{
    command, find_program, give_to, io, make_server_dir, run, url_encode, ChildLogin, LocalPgError,
    ServerUser,
};

/// One PostgreSQL cluster on this host. Dropping it does not stop the server:
/// call [`Cluster::stop`] (the test harness wraps it in a guard that does).
#[derive(Debug, Clone)]
pub struct Cluster {
    pub data_dir: PathBuf,
    pub port: u16,
    pub bin_dir: Option<PathBuf>,
    pub user: Option<ServerUser>,
    /// The server's log, outside the data directory so a base backup does not copy it.
    pub log_file: PathBuf,
    /// The `postgres` superuser's password, when known: [`Cluster::url`] carries it.
    pub superuser_password: Option<String>,
}

impl Cluster {
    /// Describes an existing data directory without touching it.
    pub fn at(data_dir: &Path, port: u16, bin_dir: Option<&Path>) -> Result<Cluster, LocalPgError> {
        Ok(Cluster {
            data_dir: data_dir.to_path_buf(),
            port,
            bin_dir: bin_dir.map(Path::to_path_buf),
            user: ServerUser::detect()?,
            log_file: data_dir.with_extension("log"),
            superuser_password: None,
        })
    }

    /// The same cluster, its superuser logging in with `password`.
    pub fn with_superuser_password(mut self, password: &str) -> Cluster {
        self.superuser_password = Some(password.to_string());
        self
    }

    pub(super) fn program(&self, name: &str) -> Result<PathBuf, LocalPgError> {
        find_program(name, self.bin_dir.as_deref())
    }

    fn socket_dir(&self) -> PathBuf {
        self.data_dir.with_extension("sock")
    }

    /// `initdb` a new cluster (superuser `postgres` without a password; see
    /// [`Cluster::init_with_password`]) with `settings` appended to postgresql.conf.
    pub fn init(
        data_dir: &Path,
        port: u16,
        bin_dir: Option<&Path>,
        settings: &[(String, String)],
    ) -> Result<Cluster, LocalPgError> {
        Cluster::init_with_password(data_dir, port, bin_dir, settings, None)
    }

    /// `initdb` a new cluster whose superuser `postgres` has `password`
    /// (given to initdb in a private password file). TCP logins use
    /// scram-sha-256 (see [`Cluster::write_hba`]).
    pub fn init_with_password(
        data_dir: &Path,
        port: u16,
        bin_dir: Option<&Path>,
        settings: &[(String, String)],
        password: Option<&str>,
    ) -> Result<Cluster, LocalPgError> {
        let mut cluster = Cluster::at(data_dir, port, bin_dir)?;
        make_server_dir(data_dir, cluster.user)?;
        let mut cmd = command(&cluster.program("initdb")?, cluster.user);
        cmd.arg("-D").arg(data_dir).args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-N",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        // --pwfile reads the first line of a file: the password never is an argument.
        let pwdir;
        if let Some(pw) = password {
            pwdir = tempfile::Builder::new()
                .prefix("pgsteward-initdb-")
                .tempdir()
                .map_err(io("create a private directory for initdb"))?;
            let file = pwdir.path().join("pw");
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{pw}\n").as_bytes()))
                .map_err(io(format!("write {}", file.display())))?;
            give_to(pwdir.path(), cluster.user)?;
            give_to(&file, cluster.user)?;
            cmd.arg(format!("--pwfile={}", file.display()));
            cluster.superuser_password = Some(pw.to_string());
        }
        run(cmd, "initdb")?;
        cluster.write_hba()?;
        cluster.write_settings(settings)?;
        Ok(cluster)
    }

    /// `pg_basebackup -R` from `source` into a new data directory: a streaming
    /// replica of `source` once started, its superuser password the same.
    pub fn basebackup(
        source: &Cluster,
        data_dir: &Path,
        port: u16,
        settings: &[(String, String)],
    ) -> Result<Cluster, LocalPgError> {
        let login = ChildLogin::new(
            "127.0.0.1",
            source.port,
            "postgres",
            source.superuser_password.as_deref(),
            source.user,
        )?;
        let mut cluster =
            Cluster::basebackup_as(&login, data_dir, port, source.bin_dir.as_deref(), settings)?;
        cluster.superuser_password = source.superuser_password.clone();
        Ok(cluster)
    }

    /// `pg_basebackup -R` from any server reachable as `user@host:port`
    /// without a password (trust); see [`Cluster::basebackup_as`].
    pub fn basebackup_from(
        host: &str,
        source_port: u16,
        user: &str,
        data_dir: &Path,
        port: u16,
        bin_dir: Option<&Path>,
        settings: &[(String, String)],
    ) -> Result<Cluster, LocalPgError> {
        let login = ChildLogin::new(host, source_port, user, None, None)?;
        Cluster::basebackup_as(&login, data_dir, port, bin_dir, settings)
    }

    /// `pg_basebackup -R` logging in as `login`. pg_basebackup reads the
    /// password from the login's password file; the replica then needs it to
    /// stream, so `primary_conninfo` (in the new data directory's
    /// postgresql.auto.conf, 0600, as pg_basebackup itself writes it when given
    /// a password) carries the password instead of the path of that file.
    pub fn basebackup_as(
        login: &ChildLogin,
        data_dir: &Path,
        port: u16,
        bin_dir: Option<&Path>,
        settings: &[(String, String)],
    ) -> Result<Cluster, LocalPgError> {
        let cluster = Cluster::at(data_dir, port, bin_dir)?;
        make_server_dir(data_dir, cluster.user)?;
        let mut cmd = command(&cluster.program("pg_basebackup")?, cluster.user);
        login.apply(&mut cmd);
        cmd.arg("-D")
            .arg(data_dir)
            .args([
                "-h",
                &login.host,
                "-p",
                &login.port.to_string(),
                "-U",
                &login.user,
            ])
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-w"]);
        if let Some(slot) = &login.slot {
            cmd.args(["-S", slot]);
        }
        run(cmd, "pg_basebackup")?;
        cluster.fix_primary_conninfo(login.password.as_deref(), login.dbname.as_deref())?;
        cluster.write_settings(settings)?;
        Ok(cluster)
    }

    /// Replaces `passfile=...` (the temporary file pg_basebackup was given)
    /// in the `primary_conninfo` it wrote with the password itself, and
    /// names `dbname` there when given.
    fn fix_primary_conninfo(
        &self,
        password: Option<&str>,
        dbname: Option<&str>,
    ) -> Result<(), LocalPgError> {
        let path = self.data_dir.join("postgresql.auto.conf");
        let text = fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
        let mut out = String::new();
        for line in text.lines() {
            let fixed = line
                .strip_prefix("primary_conninfo = '")
                .and_then(|v| v.strip_suffix('\''))
                .and_then(|v| {
                    let conninfo = unescape_conf(v);
                    let mut p = crate::pg::conninfo::ConnParams::parse(&conninfo).ok()?;
                    p.take("passfile");
                    if let Some(pw) = password {
                        p.set("password", pw);
                    }
                    if let Some(db) = dbname {
                        p.set("dbname", db);
                    }
                    Some(format!(
                        "primary_conninfo = {}",
                        conf_string(&p.to_key_value())
                    ))
                });
            out.push_str(fixed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        fs::write(&path, out).map_err(io(format!("write {}", path.display())))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(io(format!("chmod {}", path.display())))?;
        give_to(&path, self.user)
    }

    /// Every TCP login, replication included, authenticates with
    /// scram-sha-256, as in production. The Unix socket stays `trust`: it is
    /// how the demo and the test harness bootstrap their own clusters (psql
    /// sets passwords and makes roles), and it lives in a directory of mode
    /// 0700 that only the server's user (and root) can enter.
    fn write_hba(&self) -> Result<(), LocalPgError> {
        let hba = "local all all trust\nlocal replication all trust\n\
                   host all all 127.0.0.1/32 scram-sha-256\n\
                   host replication all 127.0.0.1/32 scram-sha-256\n";
        let path = self.data_dir.join("pg_hba.conf");
        fs::write(&path, hba).map_err(io(format!("write {}", path.display())))?;
        give_to(&path, self.user)
    }

    /// Writes `pgsteward.conf` (base settings, then `extra`, later wins) and includes it.
    pub fn write_settings(&self, extra: &[(String, String)]) -> Result<(), LocalPgError> {
        let socket_dir = self.socket_dir();
        make_server_dir(&socket_dir, self.user)?;
        let mut text = String::from("# written by pgsteward\n");
        for (k, v) in base_settings(self.port, &socket_dir).iter().chain(extra) {
            let _ = writeln!(text, "{}", conf_line(k, v)?);
        }
        let conf = self.data_dir.join("pgsteward.conf");
        fs::write(&conf, text).map_err(io(format!("write {}", conf.display())))?;
        give_to(&conf, self.user)?;
        let main = self.data_dir.join("postgresql.conf");
        let current = fs::read_to_string(&main).map_err(io(format!("read {}", main.display())))?;
        if !current.contains("include_if_exists = 'pgsteward.conf'") {
            fs::write(
                &main,
                format!("{current}\ninclude_if_exists = 'pgsteward.conf'\n"),
            )
            .map_err(io(format!("write {}", main.display())))?;
        }
        Ok(())
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> Result<(), LocalPgError> {
        // pg_ctl runs the server through `sh -c` with the paths in double
        // quotes: these characters would change that command line.
        for path in [&self.data_dir, &self.log_file] {
            let shown = path.display().to_string();
            if shown.contains(['"', '$', '`', '\\']) {
                return Err(LocalPgError::UnsafePath {
                    path: shown,
                    reason: "pg_ctl cannot start a server whose data directory or log path holds \" $ ` or \\",
                });
            }
        }
        if let Some(parent) = self.log_file.parent() {
            fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
        }
        if !self.log_file.exists() {
            fs::write(&self.log_file, "")
                .map_err(io(format!("create {}", self.log_file.display())))?;
        }
        give_to(&self.log_file, self.user)?;
        let mut cmd = command(&self.program("pg_ctl")?, self.user);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", "60", "start"]);
        run(cmd, &format!("pg_ctl start ({})", self.data_dir.display()))
            .map_err(|e| self.with_log_tail(e))?;
        Ok(())
    }

    /// Stops the server: `fast` rolls back sessions and checkpoints, `immediate` is a crash.
    pub fn stop(&self, mode: StopMode) -> Result<(), LocalPgError> {
        if !self.is_running() {
            return Ok(());
        }
        let mut cmd = command(&self.program("pg_ctl")?, self.user);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "60", "-m", mode.as_str(), "stop"]);
        run(cmd, "pg_ctl stop").map(|_| ())
    }

    /// Whether a postmaster runs on this data directory.
    pub fn is_running(&self) -> bool {
        let pid_file = self.data_dir.join("postmaster.pid");
        let Ok(text) = fs::read_to_string(pid_file) else {
            return false;
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        else {
            return false;
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
    }

    /// The postmaster's pid, when running.
    pub fn pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// A `postgres://` URL for `dbname` as the superuser, with its password when known.
    pub fn url(&self, dbname: &str) -> String {
        let login = match &self.superuser_password {
            Some(pw) => format!("postgres:{}", url_encode(pw)),
            None => "postgres".into(),
        };
        format!(
            "postgres://{login}@127.0.0.1:{}/{dbname}?sslmode=disable",
            self.port
        )
    }

    /// Runs SQL through `psql` (for setup scripts; the program itself uses
    /// tokio-postgres), as the superuser over the Unix socket.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, LocalPgError> {
        let mut cmd = self.psql_command(dbname)?;
        cmd.args(["-c", sql]);
        run(cmd, "psql")
    }

    /// [`Cluster::psql`] with the SQL on standard input rather than the
    /// command line: for statements that carry a password.
    pub fn psql_secret(&self, dbname: &str, sql: &str) -> Result<String, LocalPgError> {
        let mut cmd = self.psql_command(dbname)?;
        cmd.args(["-f", "-"]);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("psql"))?;
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, sql.as_bytes()).map_err(io("psql stdin"))?;
        }
        let out = child.wait_with_output().map_err(io("psql"))?;
        if !out.status.success() {
            return Err(LocalPgError::Command {
                what: "psql".into(),
                detail: format!(
                    "{} ({})",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    out.status
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub(super) fn psql_command(&self, dbname: &str) -> Result<Command, LocalPgError> {
        let mut cmd = command(&self.program("psql")?, None);
        let socket_dir = self.socket_dir();
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&socket_dir)
            .args(["-U", "postgres"])
            .args(["-p", &self.port.to_string(), "-d", dbname]);
        Ok(cmd)
    }

    /// Waits until the server answers `SELECT 1`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), LocalPgError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.psql("postgres", super::sql::READY).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LocalPgError::Timeout {
                    what: format!("server on port {} ready", self.port),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn with_log_tail(&self, e: LocalPgError) -> LocalPgError {
        let tail: String = fs::read_to_string(&self.log_file)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        match e {
            LocalPgError::Command { what, detail } => LocalPgError::Command {
                what,
                detail: format!("{detail}\nserver log {}:\n{tail}", self.log_file.display()),
            },
            other => other,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum StopMode {
    Fast,
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}
