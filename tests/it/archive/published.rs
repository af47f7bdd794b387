//! pgsteward's own tables and publications (issue 22): a `FOR ALL TABLES`
//! publication (or `FOR TABLES IN SCHEMA pgsteward`) publishes them, and a
//! subscriber without them stops applying at the first row pgsteward writes
//! there. Archive retention, `convert` and capacity samples refuse before
//! their first write, naming the publication and the fix, until the operator
//! declares the subscribers have the tables; a pass that writes nothing
//! there is not refused.

use std::path::Path;

use super::*;
use crate::consumers::{Consumers, Kind};
use crate::harness::{fresh_db, text, write_config};
use crate::logical::subscriber_server;
use crate::partitions::{exec, exec_super, month_name, month_start};

const LIMIT: Duration = Duration::from_secs(120);

/// `toml` with `names` declared under `[database]`.
fn declared(toml: &str, names: &[&str]) -> String {
    let list = serde_json::to_string(names).unwrap_or_default();
    toml.replacen(
        "\n[partitions]",
        &format!("subscribers_have_pgsteward_schema = {list}\n[partitions]"),
        1,
    )
}

fn steward(cfg: &Path, args: &[&str]) -> std::process::Output {
    run(pgsteward().arg("--config").arg(cfg).args(args), LIMIT)
}

async fn attached(url: &str, partition: &str) -> bool {
    query(
        url,
        &format!(
            "SELECT coalesce((SELECT relispartition FROM pg_class WHERE oid = to_regclass('{partition}')), false)"
        ),
    )
    .await[0]
        .get(0)
}

async fn count(url: &str, relation: &str) -> i64 {
    query(url, &format!("SELECT count(*) FROM {relation}")).await[0].get(0)
}

/// `audit` (as `app_owner`) with partitions for months -6..=1 and rows in
/// -6..=-4 (past retention) and -1..=0: plain columns, every major.
async fn audit_table(url: &str) {
    let mut sql = String::from(
        "CREATE TABLE audit (id bigint GENERATED ALWAYS AS IDENTITY, at timestamptz NOT NULL, \
         note text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);",
    );
    for i in -6..=1 {
        sql.push_str(&format!(
            "CREATE TABLE {} PARTITION OF audit FOR VALUES FROM ('{}') TO ('{}');",
            month_name("audit", i),
            month_start(i),
            month_start(i + 1)
        ));
    }
    for i in [-6, -5, -4, -1, 0] {
        sql.push_str(&format!(
            "INSERT INTO audit (at, note) SELECT timestamptz '{}' + g * interval '1 hour', 'row ' || g \
             FROM generate_series(1, 5) g;",
            month_start(i)
        ));
    }
    exec(url, &sql).await;
}

#[tokio::test]
async fn archive_retention_refuses_until_the_subscribers_have_pgsteward_tables() {
    let s3 = S3::start().await;
    let url = fresh_db("published_archive");
    audit_table(&url).await;
    let mut consumers = Consumers::attach(&url, Kind::AllTables, &["audit"]).await;
    let publication = consumers.publication().to_string();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let base = toml(&url, &s3.url());
    let retiring: Vec<String> = [-6, -5, -4].map(|i| month_name("audit", i)).to_vec();

    // No false positive: an archive table's pass with nothing past
    // retention writes nothing to pgsteward.* and is not refused (it makes
    // partitions, which the publication publishes through the parent).
    let quiet = base
        .replace("retention = \"3 months\"", "retention = \"12 months\"")
        .replace("premake = 1", "premake = 3");
    let out = steward(&write_config(dir.path(), &quiet), &["partitions", "apply"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("created 2, retired 0"), "{t}");
    assert!(!exists(&url, "pgsteward.schema_version").await, "{t}");
    let cfg = write_config(dir.path(), &base);

    // `plan` shows the refusal `apply` makes: exit 1, the publication, the fix.
    for args in [&["partitions", "plan"][..], &["partitions", "apply"][..]] {
        let out = steward(&cfg, args);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {t}");
        for want in [
            &format!("{publication} (FOR ALL TABLES)")[..],
            "pgsteward.retirements",
            "pgsteward schema-sql",
            "REFRESH PUBLICATION",
            &format!("subscribers_have_pgsteward_schema = [\"{publication}\"]"),
        ] {
            assert!(t.contains(want), "{args:?} lacks {want:?}: {t}");
        }
    }
    // Nothing written: no schema, no retirement row, no object; every
    // partition past retention still attached.
    assert!(!exists(&url, "pgsteward.schema_version").await);
    assert!(!exists(&url, "pgsteward.retirements").await);
    assert!(s3.keys().await.is_empty());
    for p in &retiring {
        assert!(attached(&url, p).await, "{p}");
    }
    // The subscriber still applies: a row written now arrives, no apply error.
    exec(
        &url,
        "INSERT INTO audit (at, note) VALUES (now(), 'after the refusal')",
    )
    .await;
    consumers.assert_same("archive refused").await;

    // The fix the refusal names: the tables on the subscriber, a refresh,
    // then the declaration.
    let sql = must(
        pgsteward()
            .arg("schema-sql")
            .output()
            .map_err(|e| e.to_string()),
    );
    assert_eq!(sql.status.code(), Some(0), "{}", text(&sql));
    let sub_db = consumers.subscriber().db.clone();
    must(subscriber_server().psql_secret(&sub_db, &String::from_utf8_lossy(&sql.stdout)));
    let refresh = format!(
        "ALTER SUBSCRIPTION {} REFRESH PUBLICATION",
        consumers.subscriber().name
    );
    must(subscriber_server().psql(&sub_db, &refresh));
    let cfg = write_config(dir.path(), &declared(&base, &[&publication]));
    consumers.retiring().await;
    let out = steward(&cfg, &["partitions", "apply"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("retired 3"), "{t}");
    for p in &retiring {
        assert!(!exists(&url, p).await, "{p} archived and dropped: {t}");
    }
    exec(
        &url,
        "INSERT INTO audit (at, note) VALUES (now(), 'after the archive')",
    )
    .await;
    consumers
        .assert_same("archived, subscriber has the schema")
        .await;

    // A restore under a FOR ALL TABLES publication: loaded unlogged and
    // made logged in one transaction, its rows are never decoded; the
    // subscriber (which kept the partition: DDL is not replicated) gets no
    // second copy and does not stop on a table it lacks.
    let listed = steward(&cfg, &["partitions", "archives", "--output", "json"]);
    let listed: serde_json::Value =
        must(serde_json::from_slice(&listed.stdout).map_err(|e| format!("{e}: {}", text(&listed))));
    let key = listed[0]["key"].as_str().unwrap_or_default().to_string();
    let partition = listed[0]["partition"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let out = steward(
        &cfg,
        &[
            "partitions",
            "restore",
            "--table",
            "public.audit",
            "--from",
            &key,
            "--attach",
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(attached(&url, &partition).await, "{partition}: {t}");
    exec(
        &url,
        "INSERT INTO audit (at, note) VALUES (now(), 'after the restore')",
    )
    .await;
    consumers.assert_same("restored under FOR ALL TABLES").await;

    // Refreshed again, the subscriber copies pgsteward's rows too.
    must(subscriber_server().psql(&sub_db, &refresh));
    let sub = consumers.subscriber();
    let t0 = std::time::Instant::now();
    loop {
        let on_sub = count(&sub.url(), "pgsteward.retirements").await;
        let errors = sub.apply_errors().await;
        assert_eq!(errors, 0, "apply errors on the subscriber");
        if on_sub == 3 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{on_sub} retirements on the subscriber"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn convert_and_capacity_refuse_a_published_schema_and_write_nothing() {
    let url = fresh_db("published_convert");
    crate::convert::setup(&url, 50).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = crate::convert::config(dir.path(), &url, &["public.events"]);
    let base = must(std::fs::read_to_string(&cfg).map_err(|e| e.to_string()));
    // A capacity run makes the schema and records the first samples.
    steward(&cfg, &["capacity"]);
    let samples = count(&url, "pgsteward.capacity_samples").await;
    assert!(samples > 0);
    // The schema by name where the server has it (15+), else its tables.
    exec_super(
        &url,
        if crate::harness::server_major() >= 15 {
            "CREATE PUBLICATION steward_state FOR TABLES IN SCHEMA pgsteward"
        } else {
            "CREATE PUBLICATION steward_state FOR TABLE pgsteward.capacity_samples, pgsteward.conversions"
        },
    )
    .await;

    let out = steward(&cfg, &["capacity"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("steward_state") && t.contains("pgsteward.capacity_samples"),
        "{t}"
    );
    assert_eq!(count(&url, "pgsteward.capacity_samples").await, samples);

    let out = steward(&cfg, &["convert", "plan", "--table", "public.events"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("refused: the conversion writes to pgsteward.conversions")
            && t.contains("steward_state")
            && t.contains("subscribers_have_pgsteward_schema = [\"steward_state\"]"),
        "{t}"
    );
    let out = steward(&cfg, &["convert", "start", "--table", "public.events"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("steward_state"), "{t}");
    assert_eq!(count(&url, "pgsteward.conversions").await, 0);
    assert_eq!(crate::convert::relkind(&url, "public.events").await, "r");

    // Declared: the plan goes through.
    let cfg = write_config(dir.path(), &declared(&base, &["steward_state"]));
    let out = steward(&cfg, &["convert", "plan", "--table", "public.events"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
