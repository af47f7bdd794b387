//! The `pgsteward` schema's migrations on a real server, as the steward: two
//! instances at once, a schema an older release made ad hoc, a newer schema
//! refused.

use pgsteward::schema::{self, SchemaError};

use super::{capacity_json, config, db_name};
use crate::harness::{connect, fresh_db, must, shared, steward_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_migrate_at_once_and_a_newer_schema_is_refused() {
    let db = db_name(&fresh_db("cap_schema"));
    let url = steward_url(shared(), &db);
    // Eight sessions starting at once: every one ends at the latest version,
    // the migration ran once (one version row, no error from a lost race).
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(connect(&url).await);
    }
    let runs = clients
        .iter()
        .enumerate()
        .map(|(i, c)| async move { schema::ensure(c, &format!("session {i}")).await });
    for r in futures::future::join_all(runs).await {
        assert_eq!(r.unwrap(), schema::latest());
    }
    let rows = must(shared().psql(
        &db,
        "SELECT count(*), min(version) FROM pgsteward.schema_version",
    ));
    assert_eq!(rows.trim(), format!("1|{}", schema::latest()));
    assert_eq!(
        must(shared().psql(&db, "SELECT count(*) FROM pgsteward.capacity_samples")).trim(),
        "0"
    );

    // A newer release has run here: refused, named, nothing written.
    must(shared().psql(&db, "UPDATE pgsteward.schema_version SET version = 99"));
    match schema::ensure(&clients[0], "primary").await {
        Err(SchemaError::Newer {
            found: 99, known, ..
        }) => assert_eq!(known, schema::latest()),
        other => panic!("a newer schema must be refused: {other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, r) = capacity_json(&config(dir.path(), &db, ""), &[]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["samples_recorded"], false);
    assert!(
        r["problems"].to_string().contains(&format!(
            "newer than this binary knows ({})",
            schema::latest()
        )),
        "{r:#}"
    );
}

/// Releases before the migrations made the schema ad hoc (the upgrade
/// guard): the first migration runs in it as if it were new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_made_ad_hoc_by_an_older_release_is_migrated() {
    let db = db_name(&fresh_db("cap_schema_old"));
    let url = steward_url(shared(), &db);
    let c = connect(&url).await;
    must(
        c.batch_execute(
            "CREATE SCHEMA pgsteward; CREATE TABLE pgsteward.upgrade_guard (singleton boolean PRIMARY KEY)",
        )
        .await,
    );
    // The conversion journal as `convert` made it before it was migration 3
    // (the same DDL), with a finished conversion in it.
    must(
        c.batch_execute(&format!(
            "{}; INSERT INTO pgsteward.conversions (table_schema, table_name, state, step, plan) \
             VALUES ('public', 'old', 'done', 'swap', '{{}}')",
            include_str!("../../../sql/schema_0003_conversions.sql")
        ))
        .await,
    );
    assert_eq!(
        schema::ensure(&c, "primary").await.unwrap(),
        schema::latest()
    );
    let tables = must(shared().psql(
        &db,
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'pgsteward'",
    ));
    assert_eq!(
        tables.trim(),
        "capacity_samples,conversions,retirements,schema_version,upgrade_guard"
    );
    let kept = must(shared().psql(&db, "SELECT count(*) FROM pgsteward.conversions"));
    assert_eq!(kept.trim(), "1", "the journal's rows are kept");
}
