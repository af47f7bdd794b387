//! Secrets as operators give them, and nowhere else: a whole local upgrade
//! (and the service) with passwords in every supported place — a URL, a
//! key/value string in `PGSTEWARD_DATABASE__PRIMARY`, a password file,
//! `PGPASSWORD` — then every output, log, file of the state dir, `/metrics`,
//! and the environment and command line of every process on the host are
//! searched for them.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use pgsteward::localpg::{self, LocalPgBouncer, PgBouncerAuth, PgBouncerDatabase, PgBouncerUser};

use crate::harness::{self, must, TestCluster};
use crate::service::{http_get, Service};

/// A password with characters every form must encode or escape, and a random
/// tail that survives any encoding unchanged: the tail is what is searched for.
fn secret(prefix: &str) -> (String, String) {
    let tail: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(20)
        .collect();
    (format!("{prefix}{tail}"), tail)
}

struct Secrets {
    /// (what it is, the searched-for tail)
    tails: Vec<(&'static str, String)>,
}

impl Secrets {
    /// Every place `haystack` (named `what`) shows a secret.
    fn find_in(&self, what: &str, haystack: &[u8]) -> Vec<String> {
        self.tails
            .iter()
            .filter(|(_, tail)| haystack.windows(tail.len()).any(|w| w == tail.as_bytes()))
            .map(|(name, _)| format!("{name} in {what}"))
            .collect()
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `dir` except `skip` (where secrets belong: the operator's
/// password file and config, PgBouncer's userlist, `primary_conninfo` in a
/// server's postgresql.auto.conf) and a server's table and WAL files.
fn files_under(dir: &Path, skip: &[PathBuf], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let in_data_dir = dir.join("PG_VERSION").exists();
    for e in entries.flatten() {
        let p = e.path();
        let Ok(t) = e.file_type() else { continue };
        if skip.contains(&p) || p.file_name().is_some_and(|n| n == "postgresql.auto.conf") {
            continue;
        }
        if t.is_dir() {
            // Relation and WAL files hold SCRAM verifiers, not passwords.
            if !(in_data_dir
                && matches!(
                    p.file_name().and_then(|n| n.to_str()),
                    Some("base" | "global" | "pg_wal")
                ))
            {
                files_under(&p, skip, out);
            }
        } else if t.is_file() {
            out.push(p);
        }
    }
}

/// Environment and command line of every process on this host but `skip`
/// (the pgsteward processes that were handed the secrets).
fn process_leaks(secrets: &Secrets, skip: &[u32]) -> Vec<String> {
    let mut leaks = Vec::new();
    let me = std::process::id();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || skip.contains(&pid) {
            continue;
        }
        let exe = std::fs::read_link(e.path().join("exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // The pause keeper a runner starts is pgsteward itself acting for it,
        // with its environment (it reads the same configuration).
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if exe == env!("CARGO_BIN_EXE_pgsteward")
            && String::from_utf8_lossy(&cmdline).contains("keeper")
        {
            continue;
        }
        for part in ["environ", "cmdline"] {
            if let Ok(bytes) = std::fs::read(e.path().join(part)) {
                leaks.extend(secrets.find_in(&format!("/proc/{pid}/{part} ({exe})"), &bytes));
            }
        }
    }
    leaks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_anywhere_but_where_the_operator_put_it() {
    let tc = TestCluster::start(1);
    let dir = tc.path().to_path_buf();
    // The documented grants (docs/privileges.md, through the `steward` role
    // the harness makes from them), not a superuser.
    harness::make_roles(&tc.primary, harness::Grants::UpgradeLocal);
    must(tc.primary.psql("postgres", "CREATE DATABASE app"));
    harness::prepare_db_with(&tc.primary, "app", harness::Grants::UpgradeLocal);
    must(tc.primary.psql(
        "app",
        "CREATE TABLE ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now()); \
         ALTER TABLE ledger OWNER TO app_owner",
    ));
    // The steward (key/value), a lag watcher (URL), PgBouncer's admin
    // (password file, then PGPASSWORD) and a cloud credential that no child may see.
    let (steward_pw, steward_tail) = secret("kv s3cr'et\\ x=");
    let (watcher_pw, watcher_tail) = secret("url p@ss/w:rd%?&");
    let (admin_pw, admin_tail) = secret("adm:in\\pw*");
    let (aws_secret, aws_tail) = secret("aws/");
    let secrets = Secrets {
        tails: vec![
            ("the steward's password", steward_tail),
            ("the watcher's password", watcher_tail),
            ("the PgBouncer admin's password", admin_tail),
            ("AWS_SECRET_ACCESS_KEY", aws_tail),
        ],
    };
    let q = pgsteward::pg::quote_literal;
    must(tc.primary.psql_secret(
        "postgres",
        &format!(
            "CREATE ROLE s_steward LOGIN REPLICATION IN ROLE steward PASSWORD {};\n\
             CREATE ROLE s_watcher LOGIN IN ROLE pg_monitor PASSWORD {};\n",
            q(&steward_pw),
            q(&watcher_pw)
        ),
    ));
    tc.wait_replicas_caught_up();
    let pooler = must(LocalPgBouncer::start(
        &dir.join("pgbouncer"),
        must(localpg::free_port()),
        &[PgBouncerDatabase {
            name: "app".into(),
            host: "127.0.0.1".into(),
            port: tc.primary.port,
            dbname: "app".into(),
        }],
        &PgBouncerAuth {
            admin: PgBouncerUser::new("s_admin", Some(&admin_pw)),
            users: vec![PgBouncerUser::new("s_steward", Some(&steward_pw))],
        },
        &[("query_wait_timeout", "60")],
    ));

    // The places: key/value (in the environment), URL (in the file), password file.
    let primary_kv = format!(
        "host=127.0.0.1 port={} dbname=app user=s_steward sslmode=disable password={}",
        tc.primary.port,
        pgsteward::pg::conninfo::quote_value(&steward_pw)
    );
    let replica_url = format!(
        "postgres://s_watcher:{}@127.0.0.1:{}/app?sslmode=disable",
        localpg::url_encode(&watcher_pw),
        tc.replicas[0].port
    );
    let admin_url = format!(
        "postgres://s_admin@127.0.0.1:{}/pgbouncer?sslmode=disable",
        pooler.port
    );
    let passfile = dir.join("operator.pgpass");
    must(std::fs::write(
        &passfile,
        pgsteward::pg::libpq::passfile_line(
            "127.0.0.1",
            &pooler.port.to_string(),
            "pgbouncer",
            "s_admin",
            &admin_pw,
        ),
    ));
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let http_port = must(localpg::free_port());
    let state = dir.join("state");
    let config = harness::write_config(
        &dir,
        &format!(
            r#"
[database]
primary = "postgres://placeholder@127.0.0.1:1/app"
replicas = ["{replica_url}"]
connect_timeout = "5s"

[lag]
schedule = "*/1 * * * * *"

[upgrade]
provider = "local"
state_dir = "{state}"
catchup_max_bytes = "1MB"
pause_timeout = "5s"
retire_after = "0s"

[upgrade.local]
data_root = "{root}"
{bin_dir}
[upgrade.local.classes.large]
shared_buffers = "40MB"
fsync = "off"
wal_receiver_status_interval = "1s"
log_min_messages = "warning"

[cutover]
kind = "pgbouncer"
admin = ["{admin_url}"]
config_file = "{ini}"
database = "app"

[http]
listen = "127.0.0.1:{http_port}"
"#,
            state = state.display(),
            root = dir.join("clusters").display(),
            ini = pooler.ini.display(),
            bin_dir = harness::bin_dir()
                .map(|d| format!("bin_dir = \"{}\"", d.display()))
                .unwrap_or_default(),
        ),
    );
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut handed_secrets: Vec<u32> = Vec::new();
    let command = |passfile: &Path, pgpassword: Option<&str>| {
        let mut cmd = harness::pgsteward();
        cmd.arg("--config")
            .arg(&config)
            .args(["--log-level", "debug"])
            .env("PGSTEWARD_DATABASE__PRIMARY", &primary_kv)
            .env("PGSTEWARD_LOCAL_OWNER_PID", std::process::id().to_string())
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", &aws_secret)
            .env("PGPASSFILE", passfile);
        if let Some(pw) = pgpassword {
            cmd.env("PGPASSWORD", pw);
        }
        cmd
    };

    // The service: /metrics with every replica label, while it runs.
    let log = dir.join("service.log");
    let svc = {
        let mut cmd = command(&passfile, None);
        let stderr = must(std::fs::File::create(&log).map_err(|e| e.to_string()));
        cmd.arg("run").stdout(Stdio::null()).stderr(stderr);
        Service {
            child: cmd.spawn().unwrap(),
            port: http_port,
            log: log.clone(),
        }
    };
    handed_secrets.push(svc.child.id());
    let started = Instant::now();
    let metrics = loop {
        if let Some((200, body)) = http_get(http_port, "/metrics") {
            if body.contains("pgsteward_replica_up{") {
                break body;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no lag metrics; service log:\n{}",
            svc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.contains("s_watcher@127.0.0.1"), "{metrics}");
    let mut leaks = secrets.find_in("/metrics", metrics.as_bytes());
    leaks.extend(process_leaks(&secrets, &handed_secrets));
    drop(svc);

    // The upgrade, crashed right after promote, then resumed with the admin's
    // password in PGPASSWORD instead of the password file.
    let out = command(&passfile, None)
        .args(["upgrade", "start", "--target-class", "large"])
        .env("PGSTEWARD_FAILPOINT", "promote-done=exit")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(99), "{}", text(&out));
    outputs.push(("upgrade start".into(), [out.stdout, out.stderr].concat()));
    leaks.extend(process_leaks(&secrets, &handed_secrets));
    let out = command(Path::new("/nonexistent/pgpass"), Some(&admin_pw))
        .args(["upgrade", "resume"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    outputs.push(("upgrade resume".into(), [out.stdout, out.stderr].concat()));
    let out = command(&passfile, None)
        .args(["upgrade", "status", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(status.contains("completed"), "{status}");
    outputs.push(("upgrade status".into(), [out.stdout, out.stderr].concat()));
    // The new primary, made by pg_basebackup with the steward's password, is up
    // and its processes (and PgBouncer's) were started with a clean environment.
    leaks.extend(process_leaks(&secrets, &handed_secrets));
    let root = dir.join("clusters");
    let new_postmaster = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*root.to_string_lossy()))
            && std::fs::read(e.path().join("environ")).is_ok()
    });
    assert!(new_postmaster, "no process of the new server was searched");
    // The search has teeth: a process given a secret is found.
    let mut control = std::process::Command::new("sleep")
        .arg("30")
        .env("CONTROL", &aws_secret)
        .spawn()
        .unwrap();
    let found = process_leaks(&secrets, &handed_secrets);
    let _ = control.kill();
    let _ = control.wait();
    assert!(
        found
            .iter()
            .any(|l| l.contains(&format!("/proc/{}/environ", control.id()))),
        "{found:?}"
    );

    // Nothing in outputs, logs or the state dir; the state dir is private.
    outputs.push((
        "service log".into(),
        std::fs::read(&log).unwrap_or_default(),
    ));
    for (what, bytes) in &outputs {
        leaks.extend(secrets.find_in(what, bytes));
    }
    let mut files = Vec::new();
    files_under(
        &dir,
        &[
            passfile.clone(),
            config.clone(),
            pooler.dir.join("userlist.txt"),
        ],
        &mut files,
    );
    assert!(files.iter().any(|f| f.starts_with(&state)), "{files:?}");
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "log")),
        "{files:?}"
    );
    for f in &files {
        if let Ok(bytes) = std::fs::read(f) {
            leaks.extend(secrets.find_in(&f.display().to_string(), &bytes));
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    for f in files.iter().filter(|f| f.starts_with(&state)) {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // The journal keeps the connections, without their passwords.
    let journal = files
        .iter()
        .find(|f| f.extension().is_some_and(|e| e == "jsonl"))
        .expect("a journal");
    let journal = std::fs::read_to_string(journal).unwrap();
    assert!(journal.contains("user=s_steward"), "{journal}");
    assert!(!journal.contains("password"), "{journal}");
    drop(pooler);
}

/// A password missing everywhere: exit 2, naming the connection and every
/// place looked in, including a password file refused for its permissions.
#[test]
fn a_missing_password_names_every_place_looked_in() {
    let dir = harness::server_tempdir();
    let passfile = dir.path().join("pgpass");
    let mut f = std::fs::File::create(&passfile).unwrap();
    writeln!(f, "*:*:*:postgres:{}", harness::SUPER_PASSWORD).unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = harness::shared();
    let config = harness::write_config(
        dir.path(),
        &format!(
            "[database]\nprimary = \"host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable\"\n",
            server.port
        ),
    );
    let out = harness::pgsteward()
        .arg("--config")
        .arg(&config)
        .args(["partitions", "status"])
        .env("PGPASSFILE", &passfile)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    for expected in [
        format!("postgres@127.0.0.1:{}/postgres", server.port),
        "the connection string: no password".into(),
        "PGPASSWORD: not set".into(),
        format!("password file {}", passfile.display()),
        "group or world access".into(),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} not in:\n{stderr}");
    }
    // `lag` too: a configuration problem, not lag.
    let out = harness::pgsteward()
        .arg("--config")
        .arg(&config)
        .arg("lag")
        .env("PGPASSFILE", &passfile)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("group or world access"),
        "{}",
        text(&out)
    );
    // A replica with no password anywhere (the primary has one) is a
    // configuration problem too, not an unreachable replica.
    let replica_dir = dir.path().join("replica");
    std::fs::create_dir(&replica_dir).unwrap();
    let replica_config = harness::write_config(
        &replica_dir,
        &format!(
            "[database]\nprimary = {:?}\nreplicas = [\"host=127.0.0.1 port={} user=postgres dbname=template1 sslmode=disable\"]\n",
            server.url("postgres"),
            server.port
        ),
    );
    let out = harness::pgsteward()
        .arg("--config")
        .arg(&replica_config)
        .arg("lag")
        .env("PGPASSFILE", &passfile)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    for expected in [
        format!("postgres@127.0.0.1:{}/template1", server.port),
        "group or world access".into(),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} not in:\n{stderr}");
    }
    // With the file fixed (0600), libpq's rules find the password.
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = harness::pgsteward()
        .arg("--config")
        .arg(&config)
        .args(["partitions", "status"])
        .env("PGPASSFILE", &passfile)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// Issue 10's reproduction: key/value passwords with spaces, quotes and
/// escapes were printed by `upgrade plan`, `check` and configuration errors.
#[test]
fn key_value_passwords_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let (pw, tail) = secret("two words 'quoted' \\ x");
    let secrets = Secrets {
        tails: vec![("the password", tail)],
    };
    let kv = format!(
        "host=127.0.0.1 port=1 user=steward dbname=app password={}",
        pgsteward::pg::conninfo::quote_value(&pw)
    );
    let config = harness::write_config(
        dir.path(),
        "[database]\nprimary = \"postgres://x@127.0.0.1:1/app\"\nconnect_timeout = \"1s\"\n\
         [upgrade.local.classes.large]\nshared_buffers = \"64MB\"\n",
    );
    let mut leaks = Vec::new();
    for (primary, args) in [
        (
            kv.clone(),
            vec!["upgrade", "plan", "--target-class", "large"],
        ),
        (kv.clone(), vec!["check", "--output", "json"]),
        (kv.clone(), vec!["partitions", "status"]),
        // Invalid: an unknown sslmode, and an unterminated quote.
        (format!("{kv} sslmode=sometimes"), vec!["check"]),
        (format!("{kv} application_name='x"), vec!["check"]),
    ] {
        let out = harness::pgsteward()
            .arg("--config")
            .arg(&config)
            .args(["--log-level", "debug"])
            .args(&args)
            .env("PGSTEWARD_DATABASE__PRIMARY", &primary)
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0), "{}", text(&out));
        leaks.extend(secrets.find_in(&args.join(" "), &[out.stdout, out.stderr].concat()));
    }
    assert!(leaks.is_empty(), "{leaks:?}");
}
