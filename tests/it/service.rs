//! `pgsteward run` as a process against real servers: leadership between two
//! instances, surviving the primary's restart, SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use pgsteward::localpg::{self, StopMode};

use crate::harness::{must, pgsteward, TestCluster};

/// A config for `run` on `tc` with second-granularity schedules.
pub fn service_config(dir: &Path, tc: &TestCluster, port: u16, extra: &str) -> PathBuf {
    ensure_app_db(tc);
    let replicas: Vec<String> = tc
        .replicas
        .iter()
        .map(|r| format!("{:?}", crate::harness::steward_url(r, "postgres")))
        .collect();
    let path = dir.join(format!("pgsteward-{port}.toml"));
    must(std::fs::write(
        &path,
        format!(
            "[database]\nprimary = {:?}\nreplicas = [{}]\nconnect_timeout = \"1s\"\n\n\
             [partitions]\nschedule = \"*/2 * * * * *\"\n\n\
             [lag]\nschedule = \"*/1 * * * * *\"\nquery_timeout = \"1s\"\n\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n",
            crate::harness::steward_url(&tc.primary, "app"),
            replicas.join(", ")
        ),
    ));
    path
}

/// The application's database `app` on `tc`, made once (owned by app_owner,
/// the steward's grants in it), where the service's managed tables live.
fn ensure_app_db(tc: &TestCluster) {
    let exists = must(tc.primary.psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname = 'app'",
    ));
    if exists.trim() == "0" {
        crate::harness::create_app_db(&tc.primary, "app");
    }
}

/// Makes the service tests' managed table in `app`, owned by the application.
pub fn create_events(tc: &TestCluster) {
    ensure_app_db(tc);
    crate::harness::owner_psql(
        &tc.primary,
        "app",
        "CREATE TABLE public.events (ts timestamptz NOT NULL, v int) PARTITION BY RANGE (ts)",
    );
}

/// A running `pgsteward run`; killed (SIGKILL) on drop if still running.
pub struct Service {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Service {
    pub fn start(config: &Path, port: u16, log: PathBuf) -> Service {
        let stderr = must(std::fs::File::create(&log).map_err(|e| e.to_string()));
        let child = pgsteward()
            .env("PGSTEWARD_LOG_LEVEL", "info")
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Service { child, port, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    /// `pgsteward_leader` from /metrics, None while not answering.
    pub fn leader(&self) -> Option<i64> {
        let (_, body) = self.get("/metrics")?;
        metric(&body, "pgsteward_leader").map(|v| v as i64)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        must(nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            sig,
        ));
    }

    /// Waits for the process to exit, up to `timeout`; its exit status and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<std::process::ExitStatus>, Duration) {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (Some(status), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (None, started.elapsed())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET: status and body, None when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Some((status, body.to_string()))
}

/// The value of the first sample line of `name` (with or without labels) whose
/// labels contain `labels_contain`.
pub fn metric_with(body: &str, name: &str, labels_contain: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            (l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
                && l.contains(labels_contain)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn metric(body: &str, name: &str) -> Option<f64> {
    metric_with(body, name, "")
}

/// Polls `f` until it returns Some, up to `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn advisory_locks(tc: &TestCluster) -> String {
    must(tc.primary.psql(
        "postgres",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1",
    ))
    .trim()
    .to_string()
}

#[test]
fn service_one_leader_and_kill_hands_over() {
    let tc = TestCluster::start(1);
    create_events(&tc);
    let table =
        "[[partitions.tables]]\ntable = \"public.events\"\ninterval = \"daily\"\npremake = 3\n";
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (must(localpg::free_port()), must(localpg::free_port()));
    let a = Service::start(
        &service_config(dir.path(), &tc, pa, table),
        pa,
        dir.path().join("a.log"),
    );
    let b = Service::start(
        &service_config(dir.path(), &tc, pb, table),
        pb,
        dir.path().join("b.log"),
    );
    for s in [&a, &b] {
        wait_for(Duration::from_secs(20), "both ready", || {
            s.get("/readyz").filter(|(c, _)| *c == 200)
        });
        assert_eq!(s.get("/healthz").map(|x| x.0), Some(200));
    }
    // Exactly one leads, steadily.
    let a_leads = wait_for(Duration::from_secs(15), "one leader", || {
        match (a.leader()?, b.leader()?) {
            (1, 0) => Some(true),
            (0, 1) => Some(false),
            _ => None,
        }
    });
    for _ in 0..10 {
        let (la, lb) = (a.leader().unwrap(), b.leader().unwrap());
        assert_eq!(la + lb, 1, "exactly one leader at any time");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Both check lag and report the replica; only the leader runs the partition job.
    let replica = tc.replicas[0].port.to_string();
    for s in [&a, &b] {
        let body = wait_for(Duration::from_secs(10), "lag metrics", || {
            let (_, body) = s.get("/metrics")?;
            metric_with(&body, "pgsteward_replica_up", &replica)
                .filter(|v| *v == 1.0)
                .map(|_| body)
        });
        assert!(
            metric_with(&body, "pgsteward_replica_lag_bytes", &replica).is_some(),
            "{body}"
        );
        assert!(
            metric_with(&body, "pgsteward_replica_lag_seconds", &replica).is_some(),
            "{body}"
        );
        assert!(
            metric_with(&body, "pgsteward_job_runs_total", "lag").unwrap() >= 1.0,
            "{body}"
        );
        assert!(
            metric_with(&body, "pgsteward_connections", "primary").unwrap() >= 1.0,
            "{body}"
        );
        assert_eq!(
            metric_with(&body, "pgsteward_max_connections", "primary"),
            Some(100.0)
        );
    }
    let (leader_svc, follower_svc) = if a_leads { (&a, &b) } else { (&b, &a) };
    let body = wait_for(
        Duration::from_secs(10),
        "a partition run on the leader",
        || {
            let (_, body) = leader_svc.get("/metrics")?;
            metric_with(&body, "pgsteward_job_runs_total", "partitions").map(|_| body)
        },
    );
    assert!(body.contains("pgsteward_job_last_success_timestamp_seconds{job=\"partitions\"}"));
    let (_, fbody) = follower_svc.get("/metrics").unwrap();
    assert_eq!(
        metric_with(&fbody, "pgsteward_job_runs_total", "partitions"),
        None,
        "the follower must not run the partition pass:\n{fbody}"
    );

    // kill -9 the leader: its session dies, the other takes over within a tick or two.
    let (mut dead, survivor) = if a_leads { (a, b) } else { (b, a) };
    let killed = Instant::now();
    dead.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = dead.wait_exit(Duration::from_secs(5));
    wait_for(Duration::from_secs(10), "handover", || {
        (survivor.leader()? == 1).then_some(())
    });
    eprintln!("handover took {:?}", killed.elapsed());
    assert_eq!(advisory_locks(&tc), "1");
    // The new leader runs the pass, which finds nothing to do (idempotent).
    let body = wait_for(Duration::from_secs(10), "a pass on the new leader", || {
        let (_, body) = survivor.get("/metrics")?;
        metric_with(
            &body,
            "pgsteward_job_last_success_timestamp_seconds",
            "partitions",
        )
        .map(|_| body)
    });
    assert_eq!(
        metric_with(&body, "pgsteward_partitions_created_total", "public.events"),
        None,
        "{body}"
    );
}

#[test]
fn service_survives_primary_restart_and_stops_on_sigterm() {
    let tc = TestCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let port = must(localpg::free_port());
    let mut svc = Service::start(
        &service_config(dir.path(), &tc, port, ""),
        port,
        dir.path().join("svc.log"),
    );
    wait_for(Duration::from_secs(20), "ready", || {
        svc.get("/readyz").filter(|(c, _)| *c == 200)
    });
    wait_for(Duration::from_secs(10), "leader", || {
        (svc.leader()? == 1).then_some(())
    });

    must(tc.primary.stop(StopMode::Fast));
    wait_for(
        Duration::from_secs(10),
        "not ready while the primary is down",
        || svc.get("/readyz").filter(|(c, _)| *c == 503),
    );
    assert_eq!(svc.get("/healthz").map(|x| x.0), Some(200));
    let body = wait_for(
        Duration::from_secs(10),
        "primary_up 0 and failures counted",
        || {
            let (_, body) = svc.get("/metrics")?;
            (metric(&body, "pgsteward_primary_up")? == 0.0
                && metric_with(&body, "pgsteward_job_failures_total", "primary_unreachable")?
                    >= 1.0
                && metric(&body, "pgsteward_leader")? == 0.0)
                .then_some(body)
        },
    );
    assert!(body.contains("pgsteward_replica_up"), "{body}");
    std::thread::sleep(Duration::from_secs(2));

    must(tc.primary.start());
    wait_for(Duration::from_secs(20), "ready again", || {
        svc.get("/readyz").filter(|(c, _)| *c == 200)
    });
    wait_for(
        Duration::from_secs(10),
        "leader again and primary up",
        || {
            let (_, body) = svc.get("/metrics")?;
            (metric(&body, "pgsteward_primary_up")? == 1.0
                && metric(&body, "pgsteward_leader")? == 1.0)
                .then_some(())
        },
    );
    assert_eq!(advisory_locks(&tc), "1");
    assert!(svc.child.try_wait().unwrap().is_none(), "still running");

    svc.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, took) = svc.wait_exit(Duration::from_secs(10));
    let log = svc.log_text();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "took {took:?}; log:\n{log}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}; log:\n{log}");
    eprintln!("SIGTERM to exit: {took:?}");
    if std::env::var_os("PGSTEWARD_TEST_SHOW_LOG").is_some() {
        eprintln!("{log}");
    }
    assert!(log.contains("leader lock released"), "{log}");
    assert_eq!(advisory_locks(&tc), "0");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn service_sigterm_cancels_ddl_waiting_for_a_lock() {
    let tc = TestCluster::start(0);
    create_events(&tc);
    // An application transaction holds the parent: the pass's DDL waits on it.
    let psql = must(localpg::find_program("psql", None));
    let mut holder = std::process::Command::new(psql)
        .env("PGPASSFILE", crate::harness::passfile())
        .args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "app"])
        .args(["-p", &tc.primary.port.to_string()])
        .args([
            "-c",
            "BEGIN; LOCK TABLE public.events IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60); COMMIT;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = must(localpg::free_port());
    let path = service_config(
        dir.path(),
        &tc,
        port,
        "[[partitions.tables]]\ntable = \"public.events\"\ninterval = \"daily\"\npremake = 2\n",
    );
    // A long lock_timeout keeps the statement waiting when the signal comes.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[partitions]\n", "[partitions]\nlock_timeout = \"30s\"\n");
    must(std::fs::write(&path, text));
    let mut svc = Service::start(&path, port, dir.path().join("svc.log"));
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE wait_event_type = 'Lock' AND application_name LIKE 'pgsteward%'";
    wait_for(
        Duration::from_secs(20),
        "the pass's DDL waiting on the lock",
        || (must(tc.primary.psql("postgres", waiting)).trim() != "0").then_some(()),
    );
    svc.signal(nix::sys::signal::Signal::SIGTERM);
    let (status, took) = svc.wait_exit(Duration::from_secs(15));
    let log = svc.log_text();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "took {took:?}; log:\n{log}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}; log:\n{log}");
    eprintln!("SIGTERM with DDL waiting on a lock to exit: {took:?}");
    wait_for(
        Duration::from_secs(5),
        "no waiting pgsteward statement",
        || (must(tc.primary.psql("postgres", waiting)).trim() == "0").then_some(()),
    );
    assert_eq!(
        must(tc.primary.psql(
            "postgres",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        ))
        .trim(),
        "0",
        "leader and table locks released"
    );
}

#[test]
fn service_sigint_while_primary_unreachable_exits_zero() {
    // No server at all: the service still starts, runs its jobs once at start,
    // serves /healthz, is not ready, and stops.
    let dir = tempfile::tempdir().unwrap();
    let port = must(localpg::free_port());
    let dead = must(localpg::free_port());
    let path = dir.path().join("cfg.toml");
    must(std::fs::write(
        &path,
        format!(
            "[database]\nprimary = \"postgres://postgres@127.0.0.1:{dead}/postgres\"\nreplicas = [\"postgres://postgres@127.0.0.1:{dead}/postgres\"]\nconnect_timeout = \"1s\"\n\
             [lag]\nschedule = \"0 0 1 1 *\"\nquery_timeout = \"1s\"\n\
             [partitions]\nschedule = \"0 0 1 1 *\"\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    ));
    let mut svc = Service::start(&path, port, dir.path().join("svc.log"));
    wait_for(Duration::from_secs(10), "healthz", || {
        svc.get("/healthz").filter(|(c, _)| *c == 200)
    });
    assert_eq!(svc.get("/readyz").map(|x| x.0), Some(503));
    // Yearly schedules: what ran, ran at start.
    wait_for(
        Duration::from_secs(10),
        "replica_up 0 from the lag run at start",
        || {
            let (_, body) = svc.get("/metrics")?;
            (metric(&body, "pgsteward_replica_up")? == 0.0
                && metric_with(&body, "pgsteward_job_failures_total", "primary_unreachable")?
                    == 1.0)
                .then_some(())
        },
    );
    svc.signal(nix::sys::signal::Signal::SIGINT);
    let (status, took) = svc.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "took {took:?}:\n{}",
        svc.log_text()
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn service_port_taken_is_an_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cfg.toml");
    must(std::fs::write(
        &path,
        format!("[database]\nprimary = \"postgres://postgres@127.0.0.1:1/postgres\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    ));
    let out = pgsteward()
        .arg("--config")
        .arg(&path)
        .arg("run")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot listen") && err.contains("http.listen"),
        "{err}"
    );
}
