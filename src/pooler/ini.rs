//! The `[databases]` section of a pgbouncer.ini: reading where an entry
//! points and rewriting it atomically.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::PoolerError;

/// The `name = value` lines of the `[databases]` section of `text`, in
/// order: names trimmed, values as written, comments left out.
pub fn database_lines(text: &str) -> impl Iterator<Item = (&str, &str)> + '_ {
    let mut section = String::new();
    text.lines().filter_map(move |line| {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.to_ascii_lowercase();
            return None;
        }
        if section != "[databases]" || t.starts_with(';') || t.starts_with('#') {
            return None;
        }
        t.split_once('=').map(|(k, v)| (k.trim(), v))
    })
}

/// Every `[databases]` entry of `text`: (name, host, port). The `*` fallback
/// entry is left out (it names no one database).
pub fn ini_entries(text: &str) -> Vec<(String, String, u16)> {
    database_lines(text)
        .filter(|(name, _)| *name != "*" && !name.is_empty())
        .map(|(name, v)| {
            let (host, port) = entry_address(v);
            (name.to_string(), host, port)
        })
        .collect()
}

/// `host=` and `port=` of an entry's value (5432 when no port is given).
fn entry_address(v: &str) -> (String, u16) {
    let mut host = None;
    let mut port = 5432;
    for tok in v.split_whitespace() {
        match tok.split_once('=') {
            Some(("host", h)) => host = Some(h.to_string()),
            Some(("port", p)) => port = p.parse().unwrap_or(5432),
            _ => {}
        }
    }
    (host.unwrap_or_default(), port)
}

/// The `host` and `port` the `[databases]` entry `db` of `text` points at
/// (its first entry, as PgBouncer reads it).
pub fn ini_target(text: &str, db: &str) -> Option<(String, u16)> {
    database_lines(text)
        .find(|(name, _)| *name == db)
        .map(|(_, v)| entry_address(v))
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

/// When a rewritten file must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Synced (file and directory) before returning.
    Now,
    /// Written and synced, renamed into place (PgBouncer reads it on
    /// RELOAD); the directory's sync, which makes the rename durable, comes
    /// later with [`sync_file`], outside the write pause. A host lost
    /// before it comes back with the old file whole, whose entry points at
    /// the fenced old primary (refused logins, not lost writes).
    Later,
}

/// Points entry `db` of the pgbouncer.ini at `path` to `host:port`,
/// atomically and durably (see [`rewrite_ini_entries`]).
pub fn rewrite_ini(path: &Path, db: &str, host: &str, port: u16) -> Result<(), PoolerError> {
    rewrite_ini_entries(path, &[db.to_string()], host, port, Durability::Now).map(|_| ())
}

/// Points every entry of `dbs` in the pgbouncer.ini at `path` to
/// `host:port` in one atomic replacement: a temporary file beside it (same
/// mode and owner), rename, and with [`Durability::Now`] the file's and
/// the directory's sync. A file already pointing there is left alone.
/// Returns whether the file was replaced.
pub fn rewrite_ini_entries(
    path: &Path,
    dbs: &[String],
    host: &str,
    port: u16,
    durability: Durability,
) -> Result<bool, PoolerError> {
    let ini_err = |detail: String| PoolerError::Ini {
        path: path.to_path_buf(),
        detail,
    };
    let text = fs::read_to_string(path).map_err(|e| ini_err(e.to_string()))?;
    let mut new = text.clone();
    for db in dbs {
        if ini_target(&new, db) == Some((host.to_string(), port)) {
            continue;
        }
        new = retarget_ini(&new, db, host, port).ok_or_else(|| {
            ini_err(format!(
                "no entry `{db} = ...` in its [databases] section; add it or fix cutover.database"
            ))
        })?;
    }
    if new == text {
        return Ok(false);
    }
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
        // Synced before the rename whatever the durability: a crash must
        // never put an empty or torn file in place (not every filesystem
        // orders data before a rename); only the directory's sync may wait.
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
    if durability == Durability::Now {
        sync_dir(path)?;
    }
    Ok(true)
}

/// Syncs `path` and its directory (after a [`Durability::Later`] rewrite;
/// harmless on a file already on disk).
pub fn sync_file(path: &Path) -> Result<(), PoolerError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| PoolerError::Ini {
            path: path.to_path_buf(),
            detail: format!("fsync: {e}"),
        })?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), PoolerError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PoolerError::Ini {
            path: path.to_path_buf(),
            detail: format!("fsync {}: {e}", dir.display()),
        })
}

impl super::Poolers {
    /// Rewrites every cut-over `[databases]` entry in every config file to `host:port`.
    pub async fn rewrite(
        &mut self,
        host: &str,
        port: u16,
        durability: Durability,
    ) -> Result<(), PoolerError> {
        self.discover().await?;
        // One replacement per file, whatever the number of its entries and
        // of the instances sharing it.
        let mut files: Vec<(PathBuf, Vec<String>)> = Vec::new();
        for e in &self.endpoints {
            let Some(ini) = &e.ini else {
                return Err(PoolerError::Ini {
                    path: PathBuf::new(),
                    detail: format!("no config file for {}; set cutover.config_file", e.name),
                });
            };
            let at = match files.iter().position(|(p, _)| p == ini) {
                Some(i) => i,
                None => {
                    files.push((ini.clone(), Vec::new()));
                    files.len() - 1
                }
            };
            for db in &e.dbs {
                if !files[at].1.contains(db) {
                    files[at].1.push(db.clone());
                }
            }
        }
        for (ini, dbs) in &files {
            rewrite_ini_entries(ini, dbs, host, port, durability)?;
        }
        Ok(())
    }

    /// Syncs every instance's configuration file (after a rewrite with
    /// [`Durability::Later`]; idempotent, so a resumed upgrade syncs what a
    /// crashed run left unsynced).
    pub async fn sync_configs(&self) -> Result<(), PoolerError> {
        let mut paths: Vec<PathBuf> = self
            .endpoints
            .iter()
            .filter_map(|e| e.ini.clone())
            .collect();
        paths.sort();
        paths.dedup();
        let task = tokio::task::spawn_blocking(move || paths.iter().try_for_each(|p| sync_file(p)));
        // Bounded: a disk that hangs fails the step (outside the window,
        // forward only: `upgrade resume` syncs again).
        match tokio::time::timeout(self.limit(), task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(PoolerError::Ini {
                path: PathBuf::new(),
                detail: format!("sync task: {e}"),
            }),
            Err(_) => Err(PoolerError::Ini {
                path: PathBuf::new(),
                detail: format!(
                    "the configuration files were not synced within {:?}; is the disk hung?",
                    self.limit()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INI: &str = "[databases]\n; app = host=old\napp = host=10.0.0.1 port=5432 dbname=app pool_size=20\nother = host=10.0.0.9\n\n[pgbouncer]\nlisten_port = 6432\n";

    #[test]
    fn reads_the_target() {
        assert_eq!(ini_target(INI, "app"), Some(("10.0.0.1".into(), 5432)));
        assert_eq!(ini_target(INI, "other"), Some(("10.0.0.9".into(), 5432)));
        assert_eq!(ini_target(INI, "nope"), None);
    }

    #[test]
    fn lists_every_named_entry() {
        let text =
            format!("{INI}\n[databases]\n* = host=fallback\nbatch = host=10.0.0.1 dbname=app\n");
        assert_eq!(
            ini_entries(&text),
            vec![
                ("app".into(), "10.0.0.1".into(), 5432),
                ("other".into(), "10.0.0.9".into(), 5432),
                ("batch".into(), "10.0.0.1".into(), 5432),
            ]
        );
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

    #[test]
    fn every_entry_of_a_file_moves_in_one_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pgbouncer.ini");
        fs::write(&p, INI).unwrap();
        let dbs = ["app".to_string(), "other".to_string()];
        assert!(rewrite_ini_entries(&p, &dbs, "127.0.0.1", 7000, Durability::Later).unwrap());
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(ini_target(&text, "app"), Some(("127.0.0.1".into(), 7000)));
        assert_eq!(ini_target(&text, "other"), Some(("127.0.0.1".into(), 7000)));
        sync_file(&p).unwrap();
        // Already there: left alone.
        assert!(!rewrite_ini_entries(&p, &dbs, "127.0.0.1", 7000, Durability::Now).unwrap());
        let missing = ["app".to_string(), "nope".to_string()];
        assert!(rewrite_ini_entries(&p, &missing, "h", 1, Durability::Now).is_err());
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            text,
            "nothing written on error"
        );
    }
}
