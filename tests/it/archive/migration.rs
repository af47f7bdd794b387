//! The retirement table as schema migration 2 over an install where an
//! earlier build made it on its own ("migration 0003", no version row): the
//! table and its rows are kept, the version moves, archiving goes on.

use pgsteward::schema;

use super::{config_of, hostile_table, pass, states, toml, S3};
use crate::consumers::{Consumers, Kind};
use crate::harness::{as_steward, connect, fresh_db, must, query, shared};

/// The DDL earlier builds ran before every retirement.
const STANDALONE: &str = include_str!("standalone_0003.sql");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_migration_keeps_a_table_an_earlier_build_made() {
    let url = fresh_db("archive_mig");
    let db = crate::capacity::db_name(&url);
    hostile_table(&url, 3).await;
    // The earlier build, as the steward: the table, its barrier function and
    // a retirement it finished, but no schema_version.
    let steward = connect(&as_steward(&url)).await;
    must(
        steward
            .batch_execute(&format!(
                "{STANDALONE}; INSERT INTO pgsteward.retirements \
                 (table_schema, table_name, partition_schema, partition_name, range_from, range_to, \
                  object_key, state, rows, bytes, sha256) VALUES ('public', 'audit', 'public', \
                  'audit_p2020_01', '''2020-01-01''', '''2020-02-01''', 'pg/old.copy', 'dropped', \
                  7, 70, repeat('0', 64))"
            ))
            .await
            .map_err(|e| pgsteward::pg::server_message(&e)),
    );
    let version = "SELECT version FROM pgsteward.schema_version";
    assert_eq!(
        must(shared().psql(
            &db,
            "SELECT to_regclass('pgsteward.schema_version') IS NULL"
        ))
        .trim(),
        "t"
    );

    // A pass archives the three old months through the versioned schema;
    // their rows stay on the consumers (the `pgsteward` schema not published).
    let mut consumers = Consumers::attach(&url, Kind::Schema, &["audit"]).await;
    consumers.retiring().await;
    let s3 = S3::start().await;
    let report = pass(&config_of(&toml(&url, &s3.url()))).await;
    let got = states(&url).await;
    assert_eq!(got.len(), 4, "{got:?}\n{report:#?}");
    assert_eq!(got[0], ("audit_p2020_01".into(), "dropped".into()));
    assert!(
        got[1..].iter().all(|(_, s)| s == "dropped"),
        "{got:?}\n{report:#?}"
    );
    assert_eq!(
        must(shared().psql(&db, version)).trim(),
        schema::latest().to_string()
    );
    consumers
        .assert_same("archived through the migration")
        .await;

    // Migration 2 again over the table (as from a version-1 install that ran
    // the standalone DDL too): nothing lost, the version recorded once.
    must(shared().psql(&db, "UPDATE pgsteward.schema_version SET version = 1"));
    assert_eq!(
        must(
            schema::ensure(&steward, "primary")
                .await
                .map_err(|e| e.to_string())
        ),
        schema::latest()
    );
    assert_eq!(states(&url).await, got);
    assert_eq!(
        must(shared().psql(&db, version)).trim(),
        schema::latest().to_string()
    );
    // Readable by anyone, like the rest of the schema; the barrier is there.
    let r = query(
        &url,
        "SELECT has_table_privilege('public', 'pgsteward.retirements', 'SELECT'), \
         to_regprocedure('pgsteward.refuse_write_to_retiring()') IS NOT NULL",
    )
    .await;
    assert!(r[0].get::<_, bool>(0) && r[0].get::<_, bool>(1));
    // The session is out of any transaction after ensure: SAVEPOINT is
    // refused outside a transaction block.
    let probe = steward.batch_execute("SAVEPOINT probe").await;
    assert_eq!(
        probe.err().and_then(|e| e.code().cloned()),
        Some(tokio_postgres::error::SqlState::NO_ACTIVE_SQL_TRANSACTION),
        "schema::ensure left a transaction open on the session"
    );
}
