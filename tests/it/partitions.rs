//! Partition maintenance against a real PostgreSQL server: one test per rule
//! of the issue, each in a database of its own (`harness::fresh_db`).

use std::time::{Duration, Instant};

use chrono::{Datelike, Utc};
use pgsteward::config::{self, Config};
use pgsteward::partitions::{self, PassReport};
use tokio_util::sync::CancellationToken;

use crate::harness::{self, connect, fresh_db, must, pgsteward, query, write_config};

/// A config for `url` with the given `[[partitions.tables]]` blocks.
pub(crate) fn config(url: &str, extra: &str, tables: &str) -> Config {
    let toml = config_toml(url, extra, tables);
    must(config::from_figment(
        figment::Figment::new()
            .merge(<figment::providers::Toml as figment::providers::Format>::string(&toml)),
        None,
    ))
}

pub(crate) fn config_toml(url: &str, extra: &str, tables: &str) -> String {
    let lock_timeout = if extra.contains("lock_timeout") {
        ""
    } else {
        "lock_timeout = \"200ms\"\n"
    };
    format!("[database]\nprimary = \"{url}\"\n\n[partitions]\n{lock_timeout}{extra}\n{tables}")
}

/// Runs SQL (several statements allowed) and fails with the server's message.
pub(crate) async fn exec(url: &str, sql: &str) {
    let client = connect(url).await;
    if let Err(e) = client.batch_execute(sql).await {
        panic!("{sql}: {}", pgsteward::pg::server_message(&e));
    }
}

fn db_name(url: &str) -> String {
    let tail = url.rsplit('/').next().unwrap();
    tail.split('?').next().unwrap().to_string()
}

pub(crate) fn table(name: &str, rest: &str) -> String {
    format!("[[partitions.tables]]\ntable = '{name}'\n{rest}\n")
}

pub(crate) async fn pass(cfg: &Config) -> PassReport {
    must(partitions::run_pass(cfg, &CancellationToken::new()).await)
}

/// Child partitions of `parent` (a regclass literal) with their bounds, in a UTC session.
pub(crate) async fn partitions_of(url: &str, parent: &str) -> Vec<(String, String)> {
    let client = connect(url).await;
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    client
        .query(
            "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::text::regclass ORDER BY 1",
            &[&parent],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

pub(crate) fn month_name(base: &str, months_from_now: i32) -> String {
    let now = Utc::now().date_naive();
    let total = now.year() * 12 + now.month0() as i32 + months_from_now;
    format!(
        "{base}_{:04}_{:02}",
        total.div_euclid(12),
        total.rem_euclid(12) + 1
    )
}

/// First day of the month `months_from_now` away, as `YYYY-MM-01`.
pub(crate) fn month_start(months_from_now: i32) -> String {
    let now = Utc::now().date_naive();
    let total = now.year() * 12 + now.month0() as i32 + months_from_now;
    format!(
        "{:04}-{:02}-01",
        total.div_euclid(12),
        total.rem_euclid(12) + 1
    )
}

pub(crate) const EVENTS: &str = "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, \
    created_at timestamptz NOT NULL, payload text) PARTITION BY RANGE (created_at)";

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
    let client = connect(&url).await;
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
    let client = connect(&url).await;
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
async fn odd_identifiers_work_through_the_cli() {
    let url = fresh_db("part_odd");
    exec(
        &url,
        r#"CREATE SCHEMA "Weird-Schema";
           CREATE TABLE "Weird-Schema"."Audit ""Log""" ("Created At" timestamptz NOT NULL, "x'y" text) PARTITION BY RANGE ("Created At");
           CREATE TABLE "Weird-Schema"."Audit ""Log"" default" PARTITION OF "Weird-Schema"."Audit ""Log""" DEFAULT"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_toml(
            &url,
            "",
            &table(r#""Weird-Schema"."Audit ""Log""""#, "premake = 1"),
        ),
    );
    let run = |args: &[&str]| {
        let out = pgsteward()
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, plan, err) = run(&["partitions", "plan"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(plan.contains(r#"ALTER TABLE "Weird-Schema"."Audit ""Log""" ATTACH PARTITION "Weird-Schema"."Audit ""Log""_"#), "{plan}");
    let (code, _, err) = run(&["partitions", "apply"]);
    assert_eq!(code, Some(0), "{err}");
    let parts = partitions_of(&url, r#""Weird-Schema"."Audit ""Log""""#).await;
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert!(parts
        .iter()
        .any(|p| p.0 == format!("Audit \"Log\"{}", &month_name("", 0))));
    let (code, status, err) = run(&["partitions", "status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        status.contains(r#""Weird-Schema"."Audit ""Log""""#) && status.contains("none"),
        "{status}"
    );
    let (code, plan, _) = run(&["partitions", "plan", "--output", "json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(v["tables"][0]["actions"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn retention_detaches_concurrently_drops_and_spares_fk_referenced() {
    let url = fresh_db("part_retention");
    let client = connect(&url).await;
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
    client.batch_execute(&ddl).await.unwrap();
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
            "CREATE TABLE {old} PARTITION OF events FOR VALUES FROM ('{}') TO ('{}')",
            month_start(-6),
            month_start(-5)
        ),
    )
    .await;
    // A transaction with a snapshot on the parent makes the second half of
    // DETACH CONCURRENTLY wait; lock_timeout then interrupts it, leaving it pending.
    let holder = connect(&url).await;
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM events")
        .await
        .unwrap();
    let detacher = connect(&url).await;
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
}

#[tokio::test]
async fn new_partitions_follow_the_parents_owner_and_privileges() {
    let url = fresh_db("part_owner");
    let db = db_name(&url);
    let (owner, reader) = (format!("{db}_owner"), format!("{db}_reader"));
    exec(
        &url,
        &format!(
            "CREATE ROLE {owner}; CREATE ROLE {reader}; {EVENTS}; ALTER TABLE events OWNER TO {owner}; \
             GRANT SELECT, INSERT ON events TO {reader}"
        ),
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
        assert_eq!(row.get::<_, String>(0), owner);
        assert!(row.get::<_, bool>(1) && row.get::<_, bool>(2) && !row.get::<_, bool>(3));
    }
    exec(
        &url,
        &format!("DROP OWNED BY {owner}, {reader} CASCADE; DROP ROLE {owner}; DROP ROLE {reader}"),
    )
    .await;
}

#[tokio::test]
async fn long_transaction_on_the_parent_makes_the_pass_retry_not_block_inserts() {
    let url = fresh_db("part_blocker");
    exec(&url, EVENTS).await;
    exec(
        &url,
        "CREATE TABLE events_default PARTITION OF events DEFAULT",
    )
    .await;
    exec(
        &url,
        &format!(
            "CREATE TABLE {} PARTITION OF events FOR VALUES FROM ('{}') TO ('{}')",
            month_name("events", 0),
            month_start(0),
            month_start(1)
        ),
    )
    .await;
    // The blocker reads the parent: ACCESS SHARE on every partition, DEFAULT included,
    // which ATTACH (ACCESS EXCLUSIVE on DEFAULT) cannot share.
    let blocker = connect(&url).await;
    blocker
        .batch_execute("BEGIN; SELECT count(*) FROM events")
        .await
        .unwrap();
    let cfg = config(
        &url,
        "lock_timeout = \"100ms\"\nlock_retries = 3",
        &table("events", "premake = 1"),
    );
    let inserter = {
        let url = url.clone();
        tokio::spawn(async move {
            let c = connect(&url).await;
            let mut done = 0;
            let start = Instant::now();
            // Bounded in count and time.
            while done < 200 && start.elapsed() < Duration::from_secs(20) {
                c.batch_execute("INSERT INTO events (created_at) VALUES (now()); SELECT count(*) FROM events WHERE created_at > now() - interval '1 minute'")
                    .await
                    .unwrap();
                done += 1;
            }
            done
        })
    };
    let r = pass(&cfg).await;
    let inserted = inserter.await.unwrap();
    assert_eq!(inserted, 200, "application queries all completed");
    assert_eq!(r.outcome(), pgsteward::Outcome::Problem);
    let err = r.tables[0].error.clone().unwrap_or_default();
    assert!(err.contains("55P03") && err.contains("3 attempts"), "{err}");
    // Nothing left that would make inserts into DEFAULT fail.
    let checks = query(&url, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'events_default'::regclass AND conname LIKE 'pgsteward%'").await;
    assert_eq!(checks[0].get::<_, i64>(0), 0);
    blocker.batch_execute("COMMIT").await.unwrap();
    // The next pass resumes the standalone table the interrupted one made.
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy, "{r:#?}");
    assert_eq!(r.tables[0].created, 1);
    assert_eq!(partitions_of(&url, "events").await.len(), 3);
}

#[tokio::test]
async fn concurrent_passes_never_both_run_ddl_on_a_table() {
    let url = fresh_db("part_concurrent");
    let mut ddl = String::new();
    let mut tables = String::new();
    for i in 0..12 {
        ddl.push_str(&EVENTS.replace("TABLE events", &format!("TABLE t{i}")));
        ddl.push(';');
        tables.push_str(&table(&format!("t{i}"), "premake = 3"));
    }
    exec(&url, &ddl).await;
    let cfg = config(&url, "parallelism = 2", &tables);
    let (a, b) = tokio::join!(pass(&cfg), pass(&cfg));
    for r in [&a, &b] {
        assert!(r.tables.iter().all(|t| t.error.is_none()), "{r:#?}");
    }
    let total: u32 = a.tables.iter().chain(&b.tables).map(|t| t.created).sum();
    assert_eq!(total, 12 * 4, "each partition created exactly once");
    for i in 0..12 {
        assert_eq!(partitions_of(&url, &format!("t{i}")).await.len(), 4);
    }
    // Deterministically: a held table lock makes the pass leave that table alone.
    exec(&url, &EVENTS.replace("TABLE events", "TABLE held")).await;
    let holder = connect(&url).await;
    holder
        .batch_execute(&format!(
            "SELECT pg_advisory_lock({}, 'held'::regclass::oid::int4)",
            partitions::ADVISORY_NAMESPACE
        ))
        .await
        .unwrap();
    let cfg = config(&url, "", &table("held", "premake = 1"));
    let r = pass(&cfg).await;
    assert_eq!(r.outcome(), pgsteward::Outcome::Healthy);
    assert!(
        r.tables[0]
            .skipped
            .as_deref()
            .unwrap_or("")
            .contains("advisory lock"),
        "{r:#?}"
    );
    assert_eq!(partitions_of(&url, "held").await.len(), 0);
}

#[tokio::test]
async fn a_replica_is_skipped_cleanly() {
    let cluster = harness::TestCluster::start(1);
    must(cluster.primary.psql("postgres", EVENTS));
    cluster.wait_replicas_caught_up();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_toml(
            &cluster.replicas[0].url("postgres"),
            "",
            &table("events", ""),
        ),
    );
    let out = pgsteward()
        .arg("--config")
        .arg(&path)
        .args(["partitions", "apply"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("skipped") && stdout.contains("recovery"),
        "{stdout}"
    );
}

#[tokio::test]
async fn cli_exit_codes() {
    let url = fresh_db("part_cli");
    exec(&url, EVENTS).await;
    exec(&url, "CREATE TABLE plain (created_at timestamptz)").await;
    let dir = tempfile::tempdir().unwrap();
    let run = |toml: String, args: &[&str]| {
        let path = write_config(dir.path(), &toml);
        let out = pgsteward()
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good = config_toml(&url, "", &table("events", "premake = 1"));
    let (code, plan, err) = run(good.clone(), &["partitions", "plan"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        plan.contains("CREATE TABLE") && plan.contains("ATTACH PARTITION"),
        "{plan}"
    );
    let (code, out, err) = run(good.clone(), &["partitions", "apply"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("created 2"), "{out}");
    let (code, out, _) = run(good.clone(), &["partitions", "status", "--output", "json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tables"][0]["periods_ahead"], 1, "{v:#}");
    assert_eq!(v["tables"][0]["partitions"], 2);
    // A table that is missing and one that is not partitioned: exit 1, the
    // others are still maintained, the errors name the fix.
    let bad = config_toml(
        &url,
        "",
        &[
            table("missing", ""),
            table("plain", ""),
            table("events", "premake = 2"),
        ]
        .concat(),
    );
    let (code, out, err) = run(bad, &["partitions", "apply"]);
    assert_eq!(code, Some(1), "{out} {err}");
    assert!(
        out.contains("missing") && out.contains("does not exist"),
        "{out}"
    );
    assert!(out.contains("not a partitioned table"), "{out}");
    assert!(out.contains("public.events: created 1"), "{out}");
    // Configuration errors stay exit 2.
    let (code, _, err) = run(
        config_toml(&url, "", &table("events", "interval = 'hourly'")),
        &["partitions", "apply"],
    );
    assert_eq!(code, Some(2), "{err}");
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

#[tokio::test]
async fn cancelling_a_pass_stops_it_while_it_waits_for_a_lock() {
    let url = fresh_db("part_cancel");
    exec(&url, EVENTS).await;
    exec(
        &url,
        "CREATE TABLE events_default PARTITION OF events DEFAULT",
    )
    .await;
    let blocker = connect(&url).await;
    blocker
        .batch_execute("BEGIN; SELECT count(*) FROM events")
        .await
        .unwrap();
    let cfg = config(&url, "lock_retries = 1000", &table("events", "premake = 1"));
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        trigger.cancel();
    });
    let t0 = Instant::now();
    let r = partitions::run_pass(&cfg, &cancel).await;
    assert!(
        matches!(r, Err(partitions::PartitionError::Cancelled)),
        "{r:?}"
    );
    // Bounded by the cancel, not by 1000 retries.
    assert!(t0.elapsed() < Duration::from_secs(30));
    blocker.batch_execute("COMMIT").await.unwrap();
    let checks = query(
        &url,
        "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgsteward_excl%'",
    )
    .await;
    assert_eq!(
        checks[0].get::<_, i64>(0),
        0,
        "no exclusion CHECK left on DEFAULT"
    );
    let r = pass(&config(&url, "", &table("events", "premake = 1"))).await;
    assert_eq!(r.tables[0].created, 2, "{r:#?}");
}

#[tokio::test]
async fn a_failed_attach_leaves_nothing_behind_and_names_the_blocker() {
    let url = fresh_db("part_undo");
    exec(&url, EVENTS).await;
    exec(
        &url,
        "CREATE TABLE events_default PARTITION OF events DEFAULT; CREATE INDEX events_at ON events (created_at)",
    )
    .await;
    // SHARE on the parent alone (ONLY: partitions stay unlocked) lets every
    // step through except ATTACH, which needs SHARE UPDATE EXCLUSIVE.
    let blocker = connect(&url).await;
    blocker
        .batch_execute(
            "SET application_name = 'the-blocker'; BEGIN; LOCK TABLE ONLY events IN SHARE MODE",
        )
        .await
        .unwrap();
    let pid: i32 = blocker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let cfg = config(
        &url,
        "lock_timeout = \"50ms\"\nlock_retries = 2",
        &table("events", "premake = 1"),
    );
    let r = pass(&cfg).await;
    let t = &r.tables[0];
    let err = t.error.as_deref().unwrap_or("");
    assert!(err.contains("lock timeout"), "{t:#?}");
    assert!(
        err.contains(&format!("pid {pid} ")),
        "the blocker is named: {err}"
    );
    assert!(
        err.contains("the-blocker") && err.contains("idle in transaction"),
        "{err}"
    );
    let checks = query(
        &url,
        "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pgsteward_excl%'",
    )
    .await;
    assert_eq!(checks[0].get::<_, i64>(0), 0, "nothing on DEFAULT");
    // The partition made before the failed ATTACH already has the parent's
    // index: an ATTACH never builds one under its lock.
    let built = query(
        &url,
        &format!(
            "SELECT count(*) FROM pg_index WHERE indrelid = '{}'::regclass",
            month_name("events", 0)
        ),
    )
    .await;
    assert_eq!(built[0].get::<_, i64>(0), 1);
    // Inserts into DEFAULT keep working for the very range being attached.
    // (Directly into DEFAULT: the parent itself is locked by the blocker.)
    exec(
        &url,
        // OVERRIDING: from 17 a partition shares the parent's identity column.
        "INSERT INTO events_default (id, created_at) OVERRIDING SYSTEM VALUE VALUES (1, now())",
    )
    .await;
    blocker.batch_execute("COMMIT").await.unwrap();
    let r = pass(&cfg).await;
    assert_eq!(
        (r.tables[0].created, r.tables[0].rows_moved),
        (2, 1),
        "{r:#?}"
    );
}
