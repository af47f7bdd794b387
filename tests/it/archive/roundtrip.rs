//! Archive, list and restore every archived partition of a table of hostile
//! column types, compared row by row with what the partitions held.

use std::time::Duration;

use super::*;
use crate::consumers::{Consumers, Kind};
use crate::harness::{fresh_db, owner_psql, shared, text, write_config};

#[tokio::test]
async fn archives_verify_list_and_restore_every_type_exactly() {
    let s3 = S3::start().await;
    let url = fresh_db("archive_roundtrip");
    hostile_table(&url, 40).await;
    let db = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    owner_psql(shared(), &db, "CREATE SCHEMA restored");
    let old: Vec<String> = (-6..=-4)
        .map(|i| crate::partitions::month_name("audit", i))
        .collect();
    let mut before = Vec::new();
    for p in &old {
        let rows = rows_of(&url, p).await;
        assert_eq!(rows.len(), 120, "{p}");
        before.push(rows);
    }
    let mut consumers = Consumers::attach(&url, Kind::ViaRoot, &["audit"]).await;
    consumers.retiring().await;
    let toml = toml(&url, &s3.url());
    let cfg = config_of(&toml);

    // `plan` names the archive step.
    let dir = crate::harness::server_tempdir();
    let path = write_config(dir.path(), &toml);
    let out = run(
        pgsteward().args(["--config", path.to_str().unwrap(), "partitions", "plan"]),
        Duration::from_secs(60),
    );
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        plan.contains("archive to object storage, verify and drop")
            && plan.contains("copied to the archive"),
        "{}",
        text(&out)
    );

    let r = pass(&cfg).await;
    let t = &r.tables[0];
    assert!(t.error.is_none(), "{t:#?}");
    assert_eq!(t.retired, 3, "{t:#?}");
    assert_eq!(t.archive.archived, 3, "{t:#?}");
    assert!(t.archive.bytes > 0);
    assert_eq!(t.archive.held_back, 0, "{t:#?}");
    for p in &old {
        assert!(!exists(&url, p).await, "{p} dropped");
    }
    consumers.assert_same("archived and dropped").await;
    let st = states(&url).await;
    assert_eq!(st.len(), 3);
    assert!(st.iter().all(|(_, s)| s == "dropped"), "{st:?}");
    let keys = s3.keys().await;
    assert_eq!(keys.len(), 6, "3 data objects and 3 manifests: {keys:?}");
    assert_eq!(s3.open_uploads().await, 0);

    // A second pass has nothing to do.
    let again = pass(&cfg).await;
    assert_eq!(again.tables[0].retired, 0);
    assert_eq!(s3.keys().await, keys);

    // `partitions archives --output json`.
    let out = run(
        pgsteward().args([
            "--config",
            path.to_str().unwrap(),
            "partitions",
            "archives",
            "--output",
            "json",
        ]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = listed.as_array().unwrap().clone();
    assert_eq!(listed.len(), 3, "{listed:#?}");
    for a in &listed {
        for field in [
            "table",
            "partition",
            "key",
            "from",
            "to",
            "rows",
            "bytes",
            "sha256",
            "state",
        ] {
            assert!(!a[field].is_null(), "{field} in {a}");
        }
        assert_eq!(a["state"], "dropped");
        assert_eq!(a["rows"], 120);
    }

    // Restore each into a standalone table and compare row by row.
    for (i, p) in old.iter().enumerate() {
        let a = listed
            .iter()
            .find(|a| a["partition"].as_str().unwrap().ends_with(p.as_str()))
            .unwrap_or_else(|| panic!("{p} listed"));
        let key = a["key"].as_str().unwrap();
        let into = format!("restored.{p}");
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
                "--into",
                &into,
            ]),
            Duration::from_secs(120),
        );
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            rows_of(&url, &into).await,
            before[i],
            "{p} restored exactly"
        );
        // Never over an existing table.
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
                "--into",
                &into,
            ]),
            Duration::from_secs(60),
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("never overwrites"),
            "{}",
            text(&out)
        );
    }

    // The oldest attached again under its own name, as a partition.
    let key = listed
        .iter()
        .find(|a| a["partition"].as_str().unwrap().ends_with(old[0].as_str()))
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let out = run(
        pgsteward().args([
            "--config",
            path.to_str().unwrap(),
            "partitions",
            "restore",
            "--table",
            "public.audit",
            "--from",
            &key,
            "--attach",
        ]),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rows_of(&url, &old[0]).await, before[0]);
    let parent: String = query(
        &url,
        &format!(
            "SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = '{}'::regclass",
            old[0]
        ),
    )
    .await[0]
        .get(0);
    assert_eq!(parent, "audit");

    // Past retention again: the next pass archives it to the same key.
    let r = pass(&cfg).await;
    assert_eq!(r.tables[0].retired, 1, "{:#?}", r.tables[0]);
    assert_eq!(
        s3.keys().await,
        keys,
        "the same object replaced, no second archive"
    );
    // The subscriber of a FOR TABLE publication kept the retired rows and
    // gets them no second time; the CDC consumer (test_decoding, which
    // decodes every table whatever the publications) saw the restore
    // insert nothing either: loaded unlogged, made logged in the same
    // transaction, the rows reach the WAL only as a table rewrite, which
    // decoding skips.
    consumers
        .assert_same("restored with --attach, archived again")
        .await;
}
