//! Retention: old partitions detached concurrently or dropped, FK-referenced
//! ones spared, an interrupted concurrent detach finalized.

use super::*;
use crate::consumers::{Consumers, Kind};

#[tokio::test]
async fn retention_detaches_concurrently_drops_and_spares_fk_referenced() {
    let url = fresh_db("part_retention");
    let client = connect(&as_owner(&url)).await;
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let mut ddl = String::new();
    for t in ["keep", "gone", "fk"] {
        ddl.push_str(&format!(
            "CREATE TABLE {t} (id bigint NOT NULL, created_at timestamptz NOT NULL, PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);"
        ));
        for i in -6..=1 {
            ddl.push_str(&format!(
                "CREATE TABLE {} PARTITION OF {t} FOR VALUES FROM ('{}') TO ('{}');",
                month_name(t, i),
                month_start(i),
                month_start(i + 1)
            ));
        }
    }
    ddl.push_str("CREATE TABLE gone_default PARTITION OF gone DEFAULT;");
    ddl.push_str("CREATE TABLE fk_ref (id bigint, created_at timestamptz, FOREIGN KEY (id, created_at) REFERENCES fk);");
    // Rows in every month of `keep` and `gone` (ids unique per table), and
    // consumers of them publishing each partition under its own name: the
    // retired months' rows stay on both (issue 22).
    for t in ["keep", "gone"] {
        for i in -6..=1 {
            ddl.push_str(&format!(
                "INSERT INTO {t} SELECT {} + g, '{}'::timestamptz + g * interval '1 hour' FROM generate_series(1, 5) g;",
                (i + 10) * 100,
                month_start(i)
            ));
        }
    }
    client.batch_execute(&ddl).await.unwrap();
    let mut consumers = Consumers::attach(&url, Kind::Leaves, &["keep", "gone"]).await;
    consumers.retiring().await;
    let tables = [
        table("keep", "premake = 1\nretention = '3 months'"),
        table(
            "gone",
            "premake = 1\nretention = '3 months'\nretention_mode = 'drop'",
        ),
        table(
            "fk",
            "premake = 1\nretention = '3 months'\nretention_mode = 'drop'",
        ),
    ]
    .concat();
    let cfg = config(&url, "", &tables);
    let r = pass(&cfg).await;
    // Months -6..-4 end on or before now - 3 months; -3 ends after it.
    let keep = &r.tables[0];
    assert_eq!(keep.retired, 3, "{keep:#?}");
    if crate::harness::server_major() >= 14 {
        assert!(keep
            .statements
            .iter()
            .all(|s| !s.contains("DETACH") || s.ends_with("CONCURRENTLY")));
    } else {
        // 13 has no DETACH CONCURRENTLY: a plain detach under lock_timeout.
        assert!(
            keep.statements
                .iter()
                .any(|s| s.contains("DETACH PARTITION") && !s.contains("CONCURRENTLY")),
            "{keep:#?}"
        );
    }
    let still_there = query(
        &url,
        &format!(
            "SELECT to_regclass('{}') IS NOT NULL",
            month_name("keep", -6)
        ),
    )
    .await;
    assert!(
        still_there[0].get::<_, bool>(0),
        "detach mode keeps the table"
    );
    assert_eq!(partitions_of(&url, "keep").await.len(), 5);
    let gone = &r.tables[1];
    assert_eq!(gone.retired, 3, "{gone:#?}");
    assert!(gone
        .statements
        .iter()
        .any(|s| s.contains("DETACH PARTITION") && !s.contains("CONCURRENTLY")));
    let dropped = query(
        &url,
        &format!("SELECT to_regclass('{}') IS NULL", month_name("gone", -6)),
    )
    .await;
    assert!(dropped[0].get::<_, bool>(0), "drop mode drops");
    let fk = &r.tables[2];
    assert_eq!(fk.retired, 0);
    assert_eq!(
        fk.notes
            .iter()
            .filter(|n| n.contains("foreign key"))
            .count(),
        3,
        "{fk:#?}"
    );
    assert_eq!(partitions_of(&url, "fk").await.len(), 8);
    assert!(pass(&cfg)
        .await
        .tables
        .iter()
        .all(|t| t.statements.is_empty()));
    consumers.assert_same("retired by detach and by drop").await;
}

#[tokio::test]
async fn interrupted_concurrent_detach_is_finalized() {
    if crate::harness::server_major() < 14 {
        eprintln!("DETACH CONCURRENTLY is 14+: nothing can be pending on 13");
        return;
    }
    let url = fresh_db("part_finalize");
    exec(&url, EVENTS).await;
    let old = month_name("events", -6);
    exec(
        &url,
        &format!(
            "CREATE TABLE {old} PARTITION OF events FOR VALUES FROM ('{}') TO ('{}'); \
             ALTER TABLE events REPLICA IDENTITY FULL; ALTER TABLE {old} REPLICA IDENTITY FULL; \
             INSERT INTO events (created_at) SELECT '{0}'::timestamptz + g * interval '1 hour' FROM generate_series(1, 5) g",
            month_start(-6),
            month_start(-5)
        ),
    )
    .await;
    // Its rows stay on the consumers once the detach is finalized.
    let mut consumers = Consumers::attach(&url, Kind::Schema, &["events"]).await;
    consumers.retiring().await;
    // A transaction with a snapshot on the parent makes the second half of
    // DETACH CONCURRENTLY wait; lock_timeout then interrupts it, leaving it pending.
    let holder = connect(&as_owner(&url)).await;
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM events")
        .await
        .unwrap();
    let detacher = connect(&as_owner(&url)).await;
    detacher
        .batch_execute("SET lock_timeout = '300ms'")
        .await
        .unwrap();
    // One statement per call: CONCURRENTLY refuses to run in a (implicit) transaction block.
    let err = detacher
        .batch_execute(&format!(
            "ALTER TABLE events DETACH PARTITION {old} CONCURRENTLY"
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
        "{err}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let pending = query(
        &url,
        "SELECT bool_or(inhdetachpending) FROM pg_inherits WHERE inhparent = 'events'::regclass",
    )
    .await;
    assert!(
        pending[0].get::<_, bool>(0),
        "setup: the detach must be pending"
    );
    let cfg = config(&url, "", &table("events", "premake = 1"));
    let r = pass(&cfg).await;
    let t = &r.tables[0];
    assert!(t.error.is_none(), "{t:#?}");
    assert!(
        t.statements.iter().any(|s| s.ends_with("FINALIZE")),
        "{t:#?}"
    );
    assert!(!partitions_of(&url, "events")
        .await
        .iter()
        .any(|p| p.0 == old));
    consumers.assert_same("a pending detach finalized").await;
}
