//! Upgrade safety as deployed (issue 9): two runners on separate state
//! directories, asynchronous commits, a hard fence on the old primary.
//! Same topology and invariants as `upgrade.rs`: every acknowledged commit is
//! on the node that is primary now, and at most one node accepts writes.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, must};
use crate::upgrade::{latest_record, Load, Topology};

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The topology's config with another `state_dir` (another pod or host).
pub fn config_with_state_dir(t: &Topology, name: &str) -> (PathBuf, PathBuf) {
    let text = must(std::fs::read_to_string(&t.config).map_err(|e| e.to_string()));
    let state = t.dir().join(name);
    let text = text.replace(
        &format!("state_dir = \"{}\"", t.state_dir().display()),
        &format!("state_dir = \"{}\"", state.display()),
    );
    let path = t.dir().join(format!("{name}.toml"));
    must(std::fs::write(&path, text).map_err(|e| e.to_string()));
    (path, state)
}

pub fn upgrade_cmd(config: &std::path::Path, class: &str, failpoint: Option<&str>) -> Command {
    let mut cmd = harness::pgsteward();
    cmd.arg("--config")
        .arg(config)
        .args(["upgrade", "start", "--target-class", class])
        .env("PGSTEWARD_LOCAL_OWNER_PID", std::process::id().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(fp) = failpoint {
        cmd.env("PGSTEWARD_FAILPOINT", fp);
    }
    cmd
}

fn spawn(mut cmd: Command) -> Child {
    must(cmd.spawn().map_err(|e| e.to_string()))
}

fn wait(child: Child) -> Output {
    must(child.wait_with_output().map_err(|e| e.to_string()))
}

/// Waits (bounded) until the journal in `state_dir` shows `step` started.
pub fn wait_for_step(state_dir: &std::path::Path, step: pgsteward::upgrade::record::Step) {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(p)) = pgsteward::upgrade::journal::latest(state_dir) {
            if let Ok(rec) = pgsteward::upgrade::journal::read(&p) {
                if rec.step(step).started_at.is_some() {
                    return;
                }
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{step} never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two `upgrade start` against one primary from two state_dirs: started
/// together, exactly one completes and the other refuses at once (exit 1,
/// naming the upgrade in flight); started two seconds apart, the second one
/// refuses while the first is mid-way and again while the first waits out
/// retire_after. Never two writable nodes, nothing lost, no client error,
/// and the refused runner leaves no journal behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_one_upgrade() {
    let mut t = Topology::new();
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(4),
        Duration::from_secs(300),
    );
    load.wait_progress(20).await;

    // Together.
    let (config_b, state_b) = config_with_state_dir(&t, "state-b");
    let class = t.next_class();
    let a = spawn(upgrade_cmd(&t.config, class, None));
    let b = spawn(upgrade_cmd(&config_b, class, None));
    let (a, b) = (wait(a), wait(b));
    let (won, lost, lost_state) = if a.status.success() {
        (a, b, state_b.clone())
    } else {
        (b, a, t.state_dir())
    };
    assert!(won.status.success(), "no runner completed:\n{}", text(&won));
    assert_eq!(lost.status.code(), Some(1), "{}", text(&lost));
    let stderr = String::from_utf8_lossy(&lost.stderr);
    assert!(
        stderr.contains("in flight") || stderr.contains("holds the upgrade lock"),
        "{}",
        text(&lost)
    );
    let journals = std::fs::read_dir(&lost_state)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(journals, 0, "the refused runner wrote a journal");
    // Follow whichever state_dir completed.
    if lost_state == t.state_dir() {
        let rec = latest_record(&state_b);
        copy_journal(&state_b, &t.state_dir(), &rec.id);
    }
    t.follow_upgrade();
    load.wait_progress(20).await;
    t.check_one_writable().await;

    // Staggered: A starts, B two seconds later (A is past create by then).
    t.write_config();
    t.retire_after = "3s";
    t.write_config();
    let (config_b, _) = config_with_state_dir(&t, "state-b2");
    let class = t.next_class();
    let a = spawn(upgrade_cmd(&t.config, class, None));
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let b = wait(spawn(upgrade_cmd(&config_b, class, None)));
    assert_eq!(b.status.code(), Some(1), "{}", text(&b));
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "refusal not at once: {:?}",
        t0.elapsed()
    );
    let stderr = String::from_utf8_lossy(&b.stderr);
    let rec_a = {
        let p = pgsteward::upgrade::journal::latest(&t.state_dir())
            .unwrap()
            .expect("A's journal");
        pgsteward::upgrade::journal::read(&p).unwrap()
    };
    assert!(
        stderr.contains(&rec_a.id) && stderr.contains("step") && stderr.contains("since"),
        "the refusal names the upgrade in flight (id, host, step, since):\n{}",
        text(&b)
    );
    // While A waits out retire_after (old primary fenced, still up).
    wait_for_step(&t.state_dir(), pgsteward::upgrade::record::Step::RetireOld);
    let b = wait(spawn(upgrade_cmd(&config_b, class, None)));
    assert_eq!(b.status.code(), Some(1), "{}", text(&b));
    assert!(
        String::from_utf8_lossy(&b.stderr).contains(&rec_a.id),
        "{}",
        text(&b)
    );
    t.check_one_writable_or_paused("during retire_after").await;
    let a = wait(a);
    assert!(a.status.success(), "{}", text(&a));
    t.follow_upgrade();
    load.wait_progress(20).await;

    let ledger = load.stop().await;
    assert!(
        ledger.errors.is_empty(),
        "client errors: {:?}",
        ledger.errors
    );
    t.check_nothing_lost(&ledger.acked).await;
    // The new primary's guard row is finished: partition DDL may run there.
    let client = harness::connect(&t.primary_url).await;
    assert_eq!(
        pgsteward::upgrade::guard::ddl_guard(&client, Duration::from_secs(5))
            .await
            .unwrap(),
        pgsteward::upgrade::guard::DdlGuard::Clear
    );
}

fn copy_journal(from: &std::path::Path, to: &std::path::Path, id: &str) {
    must(std::fs::create_dir_all(to).map_err(|e| e.to_string()));
    let name = format!("{id}.jsonl");
    must(std::fs::copy(from.join(&name), to.join(&name)).map_err(|e| e.to_string()));
}

/// Writers with `synchronous_commit = off` (acknowledged before their WAL is
/// written) and the WAL writer slowed to 1 s: the final sync waits for the
/// old primary's position *flushed*, so every acknowledged commit reaches
/// the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_commits_are_not_lost() {
    let mut t = Topology::new();
    let p = &t.cluster.primary;
    must(p.psql("postgres", "ALTER SYSTEM SET wal_writer_delay = '1s'"));
    must(p.psql("postgres", "ALTER SYSTEM SET wal_writer_flush_after = 0"));
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
    let ledger = load.stop().await;
    assert!(
        ledger.errors.is_empty(),
        "client errors: {:?}",
        ledger.errors
    );
    t.check_nothing_lost(&ledger.acked).await;
    let rec = latest_record(&t.state_dir());
    let note = rec
        .step(pgsteward::upgrade::record::Step::FinalSync)
        .output
        .note
        .clone()
        .unwrap_or_default();
    assert!(note.contains("flushed"), "{note}");
}
