//! kill -9 after each recorded state, then a pass: nothing lost, nothing
//! uploaded twice, no multipart upload left behind. And an upgrade's
//! cutover beginning mid-retirement holds the DROP.

use std::time::Duration;

use super::*;
use crate::consumers::{Consumers, Kind};
use crate::harness::{fresh_db, text, write_config};

/// Each failpoint and the state recorded when it kills the process.
const KILLS: [(&str, &str); 6] = [
    ("retire-detaching", "detaching"),
    ("retire-detached", "detached"),
    ("retire-upload-begun", "detached"),
    ("retire-uploaded", "uploaded"),
    ("retire-verified", "verified"),
    ("retire-dropped", "dropped"),
];

fn with_prefix(toml: &str, prefix: &str) -> String {
    toml.replace(
        &format!("s3://{BUCKET}/pg/"),
        &format!("s3://{BUCKET}/{prefix}/"),
    )
}

#[tokio::test]
async fn kill_9_after_each_recorded_state_then_a_pass_loses_nothing_and_archives_once() {
    let s3 = S3::start().await;
    for (i, (failpoint, recorded)) in KILLS.iter().enumerate() {
        let url = fresh_db(&format!("archive_kill_{i}"));
        hostile_table(&url, 30).await;
        // The partitions' own names, then the root's, in turn.
        let kind = [Kind::Leaves, Kind::ViaRoot][i % 2];
        let mut consumers = Consumers::attach(&url, kind, &["audit"]).await;
        consumers.retiring().await;
        let old = crate::partitions::month_name("audit", -6);
        let before = rows_of(&url, &old).await;
        let prefix = format!("kill{i}");
        let toml = with_prefix(&toml(&url, &s3.url()), &prefix);
        let dir = crate::harness::server_tempdir();
        let path = write_config(dir.path(), &toml);
        let out = run(
            pgsteward()
                .args(["--config", path.to_str().unwrap(), "partitions", "apply"])
                .env("PGSTEWARD_FAILPOINT", format!("{failpoint}=kill")),
            Duration::from_secs(120),
        );
        assert_eq!(
            out.status.code(),
            None,
            "{failpoint}: killed by a signal\n{}",
            text(&out)
        );
        let st = states(&url).await;
        assert_eq!(
            st[0],
            (old.clone(), recorded.to_string()),
            "{failpoint}: {st:?}"
        );
        if *recorded != "dropped" {
            assert!(exists(&url, &old).await, "{failpoint}: partition kept");
            let out = run(
                pgsteward().args(["--config", path.to_str().unwrap(), "partitions", "plan"]),
                Duration::from_secs(60),
            );
            let plan = String::from_utf8_lossy(&out.stdout);
            assert!(
                plan.contains(&format!(
                    "resume the retirement of public.{old} from {recorded}"
                )),
                "{failpoint}: {}",
                text(&out)
            );
        }
        // The next pass resumes every retirement and finishes them.
        let cfg = config_of(&toml);
        let r = pass(&cfg).await;
        assert!(
            r.tables[0].error.is_none(),
            "{failpoint}: {:#?}",
            r.tables[0]
        );
        let st = states(&url).await;
        assert_eq!(
            st.len(),
            3,
            "{failpoint}: one retirement per partition: {st:?}"
        );
        assert!(
            st.iter().all(|(_, s)| s == "dropped"),
            "{failpoint}: {st:?}"
        );
        let keys: Vec<String> = s3
            .keys()
            .await
            .into_iter()
            .filter(|k| k.starts_with(&format!("{prefix}/")))
            .collect();
        assert_eq!(
            keys.len(),
            6,
            "{failpoint}: one object and one manifest per partition: {keys:?}"
        );
        assert_eq!(
            s3.open_uploads().await,
            0,
            "{failpoint}: no multipart upload left open"
        );
        consumers
            .assert_same(&format!("killed at {failpoint}, resumed"))
            .await;
        // Nothing lost: the archive restores to exactly what the partition held.
        let key = keys
            .iter()
            .find(|k| {
                k.contains(&crate::partitions::month_start(-6).replace('-', ""))
                    && k.ends_with(".copy")
            })
            .unwrap_or_else(|| panic!("{failpoint}: archive of {old} in {keys:?}"));
        let out = run(
            pgsteward().args([
                "--config",
                path.to_str().unwrap(),
                "partitions",
                "restore",
                "--table",
                "public.audit",
                "--from",
                key,
            ]),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{failpoint}: {}", text(&out));
        assert_eq!(rows_of(&url, &old).await, before, "{failpoint}");
    }
}

/// An upgrade's guard row in the cutover, where every upgrade runner keeps it:
/// the database `postgres` of the cluster (`upgrade::guard::GUARD_DATABASE`).
const GUARD: &str = "CREATE SCHEMA IF NOT EXISTS pgsteward; GRANT USAGE ON SCHEMA pgsteward TO PUBLIC; \
     CREATE TABLE IF NOT EXISTS pgsteward.upgrade_guard ( \
       singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton), epoch bigint NOT NULL, \
       upgrade_id text NOT NULL, host text NOT NULL, state_dir text NOT NULL, started timestamptz NOT NULL, \
       step text NOT NULL, since timestamptz NOT NULL, cutover boolean NOT NULL DEFAULT false, \
       finished boolean NOT NULL DEFAULT false, new_primary text); \
     GRANT SELECT ON pgsteward.upgrade_guard TO PUBLIC; \
     INSERT INTO pgsteward.upgrade_guard (epoch, upgrade_id, host, state_dir, started, step, since, cutover) \
       VALUES (1, 'u-test', 'test-host', '/tmp', now(), 'pause_writes', now(), true)";

#[tokio::test]
async fn a_cutover_beginning_mid_retirement_holds_the_drop() {
    let s3 = S3::start().await;
    // A cluster of its own: the guard row holds every database's partition
    // DDL on its server, which must not reach other tests on the shared one.
    let cluster = crate::harness::TestCluster::start(0);
    must(cluster.primary.psql("postgres", "CREATE DATABASE app"));
    crate::harness::prepare_db(&cluster.primary, "app");
    let url = cluster.primary.url("app");
    hostile_table(&url, 10).await;
    let mut consumers = Consumers::attach(&url, Kind::ViaRoot, &["audit"]).await;
    consumers.retiring().await;
    let old = crate::partitions::month_name("audit", -6);
    let toml = toml(&url, &s3.url());
    let dir = crate::harness::server_tempdir();
    let path = write_config(dir.path(), &toml);
    // The pass holds 6 s after recording `uploaded`; the cutover begins then.
    let mut cmd = pgsteward();
    cmd.args(["--config", path.to_str().unwrap(), "partitions", "apply"])
        .env("PGSTEWARD_FAILPOINT", "retire-uploaded=sleep:6000");
    let child = std::thread::spawn(move || run(&mut cmd, Duration::from_secs(120)));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let up = query(
            &url,
            "SELECT count(*) FROM pg_class WHERE relname = 'retirements'",
        )
        .await[0]
            .get::<_, i64>(0)
            > 0
            && query(
                &url,
                "SELECT count(*) FROM pgsteward.retirements WHERE state = 'uploaded'",
            )
            .await[0]
                .get::<_, i64>(0)
                > 0;
        if up {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no retirement reached `uploaded`"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    must(cluster.primary.psql("postgres", GUARD));
    let out = tokio::task::spawn_blocking(move || child.join().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("retirement held") && stdout.contains("cutting over"),
        "{}",
        text(&out)
    );
    assert!(exists(&url, &old).await, "not dropped during the cutover");
    assert_eq!(states(&url).await[0].1, "verified");
    // The cutover ends: the next pass drops what was verified.
    must(cluster.primary.psql(
        "postgres",
        "UPDATE pgsteward.upgrade_guard SET finished = true, cutover = false",
    ));
    let r = pass(&config_of(&toml)).await;
    assert!(r.tables[0].error.is_none(), "{:#?}", r.tables[0]);
    assert!(!exists(&url, &old).await);
    assert!(states(&url).await.iter().all(|(_, s)| s == "dropped"));
    consumers
        .assert_same("a retirement held by a cutover, then dropped")
        .await;
}
