//! A CDC consumer (a logical slot decoded with test_decoding, as
//! `pg_recvlogical` would) while a partition is archived and dropped: the
//! retired rows are not published as deletes (DETACH and DROP are not row
//! changes), the slot keeps decoding, and commits around the retirement all
//! arrive.

use super::*;
use crate::consumers::{Consumers, Kind};
use crate::harness::{create_app_db, server_tempdir};
use pgsteward::localpg::StopMode;

#[tokio::test]
async fn a_cdc_consumer_sees_no_deletes_and_keeps_decoding() {
    let s3 = S3::start().await;
    let dir = server_tempdir();
    let cluster = crate::harness::new_primary(dir.path(), "logical");
    must(cluster.psql("postgres", "ALTER SYSTEM SET wal_level = logical"));
    must(cluster.stop(StopMode::Fast));
    must(cluster.start());
    create_app_db(&cluster, "app");
    let url = cluster.url("app");
    hostile_table(&url, 20).await;
    // And a subscriber with a CDC consumer of its own, compared row by row.
    let mut consumers = Consumers::attach(&url, Kind::ViaRoot, &["audit"]).await;
    consumers.retiring().await;
    must(cluster.psql(
        "app",
        "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')",
    ));
    let owner = connect(&as_owner(&url)).await;
    must(
        owner
            .batch_execute("INSERT INTO audit (at, note) VALUES (now(), 'before retirement')")
            .await
            .map_err(|e| e.to_string()),
    );
    let r = pass(&config_of(&toml(&url, &s3.url()))).await;
    assert!(r.tables[0].error.is_none(), "{:#?}", r.tables[0]);
    assert_eq!(r.tables[0].retired, 3);
    must(
        owner
            .batch_execute("INSERT INTO audit (at, note) VALUES (now(), 'after retirement')")
            .await
            .map_err(|e| e.to_string()),
    );
    let changes: Vec<String> = query(
        &url,
        "SELECT data FROM pg_logical_slot_get_changes('cdc', NULL, NULL)",
    )
    .await
    .iter()
    .map(|r| r.get(0))
    .collect();
    let all = changes.join("\n");
    assert!(
        !changes.iter().any(|c| c.contains("DELETE")),
        "no row of a retired partition is published as a delete:\n{all}"
    );
    assert!(
        all.contains("before retirement") && all.contains("after retirement"),
        "{all}"
    );
    // The archive bookkeeping is row changes of the pgsteward schema only
    // (retirements, and the version row of its first migration).
    assert!(
        changes
            .iter()
            .filter(|c| c.starts_with("table "))
            .all(|c| c.contains("public.audit") || c.starts_with("table pgsteward.")),
        "{all}"
    );
    consumers
        .assert_same("archived and dropped, written around")
        .await;
}
