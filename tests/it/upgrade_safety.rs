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

/// Waits (bounded) until the journal in `state_dir` shows `step` started;
/// fails with the runner's output if it ends first.
pub fn wait_for_step(
    state_dir: &std::path::Path,
    step: pgsteward::upgrade::record::Step,
    runner: &mut Child,
) {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(p)) = pgsteward::upgrade::journal::latest(state_dir) {
            if let Ok(rec) = pgsteward::upgrade::journal::read(&p) {
                if rec.in_flight() && rec.step(step).started_at.is_some() {
                    return;
                }
            }
        }
        if let Ok(Some(status)) = runner.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = runner.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("the runner ended ({status}) before {step} started: {err}");
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
        copy_journal(&state_b, &t.state_dir());
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
    let mut a = spawn(upgrade_cmd(&t.config, class, None));
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
    wait_for_step(
        &t.state_dir(),
        pgsteward::upgrade::record::Step::RetireOld,
        &mut a,
    );
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

fn copy_journal(from: &std::path::Path, to: &std::path::Path) {
    must(std::fs::create_dir_all(to).map_err(|e| e.to_string()));
    let path = pgsteward::upgrade::journal::latest(from)
        .unwrap()
        .expect("a journal");
    let name = path.file_name().unwrap();
    // Numbered above everything in `to`, so it is the newest there.
    let dest = to.join(format!("999999-{}", name.to_string_lossy()));
    must(std::fs::copy(&path, dest).map_err(|e| e.to_string()));
}

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
    // The class's settings win over the copied postgresql.auto.conf.
    let rows = harness::query(&t.primary_url, "SHOW shared_buffers").await;
    assert_eq!(rows[0].get::<_, String>(0), "40MB");
}

async fn app_connect(port: u16, options: Option<&str>) -> Result<tokio_postgres::Client, String> {
    let mut url = harness::with_password(
        &format!("postgres://app@127.0.0.1:{port}/app?sslmode=disable"),
        harness::APP_USER,
        harness::APP_PASSWORD,
    );
    if let Some(o) = options {
        url.push_str(&format!("&options={}", o.replace(' ', "%20")));
    }
    let spec = pgsteward::pg::ConnSpec::parse(&url).map_err(|e| e.to_string())?;
    spec.connect(Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())
}

/// Every way an application role could try to commit on the fenced old
/// primary, while it waits out retire_after, and after a restart of it.
async fn assert_fenced(port: u16, label: &str) {
    for options in [None, Some("-c default_transaction_read_only=off")] {
        match app_connect(port, options).await {
            Err(e) => assert!(
                e.contains("pg_hba.conf rejects") || e.contains("reject"),
                "{label}: refused for another reason: {e}"
            ),
            Ok(c) => {
                let r = c
                    .batch_execute(
                        "SET default_transaction_read_only = off; BEGIN READ WRITE; \
                         INSERT INTO ledger (id) VALUES (-7); COMMIT",
                    )
                    .await;
                panic!("{label}: an application session got in ({options:?}): {r:?}");
            }
        }
    }
}

/// The hard fence (fence.rs): from the fence on no application role commits
/// on the old primary whatever it sets (session SET, BEGIN READ WRITE,
/// startup options, role and database settings), its sessions are ended,
/// new ones refused, also after a restart of the old node; a roll back
/// lifts it completely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_fence_holds_and_rolls_back_completely() {
    let mut t = Topology::new();
    let p = &t.cluster.primary;
    // The harness's application role (scram, not a superuser), made if missing.
    must(p.psql(
        "postgres",
        "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') \
         THEN CREATE ROLE app LOGIN; END IF; END$$",
    ));
    must(p.psql("app", "GRANT SELECT, INSERT ON ledger TO app"));
    // Settings that soften a default_transaction_read_only fence.
    must(p.psql(
        "postgres",
        "ALTER ROLE app SET default_transaction_read_only = off",
    ));
    must(p.psql(
        "postgres",
        "ALTER DATABASE app SET default_transaction_read_only = off",
    ));
    t.cluster.wait_replicas_caught_up();
    let old_port = p.port;
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(4),
        Duration::from_secs(300),
    );
    load.wait_progress(20).await;

    // Roll back: fenced, then lifted completely.
    let out = t.upgrade(Some("final_sync-done=error"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let app = app_connect(old_port, None)
        .await
        .expect("app connects after the roll back");
    app.batch_execute("INSERT INTO ledger (id) VALUES (-1)")
        .await
        .expect("app writes after the roll back");
    let hba = std::fs::read_to_string(t.cluster.primary.data_dir.join("pg_hba.conf")).unwrap();
    assert!(!hba.contains("pgsteward fence"), "{hba}");
    let abort = t.pgsteward(&["upgrade", "abort"], None);
    assert!(abort.status.success(), "{}", text(&abort));

    // Complete, with the old primary kept for retire_after.
    t.retire_after = "6s";
    t.write_config();
    let held = app_connect(old_port, None).await.expect("app connects");
    let mut runner = spawn(upgrade_cmd(&t.config, t.next_class(), None));
    wait_for_step(
        &t.state_dir(),
        pgsteward::upgrade::record::Step::RetireOld,
        &mut runner,
    );
    let err = held
        .batch_execute(
            "SET default_transaction_read_only = off; INSERT INTO ledger (id) VALUES (-2)",
        )
        .await;
    assert!(err.is_err(), "an application session survived the fence");
    assert_fenced(old_port, "fenced").await;
    // A superuser session that is not ours starts read-only (where no
    // database setting overrides the server's: the second, soft line).
    let su = harness::connect(&t.cluster.primary.url("postgres")).await;
    let ro: String = su
        .query_one("SHOW default_transaction_read_only", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ro, "on");
    drop(su);
    // The fence survives a restart of the old node.
    must(t.cluster.primary.stop(pgsteward::localpg::StopMode::Fast));
    must(t.cluster.primary.start());
    assert_fenced(old_port, "after restart").await;
    let out = wait(runner);
    assert!(out.status.success(), "{}", text(&out));
    let rec = latest_record(&t.state_dir());
    let fence = rec.step(pgsteward::upgrade::record::Step::FenceOldPrimary);
    let sync = rec.step(pgsteward::upgrade::record::Step::FinalSync);
    let ms = |s: &pgsteward::upgrade::record::StepState| {
        (s.finished_at.unwrap() - s.started_at.unwrap())
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "fence_old_primary {:.1} ms ({}); final_sync {:.1} ms ({})",
        ms(fence),
        fence.output.note.clone().unwrap_or_default(),
        ms(sync),
        sync.output.note.clone().unwrap_or_default()
    );
    t.follow_upgrade();
    load.wait_progress(20).await;
    // The new primary is not fenced: the application role writes there.
    let new_port = pgsteward::pg::ConnSpec::parse(&t.primary_url)
        .unwrap()
        .host_port()
        .1;
    let app = app_connect(new_port, None)
        .await
        .expect("app on the new primary");
    app.batch_execute("INSERT INTO ledger (id) VALUES (-3)")
        .await
        .expect("app writes on the new primary");
    let mut ledger = load.stop().await;
    assert!(
        ledger.errors.is_empty(),
        "client errors: {:?}",
        ledger.errors
    );
    ledger.acked.extend([-1, -3]);
    t.check_nothing_lost(&ledger.acked).await;
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
    let ledger = load.stop().await;
    assert!(
        ledger.errors.is_empty(),
        "client errors: {:?}",
        ledger.errors
    );
    t.check_nothing_lost(&ledger.acked).await;
}

/// An endpoint that accepts TCP connections and never writes a byte (a hung
/// server, a black-holing proxy). Bounded: the thread ends after `max`.
fn silent_endpoint(max: Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut held = Vec::new();
        while t0.elapsed() < max {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    port
}

/// `partitions apply`, `lag` and `check` against a primary (and replica)
/// that accept TCP and never answer: each ends within its timeouts, exit 1.
#[test]
fn silent_endpoint_commands_end_in_time() {
    let port = silent_endpoint(Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://steward@127.0.0.1:{port}/app?sslmode=disable");
    let config = harness::write_config(
        dir.path(),
        &format!(
            "[database]\nprimary = {url:?}\nreplicas = [{url:?}]\nconnect_timeout = \"2s\"\n\n\
             [partitions]\n[[partitions.tables]]\ntable = \"public.audit_log\"\ninterval = \"monthly\"\n\n\
             [lag]\nquery_timeout = \"3s\"\n\n[upgrade]\nstate_dir = {:?}\n",
            dir.path().join("state").display().to_string()
        ),
    );
    for args in [vec!["partitions", "apply"], vec!["lag"], vec!["check"]] {
        let t0 = Instant::now();
        let out = must(
            harness::pgsteward()
                .arg("--config")
                .arg(&config)
                .args(&args)
                .output()
                .map_err(|e| e.to_string()),
        );
        let took = t0.elapsed();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            took < Duration::from_secs(30),
            "{args:?} took {took:?}: {}",
            text(&out)
        );
    }
}

/// The postmaster of the cluster in `data_dir` and all its children.
fn node_pids(data_dir: &std::path::Path) -> Vec<String> {
    let pid = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().map(str::to_string))
        .expect("a running postmaster");
    let out = must(
        Command::new("pgrep")
            .args(["-P", &pid])
            .output()
            .map_err(|e| e.to_string()),
    );
    let mut pids = vec![pid];
    pids.extend(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string),
    );
    pids
}

fn pooler_pids(t: &Topology) -> Vec<String> {
    let out = must(
        Command::new("pgrep")
            .args(["-f", &t.pooler.ini.display().to_string()])
            .output()
            .map_err(|e| e.to_string()),
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn signal(pids: &[String], sig: &str) {
    for p in pids {
        let _ = Command::new("kill").args([sig, p]).status();
    }
}

/// The newest server the local provider made for an upgrade.
fn new_node_dir(t: &Topology) -> PathBuf {
    let rec = latest_record(&t.state_dir());
    let id = rec.replica_id().expect("replica created").to_string();
    t.dir().join("clusters").join(id)
}

/// Runs an upgrade held at `hold` (a `sleep` failpoint), SIGSTOPs what
/// `target` names once `step` started, and returns the runner's output, how
/// long it took after the stop, and the stopped pids (still stopped).
fn upgrade_with_hang(
    t: &Topology,
    hold: &str,
    step: pgsteward::upgrade::record::Step,
    target: &str,
) -> (Output, Duration, Vec<String>) {
    let mut runner = spawn(upgrade_cmd(&t.config, t.next_class(), Some(hold)));
    wait_for_step(&t.state_dir(), step, &mut runner);
    let pids = match target {
        "pgbouncer" => pooler_pids(t),
        _ => node_pids(&new_node_dir(t)),
    };
    assert!(!pids.is_empty(), "nothing to stop for {target}");
    signal(&pids, "-STOP");
    let t0 = Instant::now();
    let out = wait(runner);
    (out, t0.elapsed(), pids)
}

/// A server or PgBouncer that hangs (SIGSTOP) fails the step in time, in
/// each wait region: before the pause and inside it the upgrade rolls back
/// (inside it within pause_timeout, PgBouncer resumed on the old primary);
/// after promote it stops with needs_resume and `upgrade resume` finishes
/// once the process runs again (SIGCONT). Nothing acknowledged is lost and
/// no client gets an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_servers_fail_each_wait_in_time() {
    use pgsteward::upgrade::record::Step;
    let mut t = Topology::new();
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(4),
        Duration::from_secs(400),
    );
    load.wait_progress(20).await;

    // Before the pause: the new replica hangs during wait_catchup.
    let (out, took, pids) = upgrade_with_hang(
        &t,
        "wait_catchup-start=sleep:300",
        Step::WaitCatchup,
        "node",
    );
    signal(&pids, "-CONT");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rolled back"),
        "{}",
        text(&out)
    );
    assert!(took < Duration::from_secs(25), "wait_catchup hung {took:?}");
    load.wait_progress(10).await;
    let abort = t.pgsteward(&["upgrade", "abort"], None);
    assert!(abort.status.success(), "{}", text(&abort));

    // Inside the pause: the new replica hangs during final_sync.
    let (out, took, pids) = upgrade_with_hang(
        &t,
        "fence_old_primary-done=sleep:300",
        Step::FenceOldPrimary,
        "node",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        stderr.contains("rolled back") && stderr.contains("pause"),
        "{}",
        text(&out)
    );
    assert!(took < Duration::from_secs(15), "final_sync hung {took:?}");
    // Writes resumed on the old primary while the replica is still stopped.
    load.wait_progress(10).await;
    signal(&pids, "-CONT");
    assert_eq!(t.check_one_writable().await, t.primary_url);
    let abort = t.pgsteward(&["upgrade", "abort"], None);
    assert!(abort.status.success(), "{}", text(&abort));

    // After promote: PgBouncer hangs before RELOAD.
    let (out, took, pids) =
        upgrade_with_hang(&t, "promote-done=sleep:300", Step::Promote, "pgbouncer");
    signal(&pids, "-CONT");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("after promote"),
        "{}",
        text(&out)
    );
    assert!(took < Duration::from_secs(25), "repoint hung {took:?}");
    let out = t.pgsteward(&["upgrade", "resume"], None);
    assert!(out.status.success(), "{}", text(&out));
    t.follow_upgrade();
    load.wait_progress(10).await;

    let ledger = load.stop().await;
    assert!(
        ledger.errors.is_empty(),
        "client errors: {:?}",
        ledger.errors
    );
    t.check_nothing_lost(&ledger.acked).await;

    // After promote, without clients: the new primary hangs during verify;
    // PgBouncer has been resumed on it and it is writable once it runs again.
    let (out, took, pids) = upgrade_with_hang(
        &t,
        "resume_writes-done=sleep:300",
        Step::ResumeWrites,
        "node",
    );
    signal(&pids, "-CONT");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(took < Duration::from_secs(60), "verify hung {took:?}");
    let out = t.pgsteward(&["upgrade", "resume"], None);
    assert!(out.status.success(), "{}", text(&out));
    t.follow_upgrade();
    t.check_one_writable().await;
}
