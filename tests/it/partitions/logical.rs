//! Logical replication sees every move exactly once (issue 22, point 1):
//! rows moved out of DEFAULT reach a subscriber (pgoutput, every kind of
//! publication) and a CDC consumer (pg_recvlogical, test_decoding) once,
//! and a publication that cannot carry the move correctly stops it before
//! anything changes, in `plan` as in `apply`.

use super::*;
use crate::logical::{assert_cdc_matches, assert_subscriber_matches, Cdc, Subscriber};

/// The parent with a key the publications can identify rows by, and a DEFAULT.
const KEYED: &str = "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, \
    created_at timestamptz NOT NULL, payload text, PRIMARY KEY (id, created_at)) \
    PARTITION BY RANGE (created_at); \
    CREATE TABLE events_default PARTITION OF events DEFAULT";

/// The subscriber's table: what analytics keeps, a plain table.
const SUB_TABLE: &str =
    "CREATE TABLE events (id bigint, created_at timestamptz, payload text, PRIMARY KEY (id, created_at))";

/// Rows of this month, next month (both moved by the pass) and of a month
/// beyond `premake` (they stay in DEFAULT).
fn rows_sql(tag: &str) -> String {
    format!(
        "INSERT INTO events (created_at, payload) SELECT '{0}'::timestamptz + i * interval '1 hour', '{tag} now' FROM generate_series(1, 30) i; \
         INSERT INTO events (created_at, payload) SELECT '{1}'::timestamptz + i * interval '1 hour', '{tag} next' FROM generate_series(1, 60) i; \
         INSERT INTO events (created_at, payload) SELECT '{2}'::timestamptz + i * interval '1 hour', '{tag} far' FROM generate_series(1, 20) i",
        month_start(0),
        month_start(1),
        month_start(10)
    )
}

struct Case {
    what: &'static str,
    /// Made as the superuser (FOR ALL TABLES and TABLES IN SCHEMA need one).
    publication: &'static str,
    min_major: u32,
    sub_table: &'static str,
    /// The publisher's rows as the subscriber should have them.
    pub_rows: &'static str,
    sub_rows: &'static str,
}

const ALL_ROWS: &str = "SELECT id::text || ' ' || payload FROM events ORDER BY id";

#[tokio::test]
async fn a_default_move_reaches_every_subscriber_and_cdc_consumer_once() {
    let cases = [
        Case {
            what: "FOR TABLE, publish_via_partition_root",
            publication: "CREATE PUBLICATION p FOR TABLE events WITH (publish_via_partition_root = true)",
            min_major: 13,
            sub_table: SUB_TABLE,
            pub_rows: ALL_ROWS,
            sub_rows: ALL_ROWS,
        },
        Case {
            what: "FOR ALL TABLES, publish_via_partition_root",
            publication: "CREATE PUBLICATION p FOR ALL TABLES WITH (publish_via_partition_root = true)",
            min_major: 13,
            sub_table: SUB_TABLE,
            pub_rows: ALL_ROWS,
            sub_rows: ALL_ROWS,
        },
        Case {
            what: "FOR TABLES IN SCHEMA, publish_via_partition_root",
            publication: "CREATE PUBLICATION p FOR TABLES IN SCHEMA public WITH (publish_via_partition_root = true)",
            min_major: 15,
            sub_table: SUB_TABLE,
            pub_rows: ALL_ROWS,
            sub_rows: ALL_ROWS,
        },
        Case {
            what: "a row filter",
            publication: "CREATE PUBLICATION p FOR TABLE events WHERE (id % 3 <> 0) WITH (publish_via_partition_root = true)",
            min_major: 15,
            sub_table: SUB_TABLE,
            pub_rows: "SELECT id::text || ' ' || payload FROM events WHERE id % 3 <> 0 ORDER BY id",
            sub_rows: ALL_ROWS,
        },
        Case {
            what: "a column list",
            publication: "CREATE PUBLICATION p FOR TABLE events (id, created_at) WITH (publish_via_partition_root = true)",
            min_major: 15,
            sub_table: "CREATE TABLE events (id bigint, created_at timestamptz, PRIMARY KEY (id, created_at))",
            pub_rows: "SELECT id::text || ' ' || created_at FROM events ORDER BY id",
            sub_rows: "SELECT id::text || ' ' || created_at FROM events ORDER BY id",
        },
    ];
    for case in cases
        .iter()
        .filter(|c| harness::server_major() >= c.min_major)
    {
        let url = fresh_db("logical_move");
        exec(&url, KEYED).await;
        exec_super(&url, case.publication).await;
        let sub = Subscriber::create(&url, "p", case.sub_table);
        let mut cdc = Cdc::start(&url).await;
        exec(&url, &rows_sql("before")).await;
        let cfg = config(&url, "", &table("events", "premake = 2"));
        let r = pass(&cfg).await;
        let t = &r.tables[0];
        assert_eq!(
            r.outcome(),
            pgsteward::Outcome::Healthy,
            "{}: {r:#?}",
            case.what
        );
        assert_eq!((t.created, t.rows_moved), (3, 90), "{}: {t:#?}", case.what);
        // Rows written after the pass land in the new partitions.
        exec(&url, &rows_sql("after")).await;
        assert_subscriber_matches(&url, case.pub_rows, &sub, case.sub_rows, case.what).await;
        assert_cdc_matches(
            &mut cdc,
            "public.events",
            &url,
            "SELECT id FROM events ORDER BY id",
            case.what,
        )
        .await;
    }
}

#[tokio::test]
async fn a_move_a_publication_would_publish_under_a_new_name_is_refused_before_anything_changes() {
    let url = fresh_db("logical_leaf");
    exec(&url, KEYED).await;
    // The default: changes of partitions are published under their own names.
    exec(&url, "CREATE PUBLICATION p FOR TABLE events").await;
    // The subscriber has the partitions that exist (as it must for this publication).
    let sub = Subscriber::create(
        &url,
        "p",
        "CREATE TABLE events_default (id bigint, created_at timestamptz, payload text, PRIMARY KEY (id, created_at))",
    );
    let mut cdc = Cdc::start(&url).await;
    exec(
        &url,
        &format!(
            "INSERT INTO events (created_at, payload) SELECT '{}'::timestamptz + i * interval '1 hour', 'next' FROM generate_series(1, 10) i",
            month_start(1)
        ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_toml(&url, "", &table("events", "premake = 2")),
    );
    let plan = pgsteward()
        .arg("--config")
        .arg(&path)
        .args(["partitions", "plan"])
        .output()
        .unwrap();
    let text = harness::text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{text}");
    assert!(
        text.contains("publish_via_partition_root = true") && text.contains("ALTER PUBLICATION"),
        "plan names the fix: {text}"
    );
    let cfg = config(&url, "", &table("events", "premake = 2"));
    let r = pass(&cfg).await;
    let t = &r.tables[0];
    assert_eq!(r.outcome(), pgsteward::Outcome::Problem, "{r:#?}");
    let err = t.error.as_deref().unwrap_or_default();
    assert!(err.contains("publish_via_partition_root"), "{err}");
    // Next month is refused; the current one and the one after, with no
    // rows in DEFAULT, are made; nothing moved.
    assert_eq!((t.created, t.rows_moved), (2, 0), "{t:#?}");
    let left = query(&url, "SELECT count(*) FROM ONLY events_default").await;
    assert_eq!(left[0].get::<_, i64>(0), 10);
    assert_subscriber_matches(
        &url,
        "SELECT id::text FROM events_default ORDER BY id",
        &sub,
        "SELECT id::text FROM events_default ORDER BY id",
        "leaf publication",
    )
    .await;
    assert_cdc_matches(
        &mut cdc,
        "public.events",
        &url,
        "SELECT id FROM events ORDER BY id",
        "leaf publication",
    )
    .await;
    // With the fix, the next pass moves them.
    exec(
        &url,
        "ALTER PUBLICATION p SET (publish_via_partition_root = true)",
    )
    .await;
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_eq!(r.tables[0].rows_moved, 10);
}

/// A DEFAULT over `max_default_scan` full of rows of other periods never
/// stops the premake: each period is proven absent from it by a validated
/// CHECK, so the ATTACH does not scan it (issue 22, point 7); a period with
/// rows in it is refused with the figures, in `plan` too.
#[tokio::test]
async fn a_large_default_is_proven_free_of_a_range_instead_of_scanned() {
    let url = fresh_db("logical_large_default");
    exec(&url, KEYED).await;
    exec(
        &url,
        "CREATE PUBLICATION p FOR TABLE events WITH (publish_via_partition_root = true)",
    )
    .await;
    let sub = Subscriber::create(&url, "p", SUB_TABLE);
    exec(
        &url,
        &format!(
            "INSERT INTO events (created_at, payload) SELECT '{}'::timestamptz + i * interval '1 second', repeat('x', 200) \
             FROM generate_series(1, 20000) i; \
             INSERT INTO events (created_at, payload) SELECT '{}'::timestamptz + i * interval '1 hour', 'next' FROM generate_series(1, 5) i",
            month_start(10),
            month_start(2)
        ),
    )
    .await;
    let extra = "max_default_scan = \"1MB\"";
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_toml(&url, extra, &table("events", "premake = 2")),
    );
    let plan = pgsteward()
        .arg("--config")
        .arg(&path)
        .args(["partitions", "plan"])
        .output()
        .unwrap();
    let text = harness::text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{text}");
    assert!(text.contains("max_default_scan"), "{text}");
    let cfg = config(&url, extra, &table("events", "premake = 2"));
    let r = pass(&cfg).await;
    let t = &r.tables[0];
    // This month and next are made through the CHECK; the month with rows is refused.
    assert_eq!((t.created, t.rows_moved), (2, 0), "{t:#?}");
    let err = t.error.as_deref().unwrap_or_default();
    assert!(
        err.contains("max_default_scan") && err.contains("5 rows"),
        "{err}"
    );
    let ddl = t.statements.join("\n");
    assert!(
        ddl.contains("NOT VALID") && ddl.contains("VALIDATE CONSTRAINT"),
        "{ddl}"
    );
    let left = query(
        &url,
        "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgsteward%'",
    )
    .await;
    assert_eq!(left[0].get::<_, i64>(0), 0, "no CHECK left on DEFAULT");
    let rows = query(&url, "SELECT count(*) FROM ONLY events_default").await;
    assert_eq!(rows[0].get::<_, i64>(0), 20005);
    exec(
        &url,
        "INSERT INTO events (created_at, payload) VALUES (now(), 'after')",
    )
    .await;
    assert_subscriber_matches(&url, ALL_ROWS, &sub, ALL_ROWS, "large default").await;
}

/// Retention is DDL, which logical replication does not carry (issue 22,
/// "What to build": a subscriber ends with the publisher's rows after any
/// retention step, with no apply error): a retired partition's rows stay on
/// the subscriber and the CDC consumer exactly once (no DELETE is published
/// for them), every live row and every change after the pass arrives, and
/// replication goes on without an error. Both ways of retiring: a plain
/// DETACH then DROP next to a DEFAULT, and DETACH CONCURRENTLY keeping the
/// table.
#[tokio::test]
async fn retention_keeps_subscribers_and_cdc_consumers_in_step() {
    let cases = [
        ("with a DEFAULT, dropped", true, "retention_mode = 'drop'"),
        ("without DEFAULT, detached", false, ""),
    ];
    for (what, with_default, mode) in cases {
        let url = fresh_db("logical_retention");
        let mut ddl = String::from(
            "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, \
             created_at timestamptz NOT NULL, payload text, PRIMARY KEY (id, created_at)) \
             PARTITION BY RANGE (created_at);",
        );
        if with_default {
            ddl.push_str("CREATE TABLE events_default PARTITION OF events DEFAULT;");
        }
        for i in -6..=1 {
            ddl.push_str(&format!(
                "CREATE TABLE {} PARTITION OF events FOR VALUES FROM ('{}') TO ('{}');",
                month_name("events", i),
                month_start(i),
                month_start(i + 1)
            ));
        }
        exec(&url, &ddl).await;
        exec(
            &url,
            "CREATE PUBLICATION p FOR TABLE events WITH (publish_via_partition_root = true)",
        )
        .await;
        let sub = Subscriber::create(&url, "p", SUB_TABLE);
        let mut cdc = Cdc::start(&url).await;
        let mut rows = String::new();
        for i in -6..=1 {
            rows.push_str(&format!(
                "INSERT INTO events (created_at, payload) SELECT '{}'::timestamptz + i * interval '1 hour', 'month {i}' \
                 FROM generate_series(1, 10) i;",
                month_start(i)
            ));
        }
        // What the subscriber keeps of the retired months: a copy on the
        // publisher, in no publication.
        rows.push_str(&format!(
            "CREATE TABLE retired_copy AS SELECT id, payload FROM events WHERE created_at < '{}'",
            month_start(-3)
        ));
        exec(&url, &rows).await;
        let cfg = config(
            &url,
            "",
            &table(
                "events",
                &format!("premake = 1\nretention = '3 months'\n{mode}"),
            ),
        );
        let r = pass(&cfg).await;
        assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{what}: {r:#?}");
        assert_eq!(r.tables[0].retired, 3, "{what}: {:#?}", r.tables[0]);
        // Changes after the pass: an insert, an update and a delete of live rows.
        exec(
            &url,
            &format!(
                "INSERT INTO events (created_at, payload) VALUES (now(), 'after'); \
                 UPDATE events SET payload = 'updated' WHERE created_at = '{}'::timestamptz + interval '1 hour'; \
                 DELETE FROM events WHERE created_at = '{}'::timestamptz + interval '2 hours'",
                month_start(0),
                month_start(-1)
            ),
        )
        .await;
        let want = "SELECT t FROM (SELECT id, id::text || ' ' || payload AS t FROM events \
                    UNION ALL SELECT id, id::text || ' ' || payload FROM retired_copy) x ORDER BY id";
        assert_subscriber_matches(&url, want, &sub, ALL_ROWS, what).await;
        assert_cdc_matches(
            &mut cdc,
            "public.events",
            &url,
            "SELECT id FROM (SELECT id FROM events UNION ALL SELECT id FROM retired_copy) x ORDER BY id",
            what,
        )
        .await;
    }
}
