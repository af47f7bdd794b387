//! `pgsteward convert` on tables with more to carry, and on tables it must refuse.

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
         CREATE PUBLICATION log_pub FOR TABLE log;
         INSERT INTO log (logged_on, code, ref) SELECT current_date - i % 30, 'c' || i, 'r' || i FROM generate_series(1, 300) i;",
    )
    .await;
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
    let mut config = pgsteward::config::load(&cfg).unwrap();
    config.partitions.tables[0].retention =
        Some(pgsteward::config::CalendarSpan { months: 0, days: 1 });
    let later =
        chrono::DateTime::from_timestamp_micros(boundary).unwrap() + chrono::Duration::days(3);
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
}
