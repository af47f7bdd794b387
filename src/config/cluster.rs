//! What a loaded file describes, split by owner. The file keeps its shape
//! (one cluster's sections side by side with the process's); after
//! validation it becomes a [`Process`] (the HTTP endpoint, the state root)
//! and one [`Cluster`] (its database and everything done to it), so a
//! subsystem says in its signature which one it works on, and a cluster is a
//! value a process could hold several of.

use std::path::PathBuf;

use super::{
    ArchiveConfig, CapacityConfig, CutoverConfig, DatabaseConfig, HttpConfig, LagConfig,
    PartitionsConfig, UpgradeConfig,
};

/// The name of the one cluster a file describes. The file has no key for it
/// (its format predates the split); a process serving several clusters
/// would read one name per cluster.
pub const DEFAULT_CLUSTER: &str = "default";

/// A loaded configuration: the process and the one cluster it serves.
#[derive(Debug, Clone)]
pub struct Config {
    pub process: Process,
    pub cluster: Cluster,
}

impl Config {
    /// Every cluster this process serves (one today): code that would loop
    /// over clusters loops over this, not over a field.
    pub fn clusters(&self) -> std::slice::Iter<'_, Cluster> {
        std::slice::from_ref(&self.cluster).iter()
    }
}

/// Settings of the process itself, whichever clusters it serves. Logging is
/// a command-line setting (`--log-level`, `--log-format`), not a file one.
#[derive(Debug, Clone)]
pub struct Process {
    pub http: HttpConfig,
    /// The directory every cluster's state lives under (`upgrade.state_dir`
    /// in the file, where it predates the split).
    pub state_root: PathBuf,
}

impl Process {
    /// Where the cluster named `name` keeps its state. The one cluster of a
    /// file keeps the root itself, where its journals have always been (an
    /// upgrade in flight across a binary update must find its journal); a
    /// process serving several clusters would give each `root/<name>` here.
    fn state_dir_of(&self, name: &str) -> PathBuf {
        debug_assert_eq!(name, DEFAULT_CLUSTER, "one cluster per process today");
        self.state_root.clone()
    }
}

/// One PostgreSQL cluster: its primary (and replicas) and everything the
/// steward does to it. Nothing here is shared with another cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Names the cluster in logs and on disk; [`DEFAULT_CLUSTER`] today.
    pub name: String,
    /// This cluster's upgrade journals and locks (under [`Process::state_root`]).
    pub state_dir: PathBuf,
    pub database: DatabaseConfig,
    pub partitions: PartitionsConfig,
    pub lag: LagConfig,
    pub capacity: CapacityConfig,
    pub upgrade: UpgradeConfig,
    pub cutover: CutoverConfig,
    /// Where `retention_mode = "archive"` puts retired partitions.
    pub archive: Option<ArchiveConfig>,
}

impl Config {
    /// The values the code uses, made from a validated file.
    pub(super) fn split(f: super::FileConfig) -> Config {
        let process = Process {
            http: f.http,
            state_root: f.upgrade.state_dir.clone(),
        };
        let name = DEFAULT_CLUSTER.to_string();
        let cluster = Cluster {
            state_dir: process.state_dir_of(&name),
            name,
            database: f.database,
            partitions: f.partitions,
            lag: f.lag,
            capacity: f.capacity,
            upgrade: f.upgrade,
            cutover: f.cutover,
            archive: f.archive,
        };
        Config { process, cluster }
    }
}

#[cfg(test)]
mod tests {
    use figment::providers::{Format, Toml};
    use figment::Figment;

    use super::*;

    fn load(toml: &str) -> Config {
        match super::super::from_figment(Figment::new().merge(Toml::string(toml)), None) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_file_splits_into_the_process_and_its_one_cluster() {
        let cfg = load(
            "[database]\nprimary = \"postgres://s@h/app\"\n[http]\nlisten = \"127.0.0.1:9999\"\n\
             [upgrade]\nstate_dir = \"/srv/steward\"\npause_timeout = \"3s\"\n",
        );
        assert_eq!(cfg.process.http.listen.port(), 9999);
        assert_eq!(cfg.process.state_root, PathBuf::from("/srv/steward"));
        // One cluster keeps the root itself: journals stay where they were.
        assert_eq!(cfg.cluster.state_dir, cfg.process.state_root);
        assert_eq!(cfg.cluster.name, DEFAULT_CLUSTER);
        assert_eq!(cfg.cluster.upgrade.pause_timeout.0.as_secs(), 3);
        let names: Vec<&str> = cfg.clusters().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [DEFAULT_CLUSTER]);
    }

    #[test]
    fn the_default_state_root_is_unchanged() {
        let cfg = load("[database]\nprimary = \"postgres://s@h/app\"\n");
        assert_eq!(cfg.cluster.state_dir, PathBuf::from("/var/lib/pgsteward"));
    }
}
