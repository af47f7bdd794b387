//! `pgsteward convert` on tables with more to carry, and on tables it must refuse.

use crate::consumers::{Consumers, Kind};
use crate::convert::{config, exec, run};
use crate::harness::{fresh_db, query};

#[tokio::test]
async fn plan_refuses_what_cannot_be_carried_with_the_reason_and_the_fix() {
    let url = fresh_db("convert_refuse");
    exec(
        &url,
        "CREATE UNLOGGED TABLE r_unlogged (t timestamptz NOT NULL);
         CREATE TABLE r_referenced (id int PRIMARY KEY, t timestamptz NOT NULL);
         CREATE TABLE r_child (id int REFERENCES r_referenced (id));
         CREATE TABLE r_rule (t timestamptz NOT NULL);
         CREATE RULE r_rule_notify AS ON INSERT TO r_rule DO ALSO NOTIFY r_rule;
         CREATE TABLE r_parent (t timestamptz NOT NULL);
         CREATE TABLE r_inherits () INHERITS (r_parent);
         CREATE TABLE r_matview (t timestamptz NOT NULL);
         CREATE MATERIALIZED VIEW r_mv AS SELECT t FROM r_matview;
         CREATE TABLE r_notime (id int);
         CREATE TABLE r_twotimes (a timestamptz, b date);
         CREATE TABLE r_partitioned (t timestamptz NOT NULL) PARTITION BY RANGE (t);
         CREATE TABLE r_future (t timestamptz NOT NULL);
         CREATE INDEX ON r_future (t);
         INSERT INTO r_future VALUES (now() + interval '400 days');
         CREATE TABLE r_rowtype (t timestamptz NOT NULL);
         CREATE FUNCTION r_rowtype_fn(r r_rowtype) RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE TABLE r_unique_expr (t timestamptz NOT NULL, v text);
         CREATE UNIQUE INDEX r_unique_expr_lower ON r_unique_expr (lower(v));",
    )
    .await;
    let cases: &[(&str, &str)] = &[
        ("public.r_unlogged", "the table is UNLOGGED"),
        (
            "public.r_referenced",
            "foreign key r_child_id_fkey on public.r_child references the table",
        ),
        ("public.r_rule", "rule r_rule_notify on the table"),
        ("public.r_parent", "takes part in table inheritance"),
        (
            "public.r_matview",
            "materialized view public.r_mv reads the table",
        ),
        (
            "public.r_notime",
            "no timestamptz, timestamp or date column",
        ),
        (
            "public.r_twotimes",
            "several columns could be the partition key: a, b",
        ),
        ("public.r_partitioned", "the table is partitioned already"),
        ("public.r_future", "NULL or at or after the boundary"),
        (
            "public.r_rowtype",
            "r_rowtype_fn(public.r_rowtype) depends on the table or its row type",
        ),
        (
            "public.r_unique_expr",
            "unique index r_unique_expr_lower has expressions or a WHERE clause and lacks t",
        ),
    ];
    let tables: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url, &tables);
    for (table, message) in cases {
        let c = cfg.clone();
        let t = table.to_string();
        let out =
            tokio::task::spawn_blocking(move || run(&c, &["convert", "plan", "--table", &t], None))
                .await
                .unwrap();
        assert_eq!(out.code, Some(1), "{table}: {}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains(message), "{table}: {}", out.stdout);
        assert!(
            out.stdout.contains("what to do:"),
            "{table}: {}",
            out.stdout
        );
    }
    // start refuses the same way and changes nothing.
    let c = cfg.clone();
    let out = tokio::task::spawn_blocking(move || {
        run(
            &c,
            &["convert", "start", "--table", "public.r_referenced"],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("cannot be converted"), "{}", out.stderr);
    // A table without a [[partitions.tables]] entry is a usage error.
    let out = tokio::task::spawn_blocking(move || {
        run(
            &cfg,
            &["convert", "plan", "--table", "public.nowhere"],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("has no [[partitions.tables]] entry"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn carries_serials_keys_unique_indexes_publications_and_settings() {
    let url = fresh_db("convert_rest");
    exec(
        &url,
        "CREATE TABLE log (
             id bigserial,
             logged_on date,
             code text NOT NULL,
             ref text,
             CONSTRAINT log_pkey PRIMARY KEY (id, logged_on),
             CONSTRAINT log_code_key UNIQUE (code)
         ) WITH (fillfactor = 90);
         CREATE UNIQUE INDEX log_ref_idx ON log (ref);
         ALTER TABLE log REPLICA IDENTITY FULL;
         ALTER TABLE log ALTER COLUMN ref SET STATISTICS 500;
         COMMENT ON COLUMN log.code IS 'the code';
         CREATE PUBLICATION log_pub FOR TABLE log WITH (publish_via_partition_root = true);
         INSERT INTO log (logged_on, code, ref) SELECT current_date - i % 30, 'c' || i, 'r' || i FROM generate_series(1, 300) i;",
    )
    .await;
    let mut consumers = Consumers::attach(&url, Kind::Schema, &["log"]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url, &["public.log"]);
    let c = cfg.clone();
    let plan = tokio::task::spawn_blocking(move || {
        run(&c, &["convert", "plan", "--table", "public.log"], None)
    })
    .await
    .unwrap();
    assert_eq!(plan.code, Some(0), "{}{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout
            .contains("unique constraint log_code_key (code) becomes (code, logged_on)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("unique index log_ref_idx (ref) becomes (ref, logged_on)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("storage options (fillfactor=90) stay on the first partition"),
        "{}",
        plan.stdout
    );
    let c = cfg.clone();
    let out = tokio::task::spawn_blocking(move || {
        run(&c, &["convert", "start", "--table", "public.log"], None)
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let r = &query(
        &url,
        "SELECT c.relkind::text, c.relreplident::text,
                (SELECT attstattarget FROM pg_attribute WHERE attrelid = c.oid AND attname = 'ref')::int4,
                col_description(c.oid, 3),
                (SELECT string_agg(pg_get_indexdef(indexrelid), '; ' ORDER BY indexrelid::regclass::text) FROM pg_index WHERE indrelid = c.oid),
                EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = 'log_pub' AND pr.prrelid = c.oid),
                pg_get_serial_sequence('public.log', 'id')
         FROM pg_class c WHERE c.oid = 'public.log'::regclass",
    )
    .await[0];
    assert_eq!(r.get::<_, String>(0), "p");
    assert_eq!(r.get::<_, String>(1), "f");
    assert_eq!(r.get::<_, i32>(2), 500);
    assert_eq!(r.get::<_, Option<String>>(3).as_deref(), Some("the code"));
    let idx: String = r.get(4);
    assert!(
        idx.contains("UNIQUE INDEX log_code_key ON ONLY public.log USING btree (code, logged_on)"),
        "{idx}"
    );
    assert!(
        idx.contains("UNIQUE INDEX log_pkey ON ONLY public.log USING btree (id, logged_on)"),
        "{idx}"
    );
    assert!(
        idx.contains("UNIQUE INDEX log_ref_idx ON ONLY public.log USING btree (ref, logged_on)"),
        "{idx}"
    );
    assert!(r.get::<_, bool>(5), "publication membership");
    // The serial's sequence belongs to the parent (retiring the first partition keeps it).
    assert_eq!(
        r.get::<_, Option<String>>(6).as_deref(),
        Some("public.log_id_seq")
    );
    let id: i64 = query(
        &url,
        "INSERT INTO log (logged_on, code) VALUES (current_date, 'new') RETURNING id",
    )
    .await[0]
        .get(0);
    assert_eq!(id, 301);
    let invalid: i64 =
        query(&url, "SELECT count(*) FROM pg_index WHERE NOT indisvalid").await[0].get(0);
    assert_eq!(invalid, 0);

    // Retention retires the first partition once its whole range has passed.
    let first: String = query(
        &url,
        "SELECT plan->>'first_partition' FROM pgsteward.conversions",
    )
    .await[0]
        .get(0);
    let boundary: i64 = query(
        &url,
        "SELECT (plan->>'boundary')::int8 FROM pgsteward.conversions",
    )
    .await[0]
        .get(0);
    let mut config = pgsteward::config::load(&cfg).unwrap().cluster;
    config.partitions.tables[0].retention =
        Some(pgsteward::config::CalendarSpan { months: 0, days: 1 });
    let later =
        chrono::DateTime::from_timestamp_micros(boundary).unwrap() + chrono::Duration::days(3);
    // The first partition is retired: its rows stay on the consumers.
    consumers.retiring().await;
    let report = pgsteward::partitions::run_pass_at(
        &config,
        later,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(report.tables[0].error.is_none(), "{report:#?}");
    let attached: i64 = query(
        &url,
        &format!("SELECT count(*) FROM pg_inherits WHERE inhrelid = to_regclass('public.{first}')"),
    )
    .await[0]
        .get(0);
    assert_eq!(attached, 0, "{report:#?}");
    consumers
        .assert_same("converted, first partition retired")
        .await;
}

#[tokio::test]
async fn rows_outside_the_first_partition_stop_the_conversion_cleanly() {
    let url = fresh_db("convert_nulls");
    exec(
        &url,
        "CREATE TABLE n (id int PRIMARY KEY, t timestamptz);
         INSERT INTO n SELECT i, CASE WHEN i = 7 THEN NULL ELSE now() END FROM generate_series(1, 50) i;",
    )
    .await;
    let mut consumers = Consumers::attach(&url, Kind::ViaRoot, &["n"]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url, &["public.n"]);
    let c = cfg.clone();
    let plan = tokio::task::spawn_blocking(move || {
        run(&c, &["convert", "plan", "--table", "public.n"], None)
    })
    .await
    .unwrap();
    assert!(
        plan.stdout.contains("rows with t NULL are refused"),
        "{}",
        plan.stdout
    );
    let out = tokio::task::spawn_blocking(move || {
        run(&cfg, &["convert", "start", "--table", "public.n"], None)
    })
    .await
    .unwrap();
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("the conversion was undone"),
        "{}",
        out.stderr
    );
    let left: i64 = query(
        &url,
        "SELECT (SELECT count(*) FROM pg_constraint WHERE conrelid = 'public.n'::regclass AND conname LIKE 'pgsteward%') \
              + (SELECT count(*) FROM pg_class WHERE relname LIKE 'pgsteward_cv_%')",
    )
    .await[0]
    .get(0);
    assert_eq!(left, 0);
    let state: String = query(&url, "SELECT state FROM pgsteward.conversions").await[0].get(0);
    assert_eq!(state, "aborted");
    // Writers of NULL keys are not refused any more.
    exec(&url, "INSERT INTO n VALUES (51, NULL)").await;
    consumers.assert_same("a conversion undone").await;
}

fn run_blocking(
    cfg: &std::path::Path,
    args: &'static [&'static str],
    failpoint: Option<&'static str>,
) -> tokio::task::JoinHandle<crate::convert::Run> {
    let c = cfg.to_path_buf();
    tokio::task::spawn_blocking(move || run(&c, args, failpoint))
}

/// While a conversion is in flight before its swap, `partitions plan`,
/// `status` and `apply` say so, with the step and since when, and leave the
/// table alone; none of them calls it "not partitioned" or exits 1 for it.
#[tokio::test]
async fn partition_commands_report_a_table_being_converted() {
    let url = fresh_db("convert_status");
    crate::convert::setup(&url, 200).await;
    let mut consumers = Consumers::attach(&url, Kind::ViaRoot, &["events"]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url, &["public.events"]);
    // Stops after the CHECK is validated, before the swap.
    let out = run_blocking(
        &cfg,
        &["convert", "start", "--table", "public.events"],
        Some("convert-swapped-start=error"),
    )
    .await
    .unwrap();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let plan = run_blocking(&cfg, &["partitions", "plan"], None)
        .await
        .unwrap();
    assert_eq!(plan.code, Some(0), "{}{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout
            .contains("-- public.events: skipped: being converted")
            && plan.stdout.contains("step check_validated since ")
            && !plan.stdout.contains("not a partitioned table"),
        "{}",
        plan.stdout
    );
    let st = run_blocking(&cfg, &["partitions", "status", "--output", "json"], None)
        .await
        .unwrap();
    assert_eq!(st.code, Some(0), "{}{}", st.stdout, st.stderr);
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(
        st["tables"][0]["converting"]["step"], "check_validated",
        "{st:#}"
    );
    assert!(st["tables"][0]["error"].is_null(), "{st:#}");
    let text = run_blocking(&cfg, &["partitions", "status"], None)
        .await
        .unwrap();
    assert!(
        text.stdout.contains("being converted") && !text.stdout.contains("PROBLEM"),
        "{}",
        text.stdout
    );
    let pass = run_blocking(&cfg, &["partitions", "apply", "--output", "json"], None)
        .await
        .unwrap();
    let pass: serde_json::Value = serde_json::from_str(&pass.stdout).unwrap();
    assert!(
        pass["tables"][0]["skipped"]
            .as_str()
            .unwrap_or_default()
            .contains("step check_validated since "),
        "{pass:#}"
    );
    assert_eq!(
        crate::convert::relkind(&url, "public.events").await,
        "r",
        "the pass touched the table"
    );
    // Once resumed past the swap, the table is maintained as any other.
    let out = run_blocking(
        &cfg,
        &["convert", "resume", "--table", "public.events"],
        None,
    )
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let st = run_blocking(&cfg, &["partitions", "status", "--output", "json"], None)
        .await
        .unwrap();
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    assert!(st["tables"][0]["converting"].is_null(), "{st:#}");
    assert!(
        st["tables"][0]["partitions"].as_u64().unwrap_or(0) >= 2,
        "{st:#}"
    );
    // The identity on the parent: kept as such from PostgreSQL 17, an owned
    // sequence default before (identity columns on partitioned tables need 17).
    let r = &query(
        &url,
        "SELECT a.attidentity::text, pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a \
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE a.attrelid = 'public.events'::regclass AND a.attname = 'id'",
    )
    .await[0];
    let (identity, default): (String, Option<String>) = (r.get(0), r.get(1));
    if crate::harness::server_major() >= 17 {
        assert_eq!(identity, "a", "{default:?}");
    } else {
        assert!(
            identity.is_empty() && default.as_deref().is_some_and(|d| d.contains("nextval")),
            "{identity:?} {default:?}"
        );
    }
    let id: i64 = query(
        &url,
        "INSERT INTO public.events (other_id) VALUES (1) RETURNING id",
    )
    .await[0]
        .get(0);
    assert!(id > 200, "the identity did not continue: {id}");
    consumers
        .assert_same("converted, maintained, written")
        .await;
}

/// Writers with `synchronous_commit = off` (acknowledged before their WAL is
/// flushed), four of them, through a conversion that is killed just before
/// its swap commits and resumed: no client error, every acknowledged row is
/// in the converted table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_commit_writers_lose_no_acknowledged_row() {
    let url = fresh_db("convert_async");
    let db = url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    exec(
        &url,
        &format!(
            "ALTER DATABASE \"{db}\" SET synchronous_commit = off;
             CREATE TABLE ledger (id bigint PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO ledger SELECT -i, now() - i * interval '1 minute' FROM generate_series(1, 5000) i;"
        ),
    )
    .await;
    let app = crate::harness::authed(&url);
    let probe = query(&app, "SHOW synchronous_commit").await;
    assert_eq!(probe[0].get::<_, String>(0), "off");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url, &["public.ledger"]);
    let mut consumers = Consumers::attach(&url, Kind::ViaRoot, &["ledger"]).await;
    let load = crate::upgrade::Load::start(
        &app,
        4,
        std::time::Duration::from_millis(2),
        std::time::Duration::from_secs(120),
    );
    load.wait_progress(100).await;
    let out = run_blocking(
        &cfg,
        &["convert", "start", "--table", "public.ledger"],
        Some("convert-swapped-done=kill"),
    )
    .await
    .unwrap();
    assert_eq!(out.code, None, "not killed: {}", out.stderr);
    load.wait_progress(50).await;
    let out = run_blocking(
        &cfg,
        &["convert", "resume", "--table", "public.ledger"],
        None,
    )
    .await
    .unwrap();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    load.wait_progress(50).await;
    let ledger = load.stop().await;
    assert!(
        ledger.errors.is_empty(),
        "client errors: {:?}",
        ledger.errors
    );
    assert_eq!(crate::convert::relkind(&url, "public.ledger").await, "p");
    let client = crate::harness::connect(&url).await;
    let found: i64 = client
        .query_one(
            "SELECT count(*) FROM public.ledger WHERE id = ANY($1)",
            &[&ledger.acked],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(found as usize, ledger.acked.len(), "acknowledged rows lost");
    let old: i64 = client
        .query_one("SELECT count(*) FROM public.ledger WHERE id < 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(old, 5000);
    consumers
        .assert_same("asynchronous-commit writers through a killed swap")
        .await;
}

/// What `convert plan` tells the operator to do about a materialized view
/// works: read through a plain view, it follows the new parent.
#[tokio::test]
async fn a_materialized_view_reading_through_a_view_follows_the_parent() {
    let url = fresh_db("convert_matview");
    exec(
        &url,
        "CREATE TABLE m (id int PRIMARY KEY, t timestamptz NOT NULL);
         INSERT INTO m SELECT i, now() - i * interval '1 hour' FROM generate_series(1, 100) i;
         CREATE MATERIALIZED VIEW m_direct AS SELECT count(*) AS n FROM m;",
    )
    .await;
    let mut consumers = Consumers::attach(&url, Kind::Schema, &["m"]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &url, &["public.m"]);
    let plan = run_blocking(&cfg, &["convert", "plan", "--table", "public.m"], None)
        .await
        .unwrap();
    assert_eq!(plan.code, Some(1));
    assert!(
        plan.stdout
            .contains("materialized view public.m_direct reads the table")
            && plan.stdout.contains("through a plain view"),
        "{}",
        plan.stdout
    );
    // The recipe: a copy reading a view, swapped in by name in one transaction.
    exec(
        &url,
        "CREATE VIEW m_source AS SELECT * FROM m;
         CREATE MATERIALIZED VIEW m_direct_copy AS SELECT count(*) AS n FROM m_source;
         BEGIN; DROP MATERIALIZED VIEW m_direct; ALTER MATERIALIZED VIEW m_direct_copy RENAME TO m_direct; COMMIT;",
    )
    .await;
    let out = run_blocking(&cfg, &["convert", "start", "--table", "public.m"], None)
        .await
        .unwrap();
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let boundary: String = query(
        &url,
        "SELECT plan->>'boundary_text' FROM pgsteward.conversions",
    )
    .await[0]
        .get(0);
    exec(
        &url,
        &format!(
            "INSERT INTO m VALUES (1000, '{boundary}'::timestamptz + interval '1 hour');
             REFRESH MATERIALIZED VIEW m_direct;"
        ),
    )
    .await;
    let n: i64 = query(&url, "SELECT n FROM m_direct").await[0].get(0);
    assert_eq!(n, 101, "the materialized view does not read the new parent");
    consumers
        .assert_same("converted under a materialized view")
        .await;
}
