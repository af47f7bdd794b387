//! Nothing acknowledged is lost: asynchronous commits, a full disk inside
//! the write pause.

use super::*;

/// Writers with `synchronous_commit = off` (acknowledged before their WAL is
/// written) and the WAL writer slowed to 1 s: the final sync waits for the
/// old primary's position *flushed*, so every acknowledged commit reaches
/// the new primary. Also: the target class's settings win over the source's
/// postgresql.auto.conf that pg_basebackup copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_commits_are_not_lost() {
    let mut t = Topology::new();
    let p = &t.cluster.primary;
    must(p.psql("postgres", "ALTER SYSTEM SET wal_writer_delay = '1s'"));
    must(p.psql("postgres", "ALTER SYSTEM SET wal_writer_flush_after = 0"));
    // Copied by pg_basebackup; the class's shared_buffers must still win.
    must(p.psql("postgres", "ALTER SYSTEM SET shared_buffers = '33MB'"));
    must(p.psql("postgres", "SELECT pg_reload_conf()"));
    must(p.psql(
        "postgres",
        "ALTER DATABASE app SET synchronous_commit = off",
    ));
    // PgBouncer's server connections must pick the database setting up.
    let admin = harness::connect(&t.pooler.admin_url()).await;
    admin.simple_query("RECONNECT app").await.unwrap();
    let probe = harness::connect(&t.pooler_url()).await;
    let rows = probe.simple_query("SHOW synchronous_commit").await.unwrap();
    let setting = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(setting.as_deref(), Some("off"));
    drop(probe);

    let load = Load::start(
        &t.pooler_url(),
        4,
        Duration::from_millis(2),
        Duration::from_secs(120),
    );
    load.wait_progress(100).await;
    let out = t.upgrade(None);
    assert!(out.status.success(), "{}", text(&out));
    t.follow_upgrade();
    load.wait_progress(50).await;
    load.finish_clean(&t).await;
    let rec = latest_record(&t.state_dir());
    let note = rec
        .step(pgsteward::upgrade::record::Step::FinalSync)
        .output
        .note
        .clone()
        .unwrap_or_default();
    assert!(note.contains("flushed"), "{note}");
    // The class's settings win over the copied postgresql.auto.conf.
    let rows = harness::query(&t.primary_url, "SHOW shared_buffers").await;
    assert_eq!(rows[0].get::<_, String>(0), "40MB");
}

/// A tmpfs of `size` mounted at `dir` for the test's lifetime.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        must(std::fs::create_dir_all(dir).map_err(|e| e.to_string()));
        let out = must(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0700"),
                    "tmpfs",
                ])
                .arg(dir)
                .output()
                .map_err(|e| e.to_string()),
        );
        assert!(
            out.status.success(),
            "mount tmpfs (the test runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The journal on a small filesystem that fills up inside the write pause
/// (after the fence): the pause is undone without the journal (PgBouncer
/// resumed, the old primary unfenced and writable), file and memory agree,
/// and once the disk is freed `upgrade resume` records the roll back and a
/// second one completes the upgrade. Nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_inside_the_pause_rolls_back() {
    let mut t = Topology::new();
    let _disk = SmallDisk::mount(&t.state_dir(), "256k");
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(4),
        Duration::from_secs(300),
    );
    load.wait_progress(20).await;
    let fp = format!("fence_old_primary-done=fill:{}", t.state_dir().display());
    let out = t.upgrade(Some(&fp));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("journal could not be written") && stderr.contains("upgrade resume"),
        "{}",
        text(&out)
    );
    // Writes go on, on the old primary, unfenced.
    load.wait_progress(20).await;
    assert_eq!(t.check_one_writable().await, t.primary_url);
    let hba = std::fs::read_to_string(t.cluster.primary.data_dir.join("pg_hba.conf")).unwrap();
    assert!(!hba.contains("pgsteward fence"), "{hba}");
    // The file replays (torn tail cut back, padding skipped).
    let rec = latest_record(&t.state_dir());
    assert!(!rec.promote_started());

    must(std::fs::remove_file(t.state_dir().join("fill")).map_err(|e| e.to_string()));
    let out = t.pgsteward(&["upgrade", "resume"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rolled back"),
        "{}",
        text(&out)
    );
    let out = t.pgsteward(&["upgrade", "resume"], None);
    assert!(out.status.success(), "{}", text(&out));
    t.follow_upgrade();
    load.wait_progress(20).await;
    load.finish_clean(&t).await;
}

/// The disk fills up right when promote starts (its start cannot be
/// written): reported as what it is, the journal before promote, not as a
/// failure of an earlier step; the pause is undone without the journal and
/// writes go on, on the old primary. Nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_when_promote_starts_is_named() {
    let t = Topology::new();
    let _disk = SmallDisk::mount(&t.state_dir(), "256k");
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(4),
        Duration::from_secs(300),
    );
    load.wait_progress(20).await;
    let fp = format!("final_sync-done=fill:{}", t.state_dir().display());
    let out = t.upgrade(Some(&fp));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the journal could not be written before promote started")
            && !stderr.contains("pause_writes"),
        "{}",
        text(&out)
    );
    wait_keeper(&t.state_dir());
    load.wait_progress(20).await;
    assert_eq!(t.check_one_writable().await, t.primary_url);
    load.finish_clean(&t).await;
}
