//! PostgreSQL clusters for tests: the initdb template, primaries, streaming
//! replicas (also of other majors), and a primary with its replicas that
//! stops everything on drop.

use super::*;

/// An initdb'd data directory reused by every cluster of this test run:
/// copying it is ten times faster than running initdb per test.
fn template() -> &'static PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let initdb = must(localpg::find_program("initdb", bin_dir()));
        let version = must(
            Command::new(&initdb)
                .arg("--version")
                .output()
                .map_err(|e| e.to_string()),
        );
        let tag: String = String::from_utf8_lossy(&version.stdout)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
            .collect();
        // Kept across runs; built under a private name and renamed into place so a
        // concurrent run never sees half a template.
        let root = std::env::temp_dir().join(format!("pgsteward-template-{tag}-scram2"));
        if root.join("data").join("PG_VERSION").exists() {
            return root;
        }
        let building =
            std::env::temp_dir().join(format!("pgsteward-template-{tag}.{}", std::process::id()));
        let user = server_user();
        must(localpg::make_server_dir(&building, user));
        must(Cluster::init_with_password(
            &building.join("data"),
            1,
            bin_dir(),
            &[],
            Some(SUPER_PASSWORD),
        ));
        if std::fs::rename(&building, &root).is_err() {
            let _ = std::fs::remove_dir_all(&building);
        }
        root
    })
}

/// Throwaway directory the server user can enter.
pub fn server_tempdir() -> TempDir {
    let dir = must(tempfile::Builder::new().prefix("pgsteward-test-").tempdir());
    must(localpg::make_server_dir(dir.path(), server_user()));
    dir
}

/// Settings for test servers: fast and small; durability of the OS is not under test.
pub fn test_settings() -> Vec<(String, String)> {
    [
        ("fsync", "off"),
        ("synchronous_commit", "on"),
        ("full_page_writes", "off"),
        ("shared_buffers", "32MB"),
        ("max_connections", "100"),
        ("wal_receiver_status_interval", "1s"),
        ("log_min_messages", "warning"),
        // Every server can publish: logical subscribers and CDC consumers
        // watch the tests that move rows (tests/it/logical.rs).
        ("wal_level", "logical"),
        ("max_replication_slots", "20"),
        ("max_wal_senders", "20"),
        // Small WAL: a standby that follows many promotions (the crash
        // test's 36) receives a fresh 16 MB segment per timeline and keeps
        // them until a restartpoint, which max_wal_size brings forward
        // (1.4 GB in one replica otherwise). wal_keep_size keeps a margin
        // for a replica held back (SIGSTOP) while the primary checkpoints.
        ("max_wal_size", "64MB"),
        ("min_wal_size", "32MB"),
        ("wal_keep_size", "64MB"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Makes and starts a new primary in `dir/name` from the template.
pub fn new_primary(dir: &Path, name: &str) -> Cluster {
    let data = dir.join(name);
    let out = must(
        Command::new("cp")
            .arg("-a")
            .arg(template().join("data"))
            .arg(&data)
            .output()
            .map_err(|e| e.to_string()),
    );
    assert!(
        out.status.success(),
        "cp template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = must(localpg::free_port());
    let cluster = must(Cluster::at(&data, port, bin_dir())).with_superuser_password(SUPER_PASSWORD);
    must(cluster.write_settings(&test_settings()));
    must(cluster.start());
    must(localpg::stop_when_gone(&cluster, std::process::id()));
    make_roles(&cluster, Grants::Base);
    cluster
}

/// Makes and starts a streaming replica of `primary` in `dir/name`.
pub fn new_replica(dir: &Path, name: &str, primary: &Cluster) -> Cluster {
    let port = must(localpg::free_port());
    let replica = must(make_replica(
        primary,
        &dir.join(name),
        port,
        &test_settings(),
    ));
    must(replica.start());
    must(localpg::stop_when_gone(&replica, std::process::id()));
    replica
}

/// The major under test: `STEWARD_TEST_PG=13..18` (not `PGSTEWARD_`: those
/// variables are configuration overrides), else the newest
/// Debian installs (`/usr/lib/postgresql/*/bin`).
pub fn test_major() -> Option<u32> {
    static MAJOR: OnceLock<Option<u32>> = OnceLock::new();
    *MAJOR.get_or_init(|| {
        let v = std::env::var("STEWARD_TEST_PG").ok()?;
        let major: u32 = match v.trim().parse() {
            Ok(m) if (localpg::MIN_MAJOR..=localpg::MAX_MAJOR).contains(&m) => m,
            _ => panic!(
                "test harness: STEWARD_TEST_PG={v:?}: expected a major from {} to {}",
                localpg::MIN_MAJOR,
                localpg::MAX_MAJOR
            ),
        };
        Some(major)
    })
}

/// The server programs of [`test_major`]: Debian's, or the copy `scripts/test`
/// fetched. `None`: found as the program itself finds them.
pub fn bin_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let major = test_major()?;
        match localpg::major_bin_dir(major) {
            Some(dir) => Some(dir),
            None => panic!(
                "test harness: PostgreSQL {major} is not installed (looked in /usr/lib/postgresql/{major}/bin \
                 and {}); fetch it: STEWARD_TEST_PG={major} scripts/test --no-run",
                localpg::pg_cache_dir().join(major.to_string()).join("bin").display()
            ),
        }
    })
    .as_deref()
}

/// The major of the servers the harness starts.
pub fn server_major() -> u32 {
    static MAJOR: OnceLock<u32> = OnceLock::new();
    *MAJOR.get_or_init(|| {
        let postgres = must(localpg::find_program("postgres", bin_dir()));
        must(localpg::program_major(&postgres))
    })
}

/// A streaming replica of `primary`, made the best way its major allows:
/// its own `pg_basebackup`; else Debian's PostgreSQL 15 `pg_basebackup`,
/// which reads older servers (not newer ones); else a file copy under the
/// low-level backup API (the fetched server-only packages have no
/// `pg_basebackup`).
pub fn make_replica(
    primary: &Cluster,
    data: &Path,
    port: u16,
    settings: &[(String, String)],
) -> Result<Cluster, localpg::LocalPgError> {
    let own = primary
        .bin_dir
        .as_deref()
        .map_or(true, |d| d.join("pg_basebackup").is_file());
    if own {
        return Cluster::basebackup(primary, data, port, settings);
    }
    let debian15 = Path::new("/usr/lib/postgresql/15/bin");
    if server_major() < 15 && debian15.join("pg_basebackup").is_file() {
        let login = localpg::ChildLogin::new(
            "127.0.0.1",
            primary.port,
            "postgres",
            primary.superuser_password.as_deref(),
            primary.user,
        )?;
        let mut replica = Cluster::basebackup_as(&login, data, port, Some(debian15), settings)?;
        replica.superuser_password = primary.superuser_password.clone();
        // Only the backup came from 15: the replica runs the primary's major,
        // whose libpq may not know every option 15 writes into primary_conninfo
        // (13 has no `sslsni`): a plain one replaces it.
        replica.bin_dir = primary.bin_dir.clone();
        let auto = data.join("postgresql.auto.conf");
        let text = std::fs::read_to_string(&auto).map_err(|source| localpg::LocalPgError::Io {
            what: format!("read {}", auto.display()),
            source,
        })?;
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with("primary_conninfo"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&auto, kept).map_err(|source| localpg::LocalPgError::Io {
            what: format!("write {}", auto.display()),
            source,
        })?;
        let mut all = settings.to_vec();
        all.push(("primary_conninfo".into(), localpg::plain_conninfo(primary)));
        replica.write_settings(&all)?;
        return Ok(replica);
    }
    Cluster::file_copy_replica(primary, data, port, settings)
}

/// A primary with `n` streaming replicas; everything stops on drop.
pub struct TestCluster {
    pub primary: Cluster,
    pub replicas: Vec<Cluster>,
    /// Extra servers a test made (e.g. an upgrade's new primary), stopped on drop too.
    pub others: Vec<Cluster>,
    pub dir: TempDir,
}

impl TestCluster {
    pub fn start(replicas: usize) -> TestCluster {
        let dir = server_tempdir();
        let primary = new_primary(dir.path(), "primary");
        let replicas = (0..replicas)
            .map(|i| new_replica(dir.path(), &format!("replica{i}"), &primary))
            .collect();
        TestCluster {
            primary,
            replicas,
            others: Vec::new(),
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until every replica has replayed everything the primary has
    /// written; fails after [`CATCH_UP_WAIT`] with each replica's replay
    /// position, the primary's and the time waited.
    pub fn wait_replicas_caught_up(&self) {
        self.wait_replicas_caught_up_within(CATCH_UP_WAIT)
    }

    pub fn wait_replicas_caught_up_within(&self, wait: Duration) {
        let lsn = must(self.primary.psql("postgres", "SELECT pg_current_wal_lsn()"))
            .trim()
            .to_string();
        let t0 = Instant::now();
        for r in &self.replicas {
            loop {
                let caught = must(r.psql(
                    "postgres",
                    &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
                ));
                if caught.trim() == "t" {
                    break;
                }
                if t0.elapsed() > wait {
                    let seen: Vec<String> = self
                        .replicas
                        .iter()
                        .map(|r| format!("replica :{} replayed {}", r.port, replay_position(r)))
                        .collect();
                    panic!(
                        "replicas not caught up with the primary (:{}) at {lsn} after {:?}: {}",
                        self.primary.port,
                        t0.elapsed(),
                        seen.join("; ")
                    );
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }
}

/// How long [`TestCluster::wait_replicas_caught_up`] waits: generous, since
/// a test that goes on with a lagging replica fails later and obscurely.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(30);

/// A replica's replay position as it reports it, or why it could not.
fn replay_position(r: &Cluster) -> String {
    match r.psql(
        "postgres",
        "SELECT coalesce(pg_last_wal_replay_lsn()::text, 'nothing') || CASE WHEN pg_is_in_recovery() THEN '' ELSE ' (not in recovery)' END",
    ) {
        Ok(out) => out.trim().to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for c in self
            .others
            .iter()
            .chain(&self.replicas)
            .chain(std::iter::once(&self.primary))
        {
            let _ = c.stop(StopMode::Immediate);
        }
    }
}

/// A replica that stops replaying is reported with what was seen, not
/// waited out in silence.
#[test]
fn a_replica_that_does_not_catch_up_is_reported() {
    let tc = TestCluster::start(1);
    must(tc.replicas[0].psql("postgres", "SELECT pg_wal_replay_pause()"));
    must(
        tc.primary
            .psql("postgres", "CREATE TABLE moved_on (id int)"),
    );
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tc.wait_replicas_caught_up_within(Duration::from_secs(1))
    }));
    let message = match failed {
        Ok(()) => panic!("a paused replica was reported caught up"),
        Err(p) => p.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(
        message.contains("not caught up")
            && message.contains(&format!("replica :{} replayed", tc.replicas[0].port))
            && message.contains("after 1."),
        "{message}"
    );
    must(tc.replicas[0].psql("postgres", "SELECT pg_wal_replay_resume()"));
    tc.wait_replicas_caught_up();
}
