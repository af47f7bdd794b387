//! PostgreSQL majors on this host: where the programs of a given major live,
//! which major a program is, and a streaming replica made without
//! `pg_basebackup` (the server-only binary packages the tests fetch for the
//! majors Debian does not ship have none).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::sql;
use super::{give_to, io, make_server_dir, run, Cluster, LocalPgError};

/// The oldest major pgsteward supports (`DETACH ... CONCURRENTLY` is 14+,
/// everything else it uses is in 13).
pub const MIN_MAJOR: u32 = 13;
/// The newest major pgsteward is tested on.
pub const MAX_MAJOR: u32 = 18;

/// Where `scripts/test` puts the PostgreSQL majors it fetches:
/// `<cache>/<major>/bin`. `$STEWARD_PG_CACHE`, else a system directory
/// for root (root's home is closed to the `postgres` user the servers run
/// as), else `~/.cache/pgsteward/postgresql`. `scripts/lib/deps.sh` agrees.
pub fn pg_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STEWARD_PG_CACHE") {
        return PathBuf::from(dir);
    }
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/var/cache/pgsteward/postgresql");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("pgsteward").join("postgresql")
}

/// The bin directory holding `postgres` of `major`: Debian's
/// `/usr/lib/postgresql/<major>/bin`, else the fetched copy in [`pg_cache_dir`].
pub fn major_bin_dir(major: u32) -> Option<PathBuf> {
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    let fetched = pg_cache_dir().join(major.to_string()).join("bin");
    [debian, fetched]
        .into_iter()
        .find(|d| d.join("postgres").is_file())
}

/// The major version of a PostgreSQL program, from `program --version`
/// ("pg_basebackup (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)" → 15).
pub fn program_major(program: &Path) -> Result<u32, LocalPgError> {
    let mut cmd = Command::new(program);
    cmd.arg("--version");
    let out = run(cmd, &format!("{} --version", program.display()))?;
    parse_major(&out).ok_or_else(|| LocalPgError::Command {
        what: format!("{} --version", program.display()),
        detail: format!("no version in {:?}", out.trim()),
    })
}

/// The major of a `--version` line or a `server_version` setting.
pub fn parse_major(text: &str) -> Option<u32> {
    let version = text
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The major of a `server_version_num` (150014 → 15).
pub fn major_of_version_num(num: i32) -> u32 {
    u32::try_from(num / 10000).unwrap_or(0)
}

/// Refuses a server older than [`MIN_MAJOR`], naming its version.
pub fn check_supported(server_version: &str) -> Result<u32, LocalPgError> {
    let major = parse_major(server_version).unwrap_or(0);
    if major < MIN_MAJOR {
        return Err(LocalPgError::Unsupported {
            version: server_version.to_string(),
        });
    }
    Ok(major)
}

/// A `primary_conninfo` value to stream from `source` (a server on this
/// host) as its superuser: only options every supported major's libpq knows.
/// [`Cluster::write_settings`] quotes it for postgresql.conf.
pub fn plain_conninfo(source: &Cluster) -> String {
    match crate::pg::conninfo::ConnParams::parse("host=127.0.0.1 user=postgres") {
        Ok(mut p) => {
            p.set("port", source.port.to_string());
            if let Some(pw) = &source.superuser_password {
                p.set("password", pw.clone());
            }
            p.to_key_value()
        }
        // A constant that parses: unreachable, but never a panic.
        Err(_) => format!("host=127.0.0.1 user=postgres port={}", source.port),
    }
}

/// SQL of the low-level (non-exclusive) base backup API, which was renamed in 15.
fn backup_api(major: u32) -> (&'static str, &'static str) {
    if major >= 15 {
        (sql::BACKUP_START, sql::BACKUP_STOP_LABEL)
    } else {
        (
            sql::BACKUP_START_BEFORE_15,
            sql::BACKUP_STOP_LABEL_BEFORE_15,
        )
    }
}

impl Cluster {
    /// A streaming replica of `source` (a server on this host) made by a file
    /// copy of its data directory between `pg_backup_start` and
    /// `pg_backup_stop`, for majors installed without `pg_basebackup`.
    /// The copy leaves out `pg_wal` (the replica streams it; the source keeps
    /// `wal_keep_size`) and the source's pid files; the stop's label file
    /// becomes `backup_label`, so recovery starts at the backup's checkpoint.
    pub fn file_copy_replica(
        source: &Cluster,
        data_dir: &Path,
        port: u16,
        settings: &[(String, String)],
    ) -> Result<Cluster, LocalPgError> {
        let postgres = source.program("postgres")?;
        let major = program_major(&postgres)?;
        let cluster = Cluster::at(data_dir, port, source.bin_dir.as_deref())?;
        make_server_dir(data_dir, cluster.user)?;
        let (start, stop) = backup_api(major);
        let label = data_dir.join("backup_label");
        // One psql session: the non-exclusive backup ends with the session
        // that started it. `\!` runs the copy inside that session.
        let script = format!(
            "{start}\n\\! tar -C '{src}' --exclude=./postmaster.pid --exclude=./postmaster.opts \
             --exclude='./pg_wal/*' --exclude='./pg_replslot/*' --exclude=./backup_label \
             --warning=no-file-changed --warning=no-file-removed --ignore-failed-read -cf - . \
             | tar -C '{dst}' -xf -\n\\o '{label}'\n{stop}\n",
            src = source.data_dir.display(),
            dst = data_dir.display(),
            label = label.display(),
        );
        // A script file: `-c` takes one command, not SQL and backslash commands.
        let script_file = data_dir.with_extension("backup.sql");
        fs::write(&script_file, &script).map_err(io(format!("write {}", script_file.display())))?;
        let mut cmd = source.psql_command("postgres")?;
        cmd.arg("-f").arg(&script_file);
        let copied = run(cmd, "file-copy base backup");
        let _ = fs::remove_file(&script_file);
        copied?;
        for must_exist in ["PG_VERSION", "global/pg_control", "backup_label"] {
            if !data_dir.join(must_exist).is_file() {
                return Err(LocalPgError::Command {
                    what: "file-copy base backup".into(),
                    detail: format!("{} missing in the copy", must_exist),
                });
            }
        }
        for dir in ["pg_wal", "pg_wal/archive_status", "pg_replslot"] {
            let d = data_dir.join(dir);
            fs::create_dir_all(&d).map_err(io(format!("create {}", d.display())))?;
            give_to(&d, cluster.user)?;
        }
        let signal = data_dir.join("standby.signal");
        fs::write(&signal, "").map_err(io(format!("write {}", signal.display())))?;
        give_to(&signal, cluster.user)?;
        give_to(&label, cluster.user)?;
        let mut all = settings.to_vec();
        all.push(("primary_conninfo".into(), plain_conninfo(source)));
        cluster.write_settings(&all)?;
        let mut cluster = cluster;
        cluster.superuser_password = source.superuser_password.clone();
        Ok(cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_parse_from_versions() {
        assert_eq!(
            parse_major("pg_basebackup (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 18.6"), Some(18));
        assert_eq!(parse_major("13.23"), Some(13));
        assert_eq!(parse_major("12.22 (Ubuntu)"), Some(12));
        assert_eq!(parse_major("18beta1"), Some(18));
        assert_eq!(parse_major("no digits"), None);
        assert_eq!(major_of_version_num(130023), 13);
    }

    #[test]
    fn servers_older_than_13_are_refused_by_version() {
        let e = check_supported("12.22").unwrap_err().to_string();
        assert!(e.contains("12.22") && e.contains("13"), "{e}");
        assert_eq!(check_supported("13.23").unwrap(), 13);
        assert_eq!(check_supported("18.6").unwrap(), 18);
    }
}
