//! The rough edges a first user hit (issue 12), each reproduced through the
//! CLI against real servers.

use std::path::Path;
use std::process::Output;

use crate::harness::{self, connect, fresh_db, pgsteward, write_config, TestCluster};

fn run(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out: Output = pgsteward()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn partitions_config(dir: &Path, url: &str, tables: &[(&str, &str)]) -> std::path::PathBuf {
    let mut toml =
        format!("[database]\nprimary = \"{url}\"\n\n[partitions]\nlock_timeout = \"200ms\"\n");
    for (table, rest) in tables {
        toml.push_str(&format!(
            "[[partitions.tables]]\ntable = '{table}'\ninterval = 'monthly'\n{rest}\n"
        ));
    }
    write_config(dir, &toml)
}

/// Command lines of running processes that mention `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        // The watchdogs (sh loops waiting for this process) name it too; they end on their own.
        .filter(|c| {
            c.contains(needle) && !(c.starts_with("/bin/sh -c ") && c.contains(" watchdog "))
        })
        .collect()
}

#[test]
fn a_demo_that_fails_part_way_stops_every_server_it_started() {
    // The upgrade fails after the provider made its new server: the primary,
    // the replica, PgBouncer and the new server are all running then.
    let out = pgsteward()
        .env("PGSTEWARD_FAILPOINT", "wait_catchup-start=error")
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("failpoint"), "{stdout}\n{stderr}");
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("demo directory "))
        .unwrap_or_else(|| panic!("no demo directory in {stdout}"))
        .trim()
        .to_string();
    let left = processes_mentioning(&dir);
    assert!(
        left.is_empty(),
        "still running after the demo failed: {left:#?}"
    );
    assert!(!Path::new(&dir).exists(), "{dir} left behind");
}

#[tokio::test]
async fn check_reads_every_managed_table_as_plan_does() {
    let url = fresh_db("fu_check");
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE plain (at timestamptz NOT NULL);
             CREATE TABLE good (at timestamptz NOT NULL) PARTITION BY RANGE (at);",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = partitions_config(
        dir.path(),
        &url,
        &[
            ("public.missing", ""),
            ("public.plain", ""),
            ("public.good", ""),
        ],
    );
    let (code, stdout, stderr) = run(&config, &["check"]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name} not reported:\n{stdout}"))
            .to_string()
    };
    assert!(
        line("public.missing").contains("FAIL")
            && line("public.missing").contains("does not exist"),
        "{stdout}"
    );
    assert!(
        line("public.plain").contains("FAIL")
            && line("public.plain").contains("not a partitioned table"),
        "{stdout}"
    );
    assert!(line("public.good").contains("ok"), "{stdout}");
    let (code, json, _) = run(&config, &["check", "--output", "json"]);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["healthy"], false);
}

#[tokio::test]
async fn plan_prints_exactly_the_statements_apply_runs() {
    let url = fresh_db("fu_plan");
    connect(&url)
        .await
        .batch_execute(
            "CREATE TABLE events (id bigint NOT NULL, at timestamptz NOT NULL) PARTITION BY RANGE (at);
             GRANT SELECT ON events TO PUBLIC;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = partitions_config(dir.path(), &url, &[("public.events", "premake = 2")]);
    let (code, plan, stderr) = run(&config, &["partitions", "plan", "--output", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    let planned: Vec<String> = plan["tables"][0]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["sql"].as_array().unwrap().clone())
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let (code, applied, stderr) = run(&config, &["partitions", "apply", "--output", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let applied: serde_json::Value = serde_json::from_str(&applied).unwrap();
    let ran: Vec<String> = applied["tables"][0]["statements"]
        .as_array()
        .unwrap()
        .iter()
        // One batch (a single implicit transaction) is reported as one entry.
        .flat_map(|s| {
            s.as_str()
                .unwrap()
                .split(";\n")
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        planned
            .iter()
            .filter(|s| s.contains("ATTACH PARTITION"))
            .count(),
        3,
        "{planned:#?}"
    );
    // The owner is the role DDL runs as, so apply changes no owner: nor does the plan.
    assert!(
        !planned.iter().any(|s| s.contains("OWNER TO")),
        "{planned:#?}"
    );
    // Transaction brackets and comments are how each side shows batches, not statements.
    let statements = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|s| !matches!(s.as_str(), "BEGIN" | "COMMIT") && !s.starts_with("--"))
            .cloned()
            .collect()
    };
    assert_eq!(statements(&planned), statements(&ran));
}

#[tokio::test]
async fn partitions_status_says_why_it_exits_1() {
    let url = fresh_db("fu_status");
    connect(&url)
        .await
        .batch_execute("CREATE TABLE events (at timestamptz NOT NULL) PARTITION BY RANGE (at)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = partitions_config(
        dir.path(),
        &url,
        &[("public.events", "premake = 2"), ("public.nope", "")],
    );
    let (code, stdout, stderr) = run(&config, &["partitions", "status"]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("PROBLEM public.events: holes in the coverage: "),
        "{stdout}"
    );
    assert!(
        stdout.contains("PROBLEM public.nope: table public.nope does not exist"),
        "{stdout}"
    );
    let (_, json, _) = run(&config, &["partitions", "status", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["tables"][0]["problem"]
        .as_str()
        .unwrap()
        .contains("holes"));
}

#[test]
fn lag_names_a_missing_replica_list_and_an_unknown_pause() {
    let tc = TestCluster::start(0);
    let dir = tempfile::tempdir().unwrap();
    let none = write_config(
        dir.path(),
        &format!("[database]\nprimary = \"{}\"\n", tc.primary.url("postgres")),
    );
    let (code, stdout, stderr) = run(&none, &["lag"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("note: no replicas configured"), "{stdout}");

    let dead = pgsteward::localpg::free_port().unwrap();
    let unreachable = write_config(
        dir.path(),
        &format!(
            "[database]\nprimary = \"{}\"\nreplicas = [\"postgres://postgres@127.0.0.1:{dead}/postgres?sslmode=disable\"]\nconnect_timeout = \"2s\"\n",
            tc.primary.url("postgres")
        ),
    );
    let (code, stdout, _) = run(&unreachable, &["lag"]);
    assert_eq!(code, Some(1), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.contains(&format!(":{dead}/")))
        .unwrap_or_else(|| panic!("{stdout}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "unreachable", "{row}");
    assert_eq!(cols[4], "?", "PAUSED is unknown, not \"no\": {row}");
}

/// A bin directory whose programs claim to be PostgreSQL `major`.
fn fake_bin_dir(dir: &Path, major: u32, programs: &[&str]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join(format!("fake{major}"));
    std::fs::create_dir_all(&bin).unwrap();
    for p in programs {
        let path = bin.join(p);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho '{p} (PostgreSQL) {major}.1'\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

#[test]
fn local_upgrade_names_a_missing_or_wrong_major_pg_basebackup() {
    let tc = TestCluster::start(0);
    let server = harness::server_major();
    let wrong = if server == 13 { 14 } else { 13 };
    let bins = tempfile::tempdir().unwrap();
    for (bin, expect) in [
        (
            fake_bin_dir(bins.path(), wrong, &["pg_basebackup", "pg_ctl", "postgres"]),
            format!("is PostgreSQL {wrong}, but the server is PostgreSQL {server}"),
        ),
        (
            fake_bin_dir(bins.path(), server, &["pg_ctl", "postgres"]),
            "pg_basebackup not found in".to_string(),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            &format!(
                "[database]\nprimary = \"{}\"\n\n[upgrade]\nprovider = \"local\"\nstate_dir = \"{}\"\n\n\
                 [upgrade.local]\ndata_root = \"{}\"\nbin_dir = \"{}\"\n\
                 [upgrade.local.classes.large]\nshared_buffers = \"48MB\"\n\n[cutover]\nkind = \"none\"\n",
                tc.primary.url("postgres"),
                dir.path().join("state").display(),
                dir.path().join("clusters").display(),
                bin.display()
            ),
        );
        let (code, stdout, stderr) = run(&config, &["upgrade", "plan", "--target-class", "large"]);
        assert_eq!(code, Some(1), "{stdout}\n{stderr}");
        assert!(
            stdout.contains(&expect) || stderr.contains(&expect),
            "expected {expect:?} in:\n{stdout}\n{stderr}"
        );
    }
}
