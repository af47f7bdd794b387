//! Servers that hang or never answer: every wait ends in time.

use super::*;

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

/// Runs an upgrade held at `hold` (a `sleep` failpoint of 1 s: the test
/// must see the step start and SIGSTOP before the hold ends, also on a
/// loaded machine; 300 ms was missed), SIGSTOPs what
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
        "wait_catchup-start=sleep:1000",
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
        "fence_old_primary-done=sleep:1000",
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
        upgrade_with_hang(&t, "promote-done=sleep:1000", Step::Promote, "pgbouncer");
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

    load.finish_clean(&t).await;

    // After promote, without clients: the new primary hangs during verify;
    // PgBouncer has been resumed on it and it is writable once it runs again.
    let (out, took, pids) = upgrade_with_hang(
        &t,
        "resume_writes-done=sleep:1000",
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
