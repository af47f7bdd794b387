//! An operator's first hour (issue 27), scripted: each command run as a new
//! user would run it against real servers, asserting on exit codes and on
//! what is printed. The roles are as docs/privileges.md makes them; each
//! revoked privilege must be named by `check` and `partitions plan` with the
//! statement that grants it back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{self, fresh_db, must, pgsteward, text, write_config, TestCluster};

fn run(config: &Path, args: &[&str]) -> Output {
    pgsteward()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn partitions_toml(url: &str, tables: &[&str]) -> String {
    let mut toml = format!(
        "[database]\nprimary = \"{url}\"\nconnect_timeout = \"5s\"\n\n[partitions]\nlock_timeout = \"0.5s\"\n"
    );
    for t in tables {
        toml.push_str(&format!(
            "[[partitions.tables]]\ntable = '{t}'\ninterval = 'monthly'\npremake = 2\n"
        ));
    }
    toml
}

#[test]
fn each_revoked_privilege_is_named_with_its_grant_and_a_replica_exits_1() {
    let tc = TestCluster::start(1);
    let db = "app";
    harness::create_app_db(&tc.primary, db);
    // audit.events in a schema the steward was granted explicitly (public
    // is the database owner's, whose role the steward is a member of), and
    // a table whose DEFAULT partition belongs to another role, as a
    // migration by another team leaves it.
    must(tc.primary.psql(
        db,
        &format!(
            "CREATE SCHEMA audit;
             GRANT USAGE, CREATE ON SCHEMA audit TO {owner};
             CREATE ROLE other_team NOLOGIN;",
            owner = harness::OWNER_USER,
        ),
    ));
    harness::owner_psql(
        &tc.primary,
        db,
        "CREATE TABLE audit.events (at timestamptz NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE public.audit_log (at timestamptz NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE public.audit_log_default PARTITION OF public.audit_log DEFAULT;",
    );
    // The steward's CREATE on audit must be its own, not inherited from the owner.
    must(tc.primary.psql(
        db,
        &format!(
            "REVOKE CREATE ON SCHEMA audit FROM {owner};
             GRANT USAGE, CREATE ON SCHEMA audit TO {steward};",
            owner = harness::OWNER_USER,
            steward = harness::STEWARD_USER
        ),
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &partitions_toml(
            &harness::steward_url(&tc.primary, db),
            &["audit.events", "public.audit_log"],
        ),
    );
    let out = run(&config, &["check"]);
    assert_eq!(out.status.code(), Some(0), "all granted: {}", text(&out));
    let ok_lines: Vec<String> = stdout(&out)
        .lines()
        .filter(|l| l.contains(" ok "))
        .map(str::to_string)
        .collect();
    assert!(
        ok_lines.iter().all(|l| !l.contains("GRANT")),
        "[ok] lines carry no fix: {ok_lines:#?}"
    );

    // Revoke each in turn: (revoke, regrant, the statement check must print).
    let steward = harness::STEWARD_USER;
    let cases = [
        (
            format!("REVOKE {} FROM {steward}", harness::OWNER_USER),
            format!("GRANT {} TO {steward}", harness::OWNER_USER),
            format!("GRANT {} TO {steward}", harness::OWNER_USER),
        ),
        (
            format!("REVOKE pg_monitor FROM {steward}"),
            format!("GRANT pg_monitor TO {steward}"),
            format!("GRANT pg_monitor TO {steward}"),
        ),
        (
            format!("REVOKE CREATE ON SCHEMA audit FROM {steward}"),
            format!("GRANT CREATE ON SCHEMA audit TO {steward}"),
            format!("GRANT USAGE, CREATE ON SCHEMA audit TO {steward}"),
        ),
        (
            "ALTER TABLE public.audit_log_default OWNER TO other_team".to_string(),
            format!(
                "ALTER TABLE public.audit_log_default OWNER TO {}",
                harness::OWNER_USER
            ),
            format!("GRANT other_team TO {steward}"),
        ),
    ];
    for (revoke, regrant, expect) in &cases {
        must(tc.primary.psql(db, revoke));
        let check = run(&config, &["check"]);
        assert_eq!(check.status.code(), Some(1), "{revoke}: {}", text(&check));
        assert!(
            stdout(&check).contains(expect.as_str()),
            "{revoke}: check must name {expect:?}:\n{}",
            text(&check)
        );
        let plan = run(&config, &["partitions", "plan"]);
        let plan_names_it = stdout(&plan).contains(expect.as_str());
        // pg_monitor is the lag check's, not the pass's: plan does not need it.
        if !revoke.contains("pg_monitor") {
            assert_eq!(plan.status.code(), Some(1), "{revoke}: {}", text(&plan));
            assert!(
                plan_names_it,
                "{revoke}: plan must name {expect:?}:\n{}",
                text(&plan)
            );
        }
        must(tc.primary.psql(db, regrant));
    }
    let out = run(&config, &["check", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "all regranted: {}", text(&out));
    // Holes everywhere (no partition yet): the table still fits 120 columns,
    // the holes are listed below it.
    let out = run(&config, &["partitions", "status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let status = stdout(&out);
    let table: Vec<&str> = status
        .lines()
        .skip_while(|l| !l.starts_with("TABLE"))
        .take(3)
        .collect();
    assert_eq!(table.len(), 3, "{status}");
    assert!(table.iter().all(|l| l.len() <= 120), "{status}");
    assert!(
        status.contains("PROBLEM public.audit_log: holes in the coverage"),
        "{status}"
    );

    // The same configuration pointed at the replica: a CronJob there must not stay green.
    tc.wait_replicas_caught_up();
    let replica = write_config(
        dir.path(),
        &partitions_toml(
            &harness::steward_url(&tc.replicas[0], db),
            &["public.audit_log"],
        ),
    );
    for args in [
        &["partitions", "apply"][..],
        &["partitions", "status"],
        &["partitions", "plan"],
    ] {
        let out = run(&replica, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            stdout(&out).contains("database.primary"),
            "{args:?} names the setting: {}",
            text(&out)
        );
    }
}

#[test]
fn lag_speaks_in_human_units_and_names_the_function_that_resumes_replay() {
    let tc = TestCluster::start(1);
    must(tc.replicas[0].psql("postgres", "SELECT pg_wal_replay_pause()"));
    must(tc.primary.psql(
        "postgres",
        "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[database]\nprimary = \"{}\"\nreplicas = [\"{}\"]\n\n[lag]\nmax_bytes = \"64kB\"\nmax_delay = \"0.5s\"\n",
            harness::steward_url(&tc.primary, "postgres"),
            harness::steward_url(&tc.replicas[0], "postgres"),
        ),
    );
    let out = run(&config, &["lag"]);
    let text_out = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "over 64kB: {}", text(&out));
    assert!(text_out.contains("pg_wal_replay_resume()"), "{text_out}");
    assert!(
        text_out.contains("MiB behind, over 64KiB") || text_out.contains("KiB behind, over 64KiB"),
        "human units: {text_out}"
    );
    assert!(!text_out.contains(" bytes behind"), "{text_out}");
    let out = run(&config, &["lag", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = &v["replicas"][0]["bytes_behind"];
    assert!(
        bytes.as_u64().is_some_and(|b| b > 64 * 1024),
        "exact bytes in JSON: {v:#}"
    );
    must(tc.replicas[0].psql("postgres", "SELECT pg_wal_replay_resume()"));
}

#[tokio::test]
async fn a_refused_password_names_where_it_came_from_and_a_missing_one_exits_2() {
    let url = fresh_db("fh_pw");
    let dir = tempfile::tempdir().unwrap();
    let wrong = harness::with_password(&url, harness::STEWARD_USER, "not it");
    let config = write_config(dir.path(), &partitions_toml(&wrong, &[]));
    let out = run(&config, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains("the password came from the connection string"),
        "{}",
        text(&out)
    );
    // No password in the URL: PGPASSWORD, then a password file line.
    let mut bare = url::Url::parse(&harness::as_steward(&url)).unwrap();
    bare.set_password(None).unwrap();
    let bare = bare.to_string();
    let config = write_config(dir.path(), &partitions_toml(&bare, &[]));
    let out = pgsteward()
        .arg("--config")
        .arg(&config)
        .arg("check")
        .env("PGPASSWORD", "not it either")
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("the password came from PGPASSWORD"),
        "{}",
        text(&out)
    );
    let passfile = dir.path().join("pgpass");
    std::fs::write(&passfile, "# a comment\n*:*:*:*:wrong\n").unwrap();
    set_mode(&passfile, 0o600);
    let out = pgsteward()
        .arg("--config")
        .arg(&config)
        .arg("check")
        .env("PGPASSFILE", &passfile)
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains(&format!("password file {} line 2", passfile.display())),
        "{}",
        text(&out)
    );
    // None anywhere, and a password file others can read: exit 2 as documented,
    // the file's warning printed once.
    set_mode(&passfile, 0o644);
    let out = pgsteward()
        .arg("--config")
        .arg(&config)
        .arg("check")
        .env("PGPASSFILE", &passfile)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("has group or world access").count(),
        1,
        "warned once: {stderr}"
    );
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn configuration_messages_name_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    // "0.5s" loads (the unreachable primary is then a problem, exit 1, not a usage error).
    let config = write_config(
        dir.path(),
        "[database]\nprimary = \"postgres://steward@127.0.0.1:1/app\"\nconnect_timeout = \"0.5s\"\n",
    );
    let out = run(&config, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = pgsteward()
        .arg("--config")
        .arg(&config)
        .arg("check")
        .env("PGSTEWARD_DATABASE__PRIMRY", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did you mean PGSTEWARD_DATABASE__PRIMARY"),
        "{}",
        text(&out)
    );
    let out = pgsteward()
        .arg("--config")
        .arg(&config)
        .arg("check")
        .env(
            "PGSTEWARD_DATABASE__PRIMARY",
            "postgres://steward:p@ss@127.0.0.1:1/app",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr.contains("percent-encoded as %40"), "{stderr}");
    assert!(!stderr.contains("p@ss"), "no password: {stderr}");
}

/// helm from $HELM, PATH or where scripts/lib/deps.sh puts it; a missing one
/// fails with the command that installs it.
fn helm() -> PathBuf {
    let candidates = std::env::var_os("HELM")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("PATH").into_iter().flat_map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("helm"))
                .collect::<Vec<_>>()
        }))
        .chain([PathBuf::from("/var/cache/pgsteward/tools/2.2.2/helm")]);
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "helm not found (HELM, PATH): bash -c 'source scripts/lib/deps.sh && ensure_deploy_tools' \
         fetches it and prints its directory (scripts/test does this)"
    );
}

#[test]
fn completions_a_man_page_and_a_helm_chart_that_validates() {
    for shell in ["bash", "zsh", "fish"] {
        let out = pgsteward().args(["completions", shell]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out));
        let script = stdout(&out);
        assert!(
            script.contains("partitions") && script.contains("target-class"),
            "{shell}"
        );
    }
    let out = pgsteward().arg("man").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains(".TH pgsteward 1"), "{}", text(&out));
    let mandir = tempfile::tempdir().unwrap();
    let out = pgsteward()
        .arg("man")
        .arg("--dir")
        .arg(mandir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(mandir.path().join("pgsteward-partitions-apply.1").is_file());

    let helm = helm();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/pgsteward");
    let out = Command::new(&helm)
        .args(["template", "pgsteward"])
        .arg(&chart)
        .args(["--namespace", "data", "--set", "upgrade.action=start"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rendered = stdout(&out);
    for kind in [
        "kind: Deployment",
        "kind: PrometheusRule",
        "kind: Job",
        "name: pgsteward-dashboard",
    ] {
        assert!(rendered.contains(kind), "{kind} not rendered");
    }
    // The same validation CI runs: schemas, PromQL, and the chart equal to the kustomizations.
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/validate.py"))
        .env("HELM", &helm)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy/validate.py (needs: python3 -m pip install 'kubernetes-validate==1.37.0' 'promql-parser==0.12.0'): {}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("from the Helm chart"),
        "{}",
        text(&out)
    );
}
