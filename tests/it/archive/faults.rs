//! The store down, answering 500, hanging: every wait bounded, the partition
//! kept (never lost), the error naming the store and the fix; then the store
//! back and the retirement finished. And on the wire: no request carries
//! the SDKs' default checksum trailers that MinIO refuses.

use std::time::{Duration, Instant};

use super::proxy::{Mode, Proxy};
use super::*;
use crate::consumers::{Consumers, Kind};
use crate::harness::{fresh_db, text, write_config};

/// One partition past retention (month -5) and the current ones.
async fn small_table(url: &str) {
    let owner = connect(&as_owner(url)).await;
    let mut sql = String::from("CREATE TABLE audit (id bigint GENERATED ALWAYS AS IDENTITY, at timestamptz NOT NULL, note text) PARTITION BY RANGE (at);");
    for i in [-5, -1, 0, 1] {
        sql.push_str(&format!(
            "CREATE TABLE {} PARTITION OF audit FOR VALUES FROM ('{}') TO ('{}');",
            crate::partitions::month_name("audit", i),
            crate::partitions::month_start(i),
            crate::partitions::month_start(i + 1)
        ));
    }
    sql.push_str(&format!(
        "INSERT INTO audit (at, note) SELECT timestamptz '{}' + g * interval '30 seconds', repeat('x', 100) FROM generate_series(1, 60000) g;",
        crate::partitions::month_start(-5)
    ));
    must(
        owner
            .batch_execute(&sql)
            .await
            .map_err(|e| pgsteward::pg::server_message(&e)),
    );
}

fn error_of(r: &PassReport) -> String {
    r.tables[0].error.clone().unwrap_or_default()
}

#[tokio::test]
async fn a_store_down_failing_or_hung_keeps_the_partition_and_names_the_fix() {
    let s3 = S3::start().await;
    let proxy = Proxy::start(s3.moto.port);
    let url = fresh_db("archive_faults");
    small_table(&url).await;
    // Consumers of the retirement; the rows identified in full (no key).
    let full: String = [-5, -1, 0, 1]
        .iter()
        .map(|i| crate::partitions::month_name("audit", *i))
        .chain(["audit".to_string()])
        .map(|t| format!("ALTER TABLE {t} REPLICA IDENTITY FULL;"))
        .collect();
    must(
        connect(&as_owner(&url))
            .await
            .batch_execute(&full)
            .await
            .map_err(|e| pgsteward::pg::server_message(&e)),
    );
    let mut consumers = Consumers::attach(&url, Kind::Leaves, &["audit"]).await;
    consumers.retiring().await;
    let old = crate::partitions::month_name("audit", -5);
    let before = rows_of(&url, &old).await;

    // Down: nothing listens on the endpoint.
    let dead = pgsteward::localpg::free_port().unwrap();
    let cfg = config_of(&toml(&url, &format!("http://127.0.0.1:{dead}")));
    let started = Instant::now();
    let r = pass(&cfg).await;
    let e = error_of(&r);
    assert!(
        e.contains(&format!(
            "object store s3://{BUCKET}/pg/ at http://127.0.0.1:{dead}"
        )),
        "{e}"
    );
    assert!(
        e.contains("cannot be reached") || e.contains("did not answer"),
        "{e}"
    );
    assert!(e.contains("the partition is kept"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded: {:?}",
        started.elapsed()
    );
    assert!(exists(&url, &old).await, "kept");
    assert_eq!(
        states(&url).await,
        vec![(old.clone(), "detached".to_string())]
    );
    assert_eq!(r.tables[0].archive.failures, 1);
    assert_eq!(r.tables[0].archive.held_back, 1);
    assert!(!e.contains(KEY), "no credential in errors: {e}");

    // 500 on every request.
    let cfg = config_of(&toml(&url, &proxy.url()));
    proxy.set(Mode::Fail500);
    let r = pass(&cfg).await;
    let e = error_of(&r);
    assert!(e.contains("HTTP 500") && e.contains("InternalError"), "{e}");
    assert!(exists(&url, &old).await);

    // Hung: requests taken and never answered.
    proxy.set(Mode::Hang);
    let started = Instant::now();
    let r = pass(&cfg).await;
    let e = error_of(&r);
    assert!(e.contains("did not answer in time"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "bounded: {:?}",
        started.elapsed()
    );
    assert!(exists(&url, &old).await);
    assert_eq!(states(&url).await[0].1, "detached");

    // The CLI's exit code and message while the store fails.
    proxy.set(Mode::Fail500);
    let dir = crate::harness::server_tempdir();
    let path = write_config(dir.path(), &toml(&url, &proxy.url()));
    let out = run(
        pgsteward().args(["--config", path.to_str().unwrap(), "partitions", "apply"]),
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("the partition is kept"),
        "{}",
        text(&out)
    );
    let out = run(
        pgsteward().args(["--config", path.to_str().unwrap(), "check"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("HTTP 500"),
        "{}",
        text(&out)
    );

    // Back: the retirement finishes, rows intact in the archive.
    proxy.set(Mode::Pass);
    let out = run(
        pgsteward().args(["--config", path.to_str().unwrap(), "check"]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out));
    let r = pass(&cfg).await;
    assert!(r.tables[0].error.is_none(), "{:#?}", r.tables[0]);
    assert_eq!(r.tables[0].retired, 1);
    assert!(!exists(&url, &old).await);
    assert_eq!(states(&url).await[0].1, "dropped");
    // Before the restore below: it writes a table of the partition's name.
    consumers
        .assert_same("retired after the store came back")
        .await;
    assert_eq!(s3.keys().await.len(), 2, "one data object and its manifest");
    assert_eq!(s3.open_uploads().await, 0, "failed uploads aborted");
    let key = s3
        .keys()
        .await
        .into_iter()
        .find(|k| k.ends_with(".copy"))
        .unwrap();
    let out = run(
        pgsteward().args([
            "--config",
            path.to_str().unwrap(),
            "partitions",
            "restore",
            "--table",
            "public.audit",
            "--from",
            &key,
        ]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(rows_of(&url, &old).await, before);

    // What went over the wire: no flexible checksums, no aws-chunked trailers.
    let seen = proxy.requests();
    assert!(
        seen.iter()
            .any(|r| r.starts_with("put ") && r.contains("partnumber=")),
        "{seen:#?}"
    );
    for r in &seen {
        for bad in [
            "x-amz-sdk-checksum-algorithm",
            "x-amz-checksum-",
            "x-amz-trailer",
            "aws-chunked",
            "streaming-unsigned-payload-trailer",
        ] {
            assert!(!r.contains(bad), "{bad} sent:\n{r}");
        }
    }
}
