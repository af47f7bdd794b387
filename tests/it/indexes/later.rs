//! Indexes after the fact: partitions made after the index exists carry
//! it, and an invalid partition index attached by hand is rebuilt online.

use super::*;

#[tokio::test]
async fn new_partitions_made_after_the_index_carry_it() {
    let url = fresh_db("idx_new_part");
    events(&url, 1, 100).await;
    let cfg = config(
        &url,
        "lock_timeout = \"200ms\"",
        &format!("premake = 1\n{USER_IDX}"),
    );
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_eq!(r.indexes[0].built, 2);
    let cfg = config(
        &url,
        "lock_timeout = \"200ms\"",
        &format!("premake = 4\n{USER_IDX}"),
    );
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_eq!(r.tables[0].created, 3);
    assert!(
        r.indexes[0].drift.is_empty() && r.indexes[0].statements.is_empty(),
        "{r:#?}"
    );
    let state = index_state(&url, "events_user_idx").await;
    assert_eq!(state.1.len(), 5);
    assert_complete(&state);
}

#[tokio::test]
async fn an_attached_invalid_partition_index_is_reindexed_concurrently() {
    let url = fresh_db("idx_reindex");
    let parts = events(&url, 1, 1_000).await;
    let cfg = config(
        &url,
        "lock_timeout = \"200ms\"",
        &format!("premake = 1\n{USER_IDX}"),
    );
    assert_eq!(pass(&cfg).await.outcome(), pgsteward::Outcome::Healthy);
    // What a failed REINDEX or a server bug can leave: an attached index
    // marked invalid (made here by editing the catalog, as a superuser).
    let child = child_index_name("events", &parts[1], "events_user_idx");
    crate::partitions::exec_super(
        &url,
        &format!("UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{child}'::regclass"),
    )
    .await;
    let r = pgsteward::partitions::indexes::inspect(
        &must(partitions::connect(&cfg).await),
        &cfg,
        &[(0, pgsteward::pg::QualifiedName::new("public", "events"), {
            let row = query(&url, "SELECT 'events'::regclass::oid::int8").await;
            row[0].get::<_, i64>(0) as u32
        })],
    )
    .await;
    let drift = must(r).remove(0).drift;
    assert!(
        drift.iter().any(|p| p
            .text()
            .contains(&format!("invalid attached index {child}"))),
        "{drift:?}"
    );
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_eq!(r.indexes[0].reindexed, 1, "{r:#?}");
    assert_complete(&index_state(&url, "events_user_idx").await);
    assert!(invalid_indexes(&url).await.is_empty());
}
