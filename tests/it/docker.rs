//! The container image, built and run the way Kubernetes runs it.
//!
//! deploy/Dockerfile's runtime stage is built around the binary this test
//! build made, on a Debian 12 base made from Debian's packages (no registry
//! is reachable; see `engine`), in a Docker daemon of the test's own. Each
//! workload then runs with the docker flags its manifest's pod spec
//! translates to: user and group, read-only root, no capabilities, no
//! privilege escalation, its memory and CPU limits, the ConfigMap mounted
//! read-only where the manifest puts it, the Secret's keys as the
//! environment, an emptyDir as a tmpfs, claims as host directories, and the
//! host network only, against a harness primary, replica and PgBouncer on
//! loopback (and moto for the RDS API of the upgrade Job).
//!
//! Run alone: `cargo test --features failpoints --test it docker:: -- --nocapture`
//! (prints the image size and the time from container start to /readyz);
//! `TEST_DOCKER_BINARY=target/release/pgsteward` builds the image around a release build.

mod engine;
mod pod;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{self, must};
use engine::{Engine, NONROOT};
use pod::{kube, pod_spec, repo, seq, text, workload, Volumes, Workload};

/// GET over a plain TCP stream: status and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The value of the first sample of `name` whose labels contain `label`.
fn sample(metrics: &str, name: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| l.contains(label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Time between the first JSON log lines whose messages are `from` and `to`.
fn between(logs: &str, from: &str, to: &str) -> Option<Duration> {
    let at = |message: &str| {
        logs.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"].as_str() == Some(message))
            .and_then(|v| chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str()?).ok())
    };
    (at(to)? - at(from)?).to_std().ok()
}

/// `docker diff` entries that are neither a mount point nor a directory above one.
fn written_outside_mounts(engine: &Engine, name: &str, mounts: &[String]) -> Vec<String> {
    engine
        .ok(&["diff", name])
        .lines()
        .filter(|l| {
            let path = l.get(2..).unwrap_or("");
            !mounts
                .iter()
                .any(|m| m == path || m.starts_with(&format!("{path}/")))
        })
        .map(String::from)
        .collect()
}

/// The container's main process as the host sees it: ids, capabilities, flags.
fn process_status(engine: &Engine, name: &str) -> (String, Vec<String>) {
    let pid = engine.ok(&["inspect", "--format", "{{.State.Pid}}", name]);
    let pid = pid.trim();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let root_opts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .and_then(|l| l.split_whitespace().nth(5).map(String::from))
        .unwrap_or_default();
    let fields = [
        "Uid:",
        "Gid:",
        "CapEff:",
        "CapBnd:",
        "NoNewPrivs:",
        "Seccomp:",
    ]
    .iter()
    .filter_map(|f| status.lines().find(|l| l.starts_with(f)))
    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    .collect();
    (root_opts, fields)
}

fn dir_for(parent: &Path, name: &str, owner: Option<u32>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = parent.join(name);
    must(std::fs::create_dir_all(&p));
    must(std::fs::set_permissions(
        &p,
        std::fs::Permissions::from_mode(0o755),
    ));
    if let Some(id) = owner {
        must(std::os::unix::fs::chown(&p, Some(id), Some(id)));
    }
    p
}

/// Everything the workloads share: the daemon and image, the servers, the volumes, the Secret.
struct Setup {
    // First, so it is dropped first: containers end before the servers they use.
    engine: Engine,
    image: String,
    _cluster: harness::TestCluster,
    _pooler: pgsteward::localpg::LocalPgBouncer,
    vols: Volumes,
    env_file: PathBuf,
    cfg: pgsteward::config::Cluster,
    _work: tempfile::TempDir,
}

impl Setup {
    fn new(engine: Engine, image: String) -> Setup {
        // The databases: a primary with one streaming replica, PgBouncer in front.
        let cluster = harness::TestCluster::start(1);
        // The ConfigMap's provider is `rds`: the steward has what the RDS
        // master user has, as docs/privileges.md grants it there.
        harness::make_roles(&cluster.primary, harness::Grants::UpgradeRds);
        must(cluster.primary.psql("postgres", "CREATE DATABASE app"));
        harness::prepare_db_with(&cluster.primary, "app", harness::Grants::UpgradeRds);
        let work = harness::server_tempdir();
        let vols = Volumes {
            config: dir_for(work.path(), "config", None),
            rds_ca: dir_for(work.path(), "rds-ca", None),
            state: dir_for(work.path(), "state", Some(NONROOT)),
            pgbouncer: dir_for(work.path(), "pgbouncer-config", Some(NONROOT)),
        };
        let configmap = repo().join("deploy/kubernetes/base/pgsteward.toml");
        must(std::fs::copy(
            &configmap,
            vols.config.join("pgsteward.toml"),
        ));
        let cfg = must(pgsteward::config::load(&configmap)).cluster;
        // The ConfigMap's managed table.
        harness::owner_psql(
            &cluster.primary,
            "app",
            &format!(
                "CREATE TABLE {} (id bigint, at timestamptz NOT NULL) PARTITION BY RANGE (at)",
                cfg.partitions.tables[0].table
            ),
        );
        cluster.wait_replicas_caught_up();
        let pooler = harness::pooler(work.path(), &cluster.primary, "app", &[]);
        // The shared pgbouncer.ini claim: the upgrade Jobs read and rewrite it there.
        let ini = vols.pgbouncer.join("pgbouncer.ini");
        must(std::fs::copy(&pooler.ini, &ini));
        must(std::os::unix::fs::chown(&ini, Some(NONROOT), Some(NONROOT)));

        // The Secret: its keys, with this test's servers and passwords.
        let secret = kube("secret.example.yaml");
        let mut env = String::new();
        for (k, _) in secret["stringData"].as_mapping().expect("stringData") {
            let key = text(k, "Secret key");
            let value = match key.as_str() {
                "PGSTEWARD_DATABASE__PRIMARY" => harness::steward_url(&cluster.primary, "app"),
                "PGSTEWARD_DATABASE__REPLICAS" => {
                    format!(
                        "[\"{}\"]",
                        harness::steward_url(&cluster.replicas[0], "app")
                    )
                }
                "PGSTEWARD_CUTOVER__ADMIN" => format!("[\"{}\"]", pooler.admin_url()),
                other => panic!("Secret key {other}: give this test a value for it"),
            };
            env.push_str(&format!("{key}={value}\n"));
        }
        let env_file = work.path().join("secret.env");
        must(std::fs::write(&env_file, env));
        Setup {
            engine,
            image,
            _cluster: cluster,
            _pooler: pooler,
            vols,
            env_file,
            cfg,
            _work: work,
        }
    }

    fn workload(&self, manifest: &str) -> Workload {
        workload(&kube(manifest), &self.vols, &self.env_file)
    }

    /// Runs a Job's pod to its end: exit code, stdout, stderr. Fails on anything
    /// written outside the mounts.
    fn run_job(&self, name: &str, w: &Workload, env: &[String]) -> (Option<i32>, String, String) {
        let mut cmd = self.engine.docker();
        cmd.args(["run", "--name", name]).args(&w.flags);
        for e in env {
            cmd.arg("--env").arg(e);
        }
        let out = engine::output(cmd.arg(&self.image).args(&w.args), name);
        let written = written_outside_mounts(&self.engine, name, &w.mounts);
        assert!(
            written.is_empty(),
            "{name} wrote outside its mounts: {written:?}"
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

struct ServiceFigures {
    ready_after: Duration,
    stopped_after: Duration,
    drained: Duration,
}

/// The Deployment: `pgsteward run` answers its probes, runs a pass and a lag
/// check under the pod's restrictions, and stops on SIGTERM.
fn service(s: &Setup) -> ServiceFigures {
    let (engine, table) = (&s.engine, s.cfg.partitions.tables[0].table.to_string());
    let deployment = kube("service/deployment.yaml");
    let service = s.workload("service/deployment.yaml");
    let c = &seq(&pod_spec(&deployment)["containers"])[0];
    let port_number = seq(&c["ports"])[0]["containerPort"]
        .as_u64()
        .expect("containerPort") as u16;
    let probe_path = |probe: &str| text(&c[probe]["httpGet"]["path"], probe);
    let metrics_path = text(
        &seq(&kube("service/servicemonitor.yaml")["spec"]["endpoints"])[0]["path"],
        "ServiceMonitor path",
    );
    // Host network: the manifest's port unless something here already has it.
    let port = if std::net::TcpListener::bind(("127.0.0.1", port_number)).is_ok() {
        port_number
    } else {
        must(pgsteward::localpg::free_port())
    };
    let mut create = engine.docker();
    create
        .args(["create", "--name", "service"])
        .args(&service.flags)
        // Loopback only on the host network (the ConfigMap binds 0.0.0.0 in its pod).
        .arg("--env")
        .arg(format!("PGSTEWARD_HTTP__LISTEN=127.0.0.1:{port}"))
        .arg(&s.image)
        .args(&service.args);
    engine::run_ok(&mut create, "docker create");
    let started = Instant::now();
    engine.ok(&["start", "service"]);
    let readyz = probe_path("readinessProbe");
    let mut ready_after = None;
    while started.elapsed() < Duration::from_secs(30) {
        if let Some((200, _)) = http_get(port, &readyz) {
            ready_after = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let logs = || engine.logs("service");
    let Some(ready_after) = ready_after else {
        panic!("{readyz} not 200 within 30s: {}", logs());
    };
    assert_eq!(
        http_get(port, &probe_path("livenessProbe")).map(|r| r.0),
        Some(200)
    );
    let (root_opts, status) = process_status(engine, "service");
    assert!(
        root_opts.split(',').any(|o| o == "ro"),
        "root is read-only: {root_opts}"
    );
    for want in [
        format!("Uid: {NONROOT} {NONROOT} {NONROOT} {NONROOT}"),
        format!("Gid: {NONROOT} {NONROOT} {NONROOT} {NONROOT}"),
        "CapEff: 0000000000000000".into(),
        "CapBnd: 0000000000000000".into(),
        "NoNewPrivs: 1".into(),
        "Seccomp: 2".into(),
    ] {
        assert!(status.contains(&want), "{want}: {status:?}");
    }
    // The first partition pass and lag check run at start; wait for both to succeed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = |m: &str, job: &str| {
        sample(
            m,
            "pgsteward_job_last_success_timestamp_seconds",
            &format!("job=\"{job}\""),
        )
        .is_some_and(|t| t > 0.0)
    };
    let metrics = loop {
        let (code, body) = http_get(port, &metrics_path).unwrap_or_default();
        if code == 200 && done(&body, "partitions") && done(&body, "lag") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no successful pass and lag check within 30s:\n{body}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let premake = f64::from(s.cfg.partitions.tables[0].premake);
    let future = sample(
        &metrics,
        "pgsteward_partitions_future",
        &format!("table=\"{table}\""),
    );
    assert!(
        future.is_some_and(|n| n >= premake),
        "{premake} future partitions of {table}:\n{metrics}"
    );
    for (name, label) in [
        ("pgsteward_replica_up", "replica="),
        ("pgsteward_primary_up", ""),
        ("pgsteward_leader", ""),
    ] {
        assert_eq!(
            sample(&metrics, name, label),
            Some(1.0),
            "{name}:\n{metrics}"
        );
    }
    assert!(
        sample(&metrics, "pgsteward_replica_lag_bytes", "replica=").is_some(),
        "{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("pgsteward_job_failures_total{")),
        "no failed job:\n{metrics}"
    );

    // SIGTERM, then the grace period: the service drains and exits 0 at once.
    let stopping = Instant::now();
    engine.ok(&["stop", "--time", &service.grace.to_string(), "service"]);
    let stopped_after = stopping.elapsed();
    let exit = engine.ok(&["inspect", "--format", "{{.State.ExitCode}}", "service"]);
    let all_logs = logs();
    assert_eq!(exit.trim(), "0", "{all_logs}");
    // The process's own account: from the signal to the last line, a second at most.
    let drained = between(&all_logs, "shutting down", "service stopped")
        .unwrap_or_else(|| panic!("a clean shutdown, logged: {all_logs}"));
    assert!(
        drained < Duration::from_secs(1),
        "SIGTERM to exit took {drained:?}: {all_logs}"
    );
    // And not the grace period's SIGKILL (exit 137): docker's own part included,
    // with room for a loaded machine.
    assert!(
        stopped_after < Duration::from_secs(5),
        "docker stop took {stopped_after:?}: {all_logs}"
    );
    let written = written_outside_mounts(engine, "service", &service.mounts);
    assert!(
        written.is_empty(),
        "written outside the mounts: {written:?}"
    );
    ServiceFigures {
        ready_after,
        stopped_after,
        drained,
    }
}

/// The CronJob: one `partitions apply` with its JSON report, exit 0.
fn cronjob(s: &Setup) -> Duration {
    let table = &s.cfg.partitions.tables[0];
    let started = Instant::now();
    let (code, stdout, stderr) = s.run_job("cronjob", &s.workload("cronjob/cronjob.yaml"), &[]);
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--output json prints one JSON document: {e}: {stdout}"));
    let t = &report["tables"][0];
    assert_eq!(
        t["table"].as_str(),
        Some(table.table.to_string().as_str()),
        "{report}"
    );
    assert!(t["error"].is_null() && t["skipped"].is_null(), "{report}");
    assert!(
        t["future_partitions"].as_f64() >= Some(f64::from(table.premake)),
        "{report}"
    );
    took
}

/// The upgrade plan Job: every precheck passes, the RDS API from moto.
async fn upgrade_plan(s: &Setup) {
    let moto = crate::moto::Moto::start();
    let rds = s.cfg.upgrade.rds.as_ref().expect("[upgrade.rds]");
    must(
        moto.client()
            .await
            .create_db_instance()
            .db_instance_identifier(&rds.source_instance)
            .engine("postgres")
            .db_instance_class("db.r5.xlarge")
            .allocated_storage(100)
            .master_username("steward")
            .master_user_password("not-a-secret-1")
            .backup_retention_period(7)
            .send()
            .await,
    );
    let env = [
        // IRSA's web identity in EKS; moto takes any static key.
        "AWS_ACCESS_KEY_ID=testing".to_string(),
        "AWS_SECRET_ACCESS_KEY=testing".into(),
        "AWS_EC2_METADATA_DISABLED=true".into(),
        format!("PGSTEWARD_UPGRADE__RDS__ENDPOINT_URL={}", moto.url()),
    ];
    let (code, stdout, stderr) =
        s.run_job("upgrade-plan", &s.workload("upgrade/plan/job.yaml"), &env);
    assert_eq!(code, Some(0), "every precheck passes: {stdout}{stderr}");
    assert!(
        stdout.contains(&format!("upgrade plan: {}", rds.source_instance)),
        "{stdout}{stderr}"
    );
    assert!(!stdout.contains("[FAIL]"), "{stdout}");
}

#[tokio::test]
async fn image_runs_the_way_kubernetes_runs_it() {
    let t0 = Instant::now();
    let engine = Engine::start();
    let t_daemon = t0.elapsed();
    let deployment = kube("service/deployment.yaml");
    let image = text(
        &seq(&pod_spec(&deployment)["containers"])[0]["image"],
        "image",
    );
    // TEST_DOCKER_BINARY: another build of the binary (a release build, for the README's figures).
    let binary = std::env::var_os("TEST_DOCKER_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pgsteward")));
    let binary = binary.as_path();
    let base = engine.build_runtime_image(&repo().join("deploy/Dockerfile"), binary, &image);
    let t_image = t0.elapsed() - t_daemon;
    assert_eq!(
        engine
            .ok(&["image", "inspect", "--format", "{{.Config.User}}", &image])
            .trim(),
        format!("{NONROOT}:{NONROOT}"),
        "the image runs as distroless's nonroot without any runAsUser"
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let sizes = (
        mib(engine.image_size(&image)),
        mib(engine.image_size(&base)),
        mib(must(std::fs::metadata(binary)).len()),
    );
    let driver = engine.storage_driver();

    let setup = Setup::new(engine, image);
    let figures = service(&setup);
    let cronjob_took = cronjob(&setup);
    upgrade_plan(&setup).await;
    // Fields drop in order: the daemon (and any container left) before the servers.
    drop(setup);

    println!(
        "image {:.1} MiB (base {:.1} MiB, binary {:.1} MiB), storage driver {driver}; \
         daemon up in {:.1}s, image built in {:.1}s; container start -> /readyz 200 in {} ms; \
         docker stop -> exit 0 in {} ms (SIGTERM to exit {} ms); partitions apply {} ms; \
         whole test {:.1}s",
        sizes.0,
        sizes.1,
        sizes.2,
        t_daemon.as_secs_f64(),
        t_image.as_secs_f64(),
        figures.ready_after.as_millis(),
        figures.stopped_after.as_millis(),
        figures.drained.as_millis(),
        cronjob_took.as_millis(),
        t0.elapsed().as_secs_f64()
    );
}
