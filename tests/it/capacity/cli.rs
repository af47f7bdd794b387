//! `pgsteward capacity` through the binary: partitioned tables with history,
//! a shrinking one and one too young, an int4 column fed by a bigint
//! sequence at 80 % of 2^31, XIDs consumed, the JSON contract, the text
//! table and the plot, missing privileges and bad configuration.

use super::{capacity_json, config, db_name, find, seed};
use crate::harness::{fresh_db, must, owner_psql, pgsteward, shared, text};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Monthly partitions of `table` from `first` to `last` months from now
/// (0 = the current month), `rows(i)` rows of ~200 bytes in month `i`.
fn monthly(db: &str, table: &str, first: i32, last: i32, rows: impl Fn(i32) -> i32) {
    let mut sql = format!(
        "CREATE TABLE public.{table} (at timestamptz NOT NULL, id bigint, payload text) PARTITION BY RANGE (at);\n"
    );
    for i in first..=last {
        sql.push_str(&format!(
            "DO $$ DECLARE d date := (date_trunc('month', now()) + make_interval(months => {i}))::date; \
             BEGIN EXECUTE format('CREATE TABLE public.%I PARTITION OF public.{table} FOR VALUES FROM (%L) TO (%L)', \
             '{table}_' || to_char(d, 'YYYY_MM'), d, (d + interval '1 month')::date); END $$;\n"
        ));
        let n = rows(i);
        if n > 0 {
            sql.push_str(&format!(
                "INSERT INTO public.{table} SELECT date_trunc('month', now()) + make_interval(months => {i}) + g * interval '1 minute', g, repeat('x', 200) FROM generate_series(1, {n}) g;\n"
            ));
        }
    }
    owner_psql(shared(), db, &sql);
}

/// The cluster's next transaction ID (read without assigning one).
fn next_xid(db: &str) -> f64 {
    must(shared().psql(db, "SELECT txid_snapshot_xmax(txid_current_snapshot())"))
        .trim()
        .parse()
        .unwrap()
}

/// Consumes `n` transaction IDs: one subtransaction that writes per loop.
fn consume_xids(db: &str, n: u32) {
    owner_psql(
        shared(),
        db,
        &format!(
            "CREATE TABLE IF NOT EXISTS public.xid_burn (i int);\n\
             DO $$ BEGIN FOR i IN 1..{n} LOOP BEGIN INSERT INTO public.xid_burn VALUES (i); \
             EXCEPTION WHEN others THEN NULL; END; END LOOP; END $$;"
        ),
    );
}

#[test]
fn history_sequences_xids_storage_and_the_json_contract() {
    let db = db_name(&fresh_db("cap_cli"));
    // Six closed months growing 2000 → 12000 rows, the current one, two ahead.
    monthly(&db, "events", -6, 2, |i| {
        if i < 0 {
            (7 + i) * 2000
        } else {
            500
        }
    });
    // Writes falling to nearly nothing: the trend of bytes per day is below
    // zero by now.
    monthly(&db, "shrinking", -4, 1, |i| match i {
        -4 => 12_000,
        -3 => 8_000,
        -2 => 4_000,
        -1 => 200,
        _ => 0,
    });
    monthly(&db, "young", -1, 1, |i| if i < 0 { 1000 } else { 0 });
    owner_psql(
        shared(),
        &db,
        "CREATE SEQUENCE public.order_ids;\n\
         CREATE TABLE public.orders (id int4 NOT NULL DEFAULT nextval('public.order_ids'), v text);\n\
         SELECT setval('public.order_ids', (0.8 * 2147483647)::int8);\n\
         CREATE TABLE public.tickets (id int8 GENERATED ALWAYS AS IDENTITY, v text);\n\
         INSERT INTO public.tickets (v) SELECT 't' FROM generate_series(1, 10);\n\
         CREATE TABLE public.big_plain AS SELECT g, repeat('y', 300) AS y FROM generate_series(1, 3000) g;",
    );
    let dir = tempfile::tempdir().unwrap();
    let tables = "[[partitions.tables]]\ntable = \"public.events\"\ninterval = \"monthly\"\npremake = 2\n\
                  [[partitions.tables]]\ntable = \"public.shrinking\"\ninterval = \"monthly\"\npremake = 1\n\
                  [[partitions.tables]]\ntable = \"public.young\"\ninterval = \"monthly\"\npremake = 1\n";
    let capacity = "[capacity]\nlarge_table_min_size = \"64kB\"\n";
    let cfg = config(dir.path(), &db, &format!("{capacity}\n{tables}"));

    // First run: makes the schema, records a sample; no sampled history yet.
    let (code, r) = capacity_json(&cfg, &[]);
    assert_eq!(code, 0, "nothing runs out yet: {r:#}");
    assert_eq!(r["samples_recorded"], true, "{r:#}");
    for key in [
        "tables",
        "storage",
        "xid",
        "sequences",
        "partitions",
        "connections",
    ] {
        assert!(!r[key].is_null(), "the contract has `{key}`: {r:#}");
    }
    let events = find(&r, "tables", "table", "public.events");
    for key in [
        "table",
        "bytes",
        "growth_bytes_per_day",
        "days_until_full",
        "confidence",
    ] {
        assert!(
            events.get(key).is_some(),
            "tables[] has `{key}`: {events:#}"
        );
    }
    assert_eq!(events["kind"], "partitioned");
    assert_eq!(events["observations"], 6, "{events:#}");
    assert!(events["growth_bytes_per_day"].as_f64().unwrap() > 0.0);
    assert!(events["confidence"].as_f64().unwrap() > 0.0);
    let young = find(&r, "tables", "table", "public.young");
    assert_eq!(young["state"], "not_enough_history", "{young:#}");
    assert!(young["growth_bytes_per_day"].is_null() && young["days_until_full"].is_null());
    assert!(
        young["detail"]
            .as_str()
            .unwrap()
            .contains("1 closed monthly periods, 2 more needed"),
        "{young:#}"
    );
    let shrinking = find(&r, "tables", "table", "public.shrinking");
    assert_eq!(shrinking["state"], "not_growing", "{shrinking:#}");
    assert!(shrinking["days_until_full"].is_null());
    let plain = find(&r, "tables", "table", "public.big_plain");
    assert_eq!(plain["kind"], "plain");
    assert_eq!(plain["state"], "not_enough_history", "{plain:#}");
    let cov = find(&r, "partitions", "table", "public.events");
    let ahead = cov["days_covered_ahead"].as_f64().unwrap();
    assert!(ahead > 28.0 && ahead < 93.0, "{cov:#}");
    assert!(r["connections"]["used"].as_i64().unwrap() >= 1);
    assert!(r["connections"]["max"].as_i64() > r["connections"]["used"].as_i64());
    for key in ["used_bytes", "limit_bytes", "days_until_full"] {
        assert!(r["storage"].get(key).is_some(), "storage has `{key}`");
    }
    assert_eq!(r["storage"]["state"], "no_limit");
    let seq = find(&r, "sequences", "sequence", "public.order_ids");
    for key in ["sequence", "column", "used_ratio", "days_until_exhausted"] {
        assert!(seq.get(key).is_some(), "sequences[] has `{key}`: {seq:#}");
    }
    assert_eq!(seq["column"], "public.orders.id");
    assert_eq!(seq["limited_by"], "column");
    assert!(
        (seq["used_ratio"].as_f64().unwrap() - 0.8).abs() < 1e-6,
        "{seq:#}"
    );
    let ident = find(&r, "sequences", "sequence", "public.tickets_id_seq");
    assert_eq!(
        ident["column"], "public.tickets.id",
        "identity columns: {ident:#}"
    );
    let x = find(&r, "xid", "database", &db);
    for key in ["database", "age", "days_until_wraparound"] {
        assert!(x.get(key).is_some(), "xid[] has `{key}`: {x:#}");
    }

    // XIDs consumed for real, then days of history as earlier runs would
    // have left it: 50 M XIDs a day, 10 M sequence values a day, storage
    // growing 1 GiB a day, the plain table 100 kB a day.
    let age_before: i64 = x["age"].as_i64().unwrap();
    consume_xids(&db, 20_000);
    let used = r["storage"]["used_bytes"].as_f64().unwrap();
    let xid = next_xid(&db);
    let last = (0.8 * 2147483647.0_f64).floor();
    let plain_bytes = plain["bytes"].as_f64().unwrap();
    let mut samples = Vec::new();
    for d in 1..=4 {
        let d = f64::from(d);
        samples.push(("next_xid", "", d, xid - 5e7 * d));
        samples.push(("sequence_value", "public.order_ids", d, last - 1e7 * d));
        samples.push(("storage_used_bytes", "", d, used - GIB * d));
        samples.push(("table_bytes", "public.big_plain", d, plain_bytes - 1e5 * d));
    }
    seed(&db, &samples);
    // A volume with 10 GiB free: full in about 10 days, within the 14-day window.
    let cfg = config(
        dir.path(),
        &db,
        &format!(
            "[capacity]\nlarge_table_min_size = \"64kB\"\nstorage_limit = \"{}\"\n{tables}",
            (used + 10.0 * GIB) as u64
        ),
    );
    let svg = dir.path().join("capacity.svg");
    let (code, r) = capacity_json(
        &cfg,
        &["--plot", svg.to_str().unwrap(), "--horizon", "120d"],
    );
    assert_eq!(code, 1, "storage and a sequence run out: {r:#}");
    assert_eq!(r["horizon_days"], 120.0);
    let seq = find(&r, "sequences", "sequence", "public.order_ids");
    assert_eq!(seq["state"], "warning", "{seq:#}");
    let days = seq["days_until_exhausted"].as_f64().unwrap();
    // (2^31 − 1 − 0.8·(2^31 − 1)) / 10 M a day.
    assert!((days - 42.9).abs() < 1.0, "{seq:#}");
    let x = find(&r, "xid", "database", &db);
    let age = x["age"].as_i64().unwrap();
    assert!(
        age >= age_before + 20_000,
        "XIDs consumed: {age_before} → {age}"
    );
    let rate = x["xids_per_day"].as_f64().unwrap();
    assert!((rate / 5e7 - 1.0).abs() < 0.05, "{x:#}");
    let want = (f64::from(i32::MAX) - 3e6 - age as f64) / rate;
    let got = x["days_until_wraparound"].as_f64().unwrap();
    assert!((got - want).abs() < 0.5, "{got} vs {want}: {x:#}");
    let s = &r["storage"];
    assert_eq!(s["state"], "warning", "{s:#}");
    let full = s["days_until_full"].as_f64().unwrap();
    assert!(full > 5.0 && full < 12.0, "{s:#}");
    let plain = find(&r, "tables", "table", "public.big_plain");
    let g = plain["growth_bytes_per_day"].as_f64().unwrap();
    assert!((g / 1e5 - 1.0).abs() < 0.2, "{plain:#}");
    assert!(r["problems"].as_array().unwrap().len() >= 2, "{r:#}");
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.contains("<svg") && plot.contains("public.events"),
        "SVG written"
    );

    // The text table: sparklines, dates, the verdict.
    let out = pgsteward()
        .arg("--config")
        .arg(&cfg)
        .arg("capacity")
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(t.contains("public.events") && t.contains('█'), "{t}");
    assert!(t.contains("PROBLEM: sequence public.order_ids"), "{t}");
}

/// Without CREATE on the database the samples cannot be recorded, and a
/// sequence another role owns cannot be read: both are named with the GRANT
/// to run; the report still comes out (exit 1).
#[test]
fn missing_privileges_are_named_with_the_grant() {
    let cluster = shared();
    let db = "cap_noprivs";
    must(cluster.psql("postgres", &format!("DROP DATABASE IF EXISTS {db}")));
    must(cluster.psql("postgres", &format!("CREATE DATABASE {db}")));
    must(cluster.psql(
        db,
        &format!(
            "GRANT CONNECT ON DATABASE {db} TO steward; CREATE SEQUENCE public.secret_seq; SELECT nextval('public.secret_seq')"
        ),
    ));
    let dir = tempfile::tempdir().unwrap();
    let (code, r) = capacity_json(&config(dir.path(), db, ""), &[]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["samples_recorded"], false);
    let problems = r["problems"].to_string();
    assert!(
        problems.contains(&format!(
            "GRANT CREATE ON DATABASE \\\"{db}\\\" TO \\\"steward\\\""
        )),
        "{problems}"
    );
    let seq = find(&r, "sequences", "sequence", "public.secret_seq");
    assert_eq!(seq["state"], "unknown", "{seq:#}");
    assert!(seq["used_ratio"].is_null());
    assert!(
        problems.contains("GRANT SELECT ON SEQUENCE public.secret_seq TO \\\"steward\\\""),
        "{problems}"
    );
    // `check` names the same GRANT before any run.
    let out = pgsteward()
        .arg("--config")
        .arg(config(dir.path(), db, ""))
        .args(["check", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let schema = find(&v, "endpoints", "role", "schema");
    assert_eq!(schema["ok"], false, "{v:#}");
    assert!(
        schema["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("GRANT CREATE ON DATABASE \"{db}\" TO \"steward\"")),
        "{schema:#}"
    );
}

/// A wrong storage limit unit, a misspelt key and a bad horizon exit 2 and
/// name what is wrong.
#[test]
fn bad_capacity_configuration_exits_2() {
    let db = db_name(&fresh_db("cap_bad"));
    let dir = tempfile::tempdir().unwrap();
    for (extra, args, want) in [
        (
            "[capacity]\nstorage_limit = \"500 GBs\"\n",
            vec![],
            "capacity.storage_limit",
        ),
        (
            "[capacity]\nstorage_limt = \"500GB\"\n",
            vec![],
            "storage_limt",
        ),
        (
            "[capacity]\nstorage_limit = \"12\"\n",
            vec![],
            "capacity.storage_limit",
        ),
        ("", vec!["--horizon", "3 weeks"], "--horizon"),
        ("", vec!["--horizon", "0d"], "--horizon"),
    ] {
        let cfg = config(dir.path(), &db, extra);
        let out = pgsteward()
            .arg("--config")
            .arg(&cfg)
            .arg("capacity")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{extra} {args:?}: {}",
            text(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{extra} {args:?}: {err}");
    }
}
