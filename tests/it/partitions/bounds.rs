//! What a pass refuses up front or keeps bounded (issue 22, point 10): a
//! partition its owner could not be given, the count of a large DEFAULT.

use super::*;

/// The parent's owner may not create in the schema, which `ALTER TABLE ...
/// OWNER TO` needs: no partition is made (none left owned by the steward),
/// `plan` and `apply` exit 1 with the GRANT that fixes it, and once it is
/// granted the next pass makes them, owned by the parent's owner.
#[tokio::test]
async fn an_owner_without_create_on_the_schema_gets_no_partition_owned_by_the_steward() {
    let url = fresh_db("part_nocreate");
    // The schema is the superuser's: the steward may create in it (as
    // docs/privileges.md grants per schema), the table's owner may not.
    exec_super(
        &url,
        &format!(
            "CREATE SCHEMA locked; GRANT USAGE, CREATE ON SCHEMA locked TO {steward}; \
             GRANT USAGE ON SCHEMA locked TO {owner}; \
             CREATE TABLE locked.events (id bigint, created_at timestamptz NOT NULL) PARTITION BY RANGE (created_at); \
             ALTER TABLE locked.events OWNER TO {owner}",
            steward = harness::STEWARD_USER,
            owner = harness::OWNER_USER
        ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_toml(&url, "", &table("locked.events", "premake = 1")),
    );
    let grant = format!(
        "GRANT CREATE ON SCHEMA \"locked\" TO \"{}\"",
        harness::OWNER_USER
    );
    for cmd in ["plan", "apply"] {
        let out = pgsteward()
            .arg("--config")
            .arg(&path)
            .args(["partitions", cmd])
            .output()
            .unwrap();
        let text = harness::text(&out);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {text}");
        assert!(text.contains(&grant), "{cmd} names the fix: {text}");
    }
    let made = query(
        &url,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'locked' AND c.relname <> 'events' AND c.relkind IN ('r', 'p')",
    )
    .await;
    assert_eq!(
        made[0].get::<_, i64>(0),
        0,
        "no partition and no orphan table"
    );
    exec_super(&url, &grant).await;
    let r = pass(&config(&url, "", &table("locked.events", "premake = 1"))).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_eq!(r.tables[0].created, 2);
    let owners = query(
        &url,
        "SELECT DISTINCT pg_get_userbyid(c.relowner)::text FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'locked.events'::regclass",
    )
    .await;
    let owners: Vec<String> = owners.iter().map(|r| r.get(0)).collect();
    assert_eq!(owners, vec![harness::OWNER_USER.to_string()]);
}

/// Rows in DEFAULT are counted up to a cap, never by scanning a large
/// DEFAULT whole: `status` reads at most `DEFAULT_COUNT_CAP` of its tuples
/// (measured with the table's own `seq_tup_read`) and reports the cap.
#[tokio::test]
async fn status_counts_a_large_default_only_up_to_the_cap() {
    let url = fresh_db("part_count_cap");
    exec(&url, EVENTS).await;
    exec(
        &url,
        &format!(
            "CREATE TABLE events_default PARTITION OF events DEFAULT; \
             CREATE TABLE {cur} PARTITION OF events FOR VALUES FROM ('{a}') TO ('{b}'); \
             CREATE TABLE {nxt} PARTITION OF events FOR VALUES FROM ('{b}') TO ('{c}'); \
             INSERT INTO events (created_at) SELECT '{far}'::timestamptz + i * interval '1 second' \
             FROM generate_series(1, 250000) i",
            cur = month_name("events", 0),
            nxt = month_name("events", 1),
            a = month_start(0),
            b = month_start(1),
            c = month_start(2),
            far = month_start(30)
        ),
    )
    .await;
    let cap = pgsteward::partitions::ddl::DEFAULT_COUNT_CAP;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_toml(&url, "", &table("events", "premake = 1")),
    );
    let read = || async {
        // Counters of other backends are flushed when they end.
        let c = connect(&as_super(&url)).await;
        let r = c
            .query_one(
                "SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables WHERE relname = 'events_default'",
                &[],
            )
            .await
            .unwrap();
        r.get::<_, i64>(0)
    };
    let before = read().await;
    let out = pgsteward()
        .arg("--config")
        .arg(&path)
        .args(["partitions", "status", "--output", "json"])
        .output()
        .unwrap();
    let text = harness::text(&out);
    let v: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["tables"][0]["default_rows"], cap, "{v:#}");
    let mut after = read().await;
    for _ in 0..50 {
        if after > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = read().await;
    }
    let scanned = after - before;
    println!("status read {scanned} tuples of a 250000-row DEFAULT (cap {cap})");
    assert!(
        scanned > 0 && scanned <= cap,
        "status read {scanned} tuples of DEFAULT, more than the cap {cap}"
    );
}
