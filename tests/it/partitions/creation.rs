//! What a pass creates: the current and premade partitions, filled gaps,
//! rows moved out of DEFAULT, bounds in the table's zone, owner and
//! privileges of the parent, names within 63 bytes.

use super::*;
use crate::consumers::{Consumers, Kind};

#[tokio::test]
async fn first_pass_creates_current_and_premake_and_second_pass_does_nothing() {
    let url = fresh_db("part_first");
    exec(&url, EVENTS).await;
    exec(
        &url,
        "CREATE TABLE days (d date NOT NULL) PARTITION BY RANGE (d)",
    )
    .await;
    exec(
        &url,
        "CREATE TABLE weeks (t timestamp NOT NULL) PARTITION BY RANGE (t)",
    )
    .await;
    let cfg = config(
        &url,
        "",
        &[
            table("events", "premake = 3"),
            table("days", "interval = 'daily'\npremake = 2"),
            table("weeks", "interval = 'weekly'\npremake = 1"),
        ]
        .concat(),
    );
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    let created: Vec<u32> = r.tables.iter().map(|t| t.created).collect();
    assert_eq!(created, vec![4, 3, 2]);
    assert_eq!(r.tables[0].future_partitions, 3);
    let names: Vec<String> = partitions_of(&url, "events")
        .await
        .into_iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(
        names,
        (0..4).map(|i| month_name("events", i)).collect::<Vec<_>>()
    );
    // Lock-safe path: LIKE + CHECK + ATTACH, never PARTITION OF; the CHECK is gone afterwards.
    let ddl = r.tables[0].statements.join("\n");
    assert!(
        ddl.contains("(LIKE \"public\".\"events\"") && ddl.contains("ATTACH PARTITION"),
        "{ddl}"
    );
    assert!(!ddl.contains("PARTITION OF"), "{ddl}");
    let checks = query(
        &url,
        "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgsteward%'",
    )
    .await;
    assert_eq!(checks[0].get::<_, i64>(0), 0);
    // Rows go where they belong.
    exec(&url, "INSERT INTO events (created_at) VALUES (now())").await;
    let again = pass(&cfg).await;
    assert!(
        again
            .tables
            .iter()
            .all(|t| t.created == 0 && t.statements.is_empty() && t.error.is_none()),
        "{again:#?}"
    );
}

#[tokio::test]
async fn gaps_after_downtime_are_filled_and_off_grid_partitions_reported() {
    let url = fresh_db("part_gaps");
    exec(&url, EVENTS).await;
    // Four months ago (on the grid, foreign name: adopted) and an off-grid one last year.
    let sql = format!(
        "CREATE TABLE legacy PARTITION OF events FOR VALUES FROM ('{}') TO ('{}'); \
         CREATE TABLE odd PARTITION OF events FOR VALUES FROM ('{}'::date + 14) TO ('{}'::date + 14)",
        month_start(-4),
        month_start(-3),
        month_start(-14),
        month_start(-13)
    );
    let client = connect(&as_owner(&url)).await;
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    client.batch_execute(&sql).await.unwrap();
    let cfg = config(&url, "", &table("events", "premake = 1"));
    let r = pass(&cfg).await;
    let t = &r.tables[0];
    assert!(t.error.is_none(), "{t:#?}");
    let names: Vec<String> = partitions_of(&url, "events")
        .await
        .into_iter()
        .map(|p| p.0)
        .collect();
    // From 13 months ago (after `odd`) through next month: everything but legacy's month is created.
    for i in -12..=1 {
        if i == -4 {
            continue;
        }
        assert!(names.contains(&month_name("events", i)), "{i}: {names:?}");
    }
    assert!(names.contains(&"legacy".to_string()) && names.contains(&"odd".to_string()));
    // Nothing before the oldest partition, though it starts mid-period
    // (off the grid, as after an interval change): `odd`'s month is not
    // filled up to it.
    let before_odd = month_name("events", -14);
    assert!(
        !names.iter().any(|n| n.starts_with(&before_odd)),
        "a range before the oldest partition was filled: {names:?}"
    );
    assert!(
        !names.contains(&month_name("events", -4)),
        "adopted, not duplicated"
    );
    assert!(
        t.notes
            .iter()
            .any(|n| n.contains("odd") && n.contains("not one monthly period")),
        "{:?}",
        t.notes
    );
    assert!(pass(&cfg).await.tables[0].statements.is_empty());
}

#[tokio::test]
async fn default_rows_are_moved_without_loss_in_the_attaching_transaction() {
    let url = fresh_db("part_default");
    exec(&url, EVENTS).await;
    exec(
        &url,
        "CREATE TABLE events_default PARTITION OF events DEFAULT",
    )
    .await;
    // 2500 rows this month and next (to be moved), 300 far ahead (stay in DEFAULT).
    exec(
        &url,
        "INSERT INTO events (created_at, payload) \
         SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + (i * 15 || ' minutes')::interval, md5(i::text) \
         FROM generate_series(1, 2500) i",
    )
    .await;
    exec(
        &url,
        "INSERT INTO events (created_at, payload) SELECT now() + interval '5 years' + (i || ' minutes')::interval, 'far' \
         FROM generate_series(1, 300) i",
    )
    .await;
    let checksum = "SELECT count(*), md5(string_agg(id::text || created_at::text || payload, ',' ORDER BY id)) FROM events";
    let before = query(&url, checksum).await;
    // A subscriber and a CDC consumer see the move (issue 22). Without a key,
    // the rows are identified in full (new partitions carry the parent's identity).
    exec(
        &url,
        "ALTER TABLE events REPLICA IDENTITY FULL; ALTER TABLE events_default REPLICA IDENTITY FULL",
    )
    .await;
    let mut consumers = Consumers::attach(&url, Kind::Schema, &["events"]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_toml(
            &url,
            "default_move_batch = 5000",
            &table("events", "premake = 2"),
        ),
    );
    let out = pgsteward()
        .env("PGSTEWARD_LOG_LEVEL", "pgsteward=debug")
        .arg("--config")
        .arg(&path)
        .args(["partitions", "apply", "--output", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tables"][0]["rows_moved"], 2500, "{report:#}");
    assert_eq!(report["tables"][0]["created"], 3);
    // Counted, not the planner's estimate (which knows nothing before an ANALYZE).
    assert_eq!(report["tables"][0]["default_rows"], 300, "{report:#}");
    // Text logs into a pipe carry no colour codes.
    assert!(
        stderr.contains("rows moved") && !stderr.contains('\u{1b}'),
        "{stderr}"
    );
    // Every move ran inside the transaction that attached its partition.
    let ddl = report["tables"][0]["statements"].to_string();
    assert!(!ddl.contains("pgsteward_excl"), "no exclusion check: {ddl}");
    assert!(ddl.contains("LOCK TABLE ONLY"), "{ddl}");
    let after = query(&url, checksum).await;
    assert_eq!(before[0].get::<_, i64>(0), after[0].get::<_, i64>(0));
    assert_eq!(before[0].get::<_, String>(1), after[0].get::<_, String>(1));
    let in_default = query(&url, "SELECT count(*) FROM events_default").await;
    assert_eq!(in_default[0].get::<_, i64>(0), 300);
    let leftovers = query(
        &url,
        "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgsteward%'",
    )
    .await;
    assert_eq!(leftovers[0].get::<_, i64>(0), 0);
    consumers.assert_same("DEFAULT rows moved by apply").await;
}

#[tokio::test]
async fn bounds_follow_the_tables_zone_across_dst_not_the_session_zone() {
    let url = fresh_db("part_dst");
    let db = db_name(&url);
    exec(
        &url,
        &format!("ALTER DATABASE \"{db}\" SET TimeZone = 'Asia/Tokyo'"),
    )
    .await;
    exec(&url, EVENTS).await;
    let cfg = config(
        &url,
        "",
        &table("events", "premake = 7\ntimezone = 'Europe/Berlin'"),
    );
    let r = pass(&cfg).await;
    assert!(r.tables[0].error.is_none(), "{r:#?}");
    let client = connect(&as_owner(&url)).await;
    client
        .batch_execute("SET TimeZone = 'Europe/Berlin'")
        .await
        .unwrap();
    let rows = client
        .query(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'events'::regclass",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 8);
    let mut offsets = std::collections::BTreeSet::new();
    for row in rows {
        let b: String = row.get(0);
        // Every bound is local midnight on the 1st in Berlin, whatever the offset.
        for part in b.split('\'').skip(1).step_by(2) {
            assert!(part.contains("-01 00:00:00+0"), "{b}");
            offsets.insert(part[19..].to_string());
        }
    }
    // Eight months always include both CET and CEST.
    assert_eq!(offsets.len(), 2, "{offsets:?}");
}

#[tokio::test]
async fn new_partitions_follow_the_parents_owner_and_privileges() {
    let url = fresh_db("part_owner");
    let db = db_name(&url);
    let reader = format!("{db}_reader");
    exec_super(&url, &format!("CREATE ROLE {reader}")).await;
    // Owned by app_owner (the migration role); the steward acts through its membership.
    exec(
        &url,
        &format!("{EVENTS}; GRANT SELECT, INSERT ON events TO {reader}"),
    )
    .await;
    let cfg = config(&url, "", &table("events", "premake = 1"));
    let r = pass(&cfg).await;
    assert!(
        r.tables[0].error.is_none() && r.tables[0].notes.is_empty(),
        "{r:#?}"
    );
    let rows = query(
        &url,
        &format!(
            "SELECT pg_get_userbyid(c.relowner)::text, has_table_privilege('{reader}', c.oid, 'SELECT'), \
             has_table_privilege('{reader}', c.oid, 'INSERT'), has_table_privilege('{reader}', c.oid, 'DELETE') \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass"
        ),
    )
    .await;
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row.get::<_, String>(0), harness::OWNER_USER);
        assert!(row.get::<_, bool>(1) && row.get::<_, bool>(2) && !row.get::<_, bool>(3));
    }
    exec_super(
        &url,
        &format!("DROP OWNED BY {reader} CASCADE; DROP ROLE {reader}"),
    )
    .await;
}

#[tokio::test]
async fn long_names_are_shortened_to_63_bytes_without_collisions() {
    let url = fresh_db("part_long");
    let a = format!("{}_alpha", "x".repeat(56));
    let b = format!("{}_bravo", "x".repeat(56));
    exec(
        &url,
        &format!(
            "{}; {}",
            EVENTS.replace("TABLE events", &format!("TABLE {a}")),
            EVENTS.replace("TABLE events", &format!("TABLE {b}"))
        ),
    )
    .await;
    let cfg = config(
        &url,
        "",
        &[
            table(&a, "interval = 'daily'\npremake = 1"),
            table(&b, "interval = 'daily'\npremake = 1"),
        ]
        .concat(),
    );
    let r = pass(&cfg).await;
    assert!(
        r.tables.iter().all(|t| t.created == 2 && t.error.is_none()),
        "{r:#?}"
    );
    let pa = partitions_of(&url, &a).await;
    let pb = partitions_of(&url, &b).await;
    for (name, _) in pa.iter().chain(&pb) {
        assert!(name.len() <= 63, "{name}");
    }
    assert!(pa.iter().all(|p| !pb.contains(p)));
    assert!(pass(&cfg)
        .await
        .tables
        .iter()
        .all(|t| t.statements.is_empty()));
}
