//! Through the binary: odd identifiers, a replica skipped cleanly, exit codes.

use super::*;

#[tokio::test]
async fn odd_identifiers_work_through_the_cli() {
    let url = fresh_db("part_odd");
    exec(
        &url,
        r#"CREATE SCHEMA "Weird-Schema";
           CREATE TABLE "Weird-Schema"."Audit ""Log""" ("Created At" timestamptz NOT NULL, "x'y" text) PARTITION BY RANGE ("Created At");
           CREATE TABLE "Weird-Schema"."Audit ""Log"" default" PARTITION OF "Weird-Schema"."Audit ""Log""" DEFAULT"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_toml(
            &url,
            "",
            &table(r#""Weird-Schema"."Audit ""Log""""#, "premake = 1"),
        ),
    );
    let run = |args: &[&str]| {
        let out = pgsteward()
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, plan, err) = run(&["partitions", "plan"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(plan.contains(r#"ALTER TABLE "Weird-Schema"."Audit ""Log""" ATTACH PARTITION "Weird-Schema"."Audit ""Log""_"#), "{plan}");
    let (code, _, err) = run(&["partitions", "apply"]);
    assert_eq!(code, Some(0), "{err}");
    let parts = partitions_of(&url, r#""Weird-Schema"."Audit ""Log""""#).await;
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert!(parts
        .iter()
        .any(|p| p.0 == format!("Audit \"Log\"{}", &month_name("", 0))));
    let (code, status, err) = run(&["partitions", "status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        status.contains(r#""Weird-Schema"."Audit ""Log""""#) && status.contains("none"),
        "{status}"
    );
    let (code, plan, _) = run(&["partitions", "plan", "--output", "json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(v["tables"][0]["actions"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_replica_is_skipped_and_the_command_exits_1_naming_the_setting() {
    let cluster = harness::TestCluster::start(1);
    must(cluster.primary.psql("postgres", EVENTS));
    cluster.wait_replicas_caught_up();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_toml(
            &cluster.replicas[0].url("postgres"),
            "",
            &table("events", ""),
        ),
    );
    let out = pgsteward()
        .arg("--config")
        .arg(&path)
        .args(["partitions", "apply"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // A CronJob pointed at a replica must not stay green.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("skipped")
            && stdout.contains("recovery")
            && stdout.contains("database.primary"),
        "{stdout}"
    );
}

#[tokio::test]
async fn cli_exit_codes() {
    let url = fresh_db("part_cli");
    exec(&url, EVENTS).await;
    exec(&url, "CREATE TABLE plain (created_at timestamptz)").await;
    let dir = tempfile::tempdir().unwrap();
    let run = |toml: String, args: &[&str]| {
        let path = write_config(dir.path(), &toml);
        let out = pgsteward()
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good = config_toml(&url, "", &table("events", "premake = 1"));
    let (code, plan, err) = run(good.clone(), &["partitions", "plan"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        plan.contains("CREATE TABLE") && plan.contains("ATTACH PARTITION"),
        "{plan}"
    );
    let (code, out, err) = run(good.clone(), &["partitions", "apply"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("created 2"), "{out}");
    let (code, out, _) = run(good.clone(), &["partitions", "status", "--output", "json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tables"][0]["periods_ahead"], 1, "{v:#}");
    assert_eq!(v["tables"][0]["partitions"], 2);
    // A table that is missing and one that is not partitioned: exit 1, the
    // others are still maintained, the errors name the fix.
    let bad = config_toml(
        &url,
        "",
        &[
            table("missing", ""),
            table("plain", ""),
            table("events", "premake = 2"),
        ]
        .concat(),
    );
    let (code, out, err) = run(bad, &["partitions", "apply"]);
    assert_eq!(code, Some(1), "{out} {err}");
    assert!(
        out.contains("missing") && out.contains("does not exist"),
        "{out}"
    );
    assert!(out.contains("not a partitioned table"), "{out}");
    assert!(out.contains("public.events: created 1"), "{out}");
    // Configuration errors stay exit 2.
    let (code, _, err) = run(
        config_toml(&url, "", &table("events", "interval = 'hourly'")),
        &["partitions", "apply"],
    );
    assert_eq!(code, Some(2), "{err}");
}
