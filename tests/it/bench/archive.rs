//! Archiving a large partition: pgsteward's retirement (detach, COPY →
//! multipart upload, read-back verification, drop) against the floor
//! `psql -c "COPY (SELECT * FROM part) TO STDOUT" | aws s3 cp - s3://...`,
//! both into the same local S3 server; and `partitions restore` against
//! `aws s3 cp s3://... - | psql -c "COPY ... FROM STDIN"`. Prints figures,
//! asserts only correctness.
//! `cargo test --release --features failpoints --test it bench::archive:: -- --ignored --nocapture`
//! (`PGSTEWARD_BENCH_ARCHIVE_MB`, default 1024: the partition's size on disk;
//! `PGSTEWARD_BENCH_ARCHIVE_RESTORE=0` skips the restores, for repeated
//! archive runs; needs `pip install awscli`; docs/benchmarks.md has the figures).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::archive::{credentials_in_env, pgsteward, BUCKET, KEY, S3};
use crate::harness::{as_owner, as_steward, connect, fresh_db, must, query, text, write_config};
use crate::partitions::{month_name, month_start};

/// Runs `cmd` to the end, sampling its peak RSS (VmHWM) meanwhile.
fn timed(cmd: &mut Command) -> (Duration, u64, std::process::Output) {
    let started = Instant::now();
    let child = must(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string()),
    );
    let pid = child.id();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0u64;
        let path = format!("/proc/{pid}/status");
        while let Ok(s) = std::fs::read_to_string(&path) {
            if let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    });
    let out = must(child.wait_with_output().map_err(|e| e.to_string()));
    let elapsed = started.elapsed();
    let peak_kb = sampler.join().unwrap_or(0);
    (elapsed, peak_kb, out)
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("/bin/sh");
    c.args(["-c", script])
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", KEY)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    c
}

fn mib_s(bytes: u64, d: Duration) -> String {
    format!(
        "{:.1}",
        bytes as f64 / d.as_secs_f64().max(1e-3) / (1 << 20) as f64
    )
}

#[tokio::test]
#[ignore]
async fn bench_archive_vs_psql_and_aws_cli() {
    assert!(
        Command::new("aws")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the floor needs the AWS CLI: pip install awscli"
    );
    let mb: u64 = std::env::var("PGSTEWARD_BENCH_ARCHIVE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    credentials_in_env();
    let s3 = S3::start().await;
    let url = fresh_db("bench_archive");
    let owner = connect(&as_owner(&url)).await;
    let mut ddl = String::from(
        "CREATE TABLE audit (id bigint GENERATED ALWAYS AS IDENTITY, at timestamptz NOT NULL, \
        amount numeric(12,2), tags text[], payload text) PARTITION BY RANGE (at);",
    );
    for i in -6..=1 {
        ddl.push_str(&format!(
            "CREATE TABLE {} PARTITION OF audit FOR VALUES FROM ('{}') TO ('{}');",
            month_name("audit", i),
            month_start(i),
            month_start(i + 1)
        ));
    }
    must(owner.batch_execute(&ddl).await.map_err(|e| e.to_string()));
    let part = month_name("audit", -6);
    let fill = format!(
        "INSERT INTO audit (at, amount, tags, payload) SELECT timestamptz '{}' + (g % 2000000) * interval '1 second', \
         g / 100.0, ARRAY['a', g::text], repeat(md5(g::text), 5) FROM generate_series($1::int8, $2::int8) g",
        month_start(-6)
    );
    let mut next = 0i64;
    loop {
        let size: i64 = query(&url, &format!("SELECT pg_relation_size('{part}')")).await[0].get(0);
        if size as u64 >= mb << 20 {
            break;
        }
        must(
            owner
                .execute(&fill, &[&next, &(next + 499_999)])
                .await
                .map_err(|e| e.to_string()),
        );
        next += 500_000;
    }
    // An old partition was vacuumed long ago; a fresh bulk load attracts
    // autovacuum, whose lock would hold the DETACH up (as in production).
    must(
        owner
            .batch_execute(&format!("VACUUM ANALYZE {part}"))
            .await
            .map_err(|e| e.to_string()),
    );
    let rows: i64 = query(&url, &format!("SELECT count(*) FROM {part}")).await[0].get(0);
    let on_disk: i64 =
        query(&url, &format!("SELECT pg_total_relation_size('{part}')")).await[0].get(0);
    let endpoint = s3.url();
    let steward = as_steward(&url);

    // Floor: psql | aws s3 cp.
    let (floor, _, out) = timed(sh(&format!(
        "psql \"$PGURL\" -Xq -c 'COPY (SELECT * FROM {part}) TO STDOUT' | aws s3 cp - s3://{BUCKET}/floor/{part}.copy --endpoint-url {endpoint}"
    )).env("PGURL", &steward));
    assert!(out.status.success(), "floor: {}", text(&out));
    println!(
        "floor (psql COPY | aws s3 cp -): {:.1} s",
        floor.as_secs_f64()
    );
    let objects = s3.client().await;
    let floor_bytes = must(
        objects
            .head_object()
            .bucket(BUCKET)
            .key(format!("floor/{part}.copy"))
            .send()
            .await
            .map_err(|e| format!("{e:?}")),
    )
    .content_length()
    .unwrap_or(0) as u64;

    // pgsteward: the whole retirement, verification included. The upload's
    // pace is the default (`part_size`, `uploads_in_flight`) unless
    // PGSTEWARD_BENCH_ARCHIVE_PACE="<part_size>,<in_flight>" says otherwise.
    let pace = std::env::var("PGSTEWARD_BENCH_ARCHIVE_PACE")
        .ok()
        .and_then(|v| {
            let (size, n) = v.split_once(',')?;
            Some(format!("part_size = \"{size}\"\nuploads_in_flight = {n}\n"))
        })
        .unwrap_or_default();
    let dir = crate::harness::server_tempdir();
    let path = write_config(
        dir.path(),
        &crate::archive::toml(&url, &endpoint)
            .replace(
                "part_size = \"5MB\"\n",
                &format!("request_timeout = \"300s\"\n{pace}"),
            )
            .replace("request_timeout = \"3s\"\n", ""),
    );
    if !pace.is_empty() {
        println!("pace: {}", pace.replace('\n', " "));
    }
    let (ours, ours_kb, out) = timed(
        pgsteward()
            .args([
                "--config",
                path.to_str().unwrap(),
                "--log-format",
                "json",
                "partitions",
                "apply",
            ])
            .env("PGSTEWARD_LOG_LEVEL", "info"),
    );
    assert!(out.status.success(), "pgsteward: {}", text(&out));
    let logs = String::from_utf8_lossy(&out.stderr).to_string();
    let upload_s: f64 = logs
        .lines()
        .filter(|l| l.contains("archive uploaded"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["seconds"].as_str().and_then(|s| s.parse::<f64>().ok()))
        .sum();
    let keys = s3.keys().await;
    let key = keys
        .iter()
        .find(|k| k.starts_with("pg/") && k.ends_with(".copy"))
        .cloned()
        .unwrap_or_default();
    let ours_bytes = must(
        objects
            .head_object()
            .bucket(BUCKET)
            .key(&key)
            .send()
            .await
            .map_err(|e| format!("{e:?}")),
    )
    .content_length()
    .unwrap_or(0) as u64;
    assert_eq!(ours_bytes, floor_bytes, "the same COPY text");

    let restore = std::env::var("PGSTEWARD_BENCH_ARCHIVE_RESTORE").as_deref() != Ok("0");
    let restored = if restore {
        Some(restore_both(&url, &owner, &endpoint, &key, &path, rows).await)
    } else {
        None
    };
    println!(
        "\narchive of one partition: {rows} rows, {} MiB on disk, {} MiB of COPY text",
        on_disk >> 20,
        ours_bytes >> 20
    );
    println!("| run | seconds | MiB/s of COPY text | peak RSS | vs floor |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| floor: psql COPY \\| aws s3 cp - | {:.1} | {} | | 1.00x |",
        floor.as_secs_f64(),
        mib_s(floor_bytes, floor)
    );
    println!(
        "| pgsteward upload (COPY → multipart, SHA-256) | {upload_s:.1} | {} | | {:.2}x |",
        mib_s(ours_bytes, Duration::from_secs_f64(upload_s.max(1e-3))),
        upload_s / floor.as_secs_f64()
    );
    println!(
        "| pgsteward whole retirement (detach, upload, read-back verify, count, drop) | {:.1} | {} | {} MiB | {:.2}x |",
        ours.as_secs_f64(),
        mib_s(ours_bytes, ours),
        ours_kb >> 10,
        ours.as_secs_f64() / floor.as_secs_f64()
    );
    if let Some((restore_floor, restore_ours, restore_kb)) = restored {
        println!(
            "| floor restore: aws s3 cp \\| psql COPY FROM | {:.1} | {} | | 1.00x |",
            restore_floor.as_secs_f64(),
            mib_s(ours_bytes, restore_floor)
        );
        println!(
            "| pgsteward restore (verified, one transaction) | {:.1} | {} | {} MiB | {:.2}x |",
            restore_ours.as_secs_f64(),
            mib_s(ours_bytes, restore_ours),
            restore_kb >> 10,
            restore_ours.as_secs_f64() / restore_floor.as_secs_f64()
        );
    }
}

/// `partitions restore` against `aws s3 cp | psql COPY FROM`: (floor, ours, peak KiB).
async fn restore_both(
    url: &str,
    owner: &tokio_postgres::Client,
    endpoint: &str,
    key: &str,
    path: &std::path::Path,
    rows: i64,
) -> (Duration, Duration, u64) {
    // Restore: pgsteward vs aws s3 cp | psql COPY FROM.
    must(
        owner
            .batch_execute("CREATE TABLE floor_restore (LIKE audit); CREATE SCHEMA r")
            .await
            .map_err(|e| e.to_string()),
    );
    let (restore_floor, _, out) = timed(sh(&format!(
        "aws s3 cp s3://{BUCKET}/{key} - --endpoint-url {endpoint} | psql \"$PGURL\" -Xq -c 'COPY floor_restore FROM STDIN'"
    )).env("PGURL", as_owner(url)));
    assert!(out.status.success(), "restore floor: {}", text(&out));
    let (restore_ours, restore_kb, out) = timed(pgsteward().args([
        "--config",
        path.to_str().unwrap(),
        "partitions",
        "restore",
        "--table",
        "public.audit",
        "--from",
        key,
        "--into",
        "r.audit_restored",
    ]));
    assert!(out.status.success(), "restore: {}", text(&out));
    let back: i64 = query(url, "SELECT count(*) FROM r.audit_restored").await[0].get(0);
    assert_eq!(back, rows);

    (restore_floor, restore_ours, restore_kb)
}
