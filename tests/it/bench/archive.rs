//! Archiving a large partition: pgsteward's retirement (detach, COPY →
//! multipart upload, verification, drop) against the floor
//! `psql -c "COPY (SELECT * FROM part) TO STDOUT" | aws s3 cp - s3://...`,
//! both into the same local S3 server; and `partitions restore` against
//! `aws s3 cp s3://... - | psql -c "COPY ... FROM STDIN"`. Prints figures,
//! asserts only correctness.
//! `cargo test --release --features failpoints --test it bench::archive:: -- --ignored --nocapture`
//! (`PGSTEWARD_BENCH_ARCHIVE_MB`, default 1024: the partition's size on disk;
//! `PGSTEWARD_BENCH_ARCHIVE_RESTORE=0` skips the restores, for repeated
//! archive runs; `PGSTEWARD_BENCH_ARCHIVE_VERIFY=read-back|auto|both`,
//! default both: `archive.verify` of the retirement, or one retirement of
//! each in the same run, of two partitions filled alike (read-back first);
//! needs `pip install awscli`; docs/benchmarks.md has the figures).

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
    let modes: &[&str] = match std::env::var("PGSTEWARD_BENCH_ARCHIVE_VERIFY").as_deref() {
        Ok("read-back") => &["read-back"],
        Ok("auto") => &["auto"],
        _ => &["read-back", "auto"],
    };
    // Run i retires month -6 + i (the retention moves by a month per run).
    for i in 0..modes.len() as i32 {
        fill_partition(&url, &owner, -6 + i, mb).await;
    }
    let part = month_name("audit", -6);
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
    if !pace.is_empty() {
        println!("pace: {}", pace.replace('\n', " "));
    }
    let dir = crate::harness::server_tempdir();
    let mut runs = Vec::new();
    let (mut key, mut path) = (String::new(), std::path::PathBuf::new());
    for (i, mode) in modes.iter().enumerate() {
        let run_dir = dir.path().join(mode);
        must(std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string()));
        path = write_config(
            &run_dir,
            &format!(
                "{}verify = \"{mode}\"\n",
                crate::archive::toml(&url, &endpoint)
                    .replace(
                        "part_size = \"5MB\"\n",
                        &format!("request_timeout = \"300s\"\n{pace}"),
                    )
                    .replace("request_timeout = \"3s\"\n", "")
                    .replace("\"3 months\"", &format!("\"{} months\"", 5 - i))
            ),
        );
        let run = retire(&path, mode);
        key = query(
            &url,
            &format!(
                "SELECT object_key FROM pgsteward.retirements WHERE partition_name = '{}'",
                month_name("audit", -6 + i as i32)
            ),
        )
        .await[0]
            .get(0);
        let bytes = must(
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
        if i == 0 {
            assert_eq!(bytes, floor_bytes, "the same COPY text");
        }
        runs.push((run, bytes));
    }
    let ours_bytes = runs.first().map_or(0, |r| r.1);

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
    for (run, bytes) in &runs {
        let f = floor.as_secs_f64();
        println!(
            "| verify = \"{}\": pgsteward upload (COPY → multipart, SHA-256, part MD5s) | {:.1} | {} | | {:.2}x |",
            run.mode,
            run.upload_s,
            mib_s(*bytes, Duration::from_secs_f64(run.upload_s.max(1e-3))),
            run.upload_s / f
        );
        println!(
            "| verify = \"{}\": verification ({}) | {:.1} | | | |",
            run.mode, run.by, run.verify_s
        );
        println!(
            "| verify = \"{}\": pgsteward whole retirement (detach, upload, verify, count, drop) | {:.1} | {} | {} MiB | {:.2}x |",
            run.mode,
            run.total.as_secs_f64(),
            mib_s(*bytes, run.total),
            run.peak_kb >> 10,
            run.total.as_secs_f64() / f
        );
    }
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

/// One `partitions apply` that retires one big partition.
struct Run {
    mode: String,
    total: Duration,
    peak_kb: u64,
    upload_s: f64,
    verify_s: f64,
    /// `etag` or `read-back`, as the retirement logged it.
    by: String,
}

/// `partitions apply` under `path`, timed, with the upload's and the
/// verification's own seconds from its JSON log.
fn retire(path: &std::path::Path, mode: &str) -> Run {
    let (total, peak_kb, out) = timed(
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
    let events = |msg: &str| -> Vec<serde_json::Value> {
        logs.lines()
            .filter(|l| l.contains(msg))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect()
    };
    let seconds = |v: &serde_json::Value| {
        v["seconds"]
            .as_str()
            .or(v["fields"]["seconds"].as_str())
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let verified = events("archive verified");
    Run {
        mode: mode.to_string(),
        total,
        peak_kb,
        upload_s: events("archive uploaded").iter().map(seconds).sum(),
        verify_s: verified.iter().map(seconds).sum(),
        by: verified
            .iter()
            .filter_map(|v| v["by"].as_str().or(v["fields"]["by"].as_str()))
            .max_by_key(|b| *b == "read-back")
            .unwrap_or("?")
            .to_string(),
    }
}

/// Fills the partition of month `month` (from now) of `audit` until it
/// takes `mb` MiB on disk, then vacuums it.
async fn fill_partition(url: &str, owner: &tokio_postgres::Client, month: i32, mb: u64) {
    let part = month_name("audit", month);
    let fill = format!(
        "INSERT INTO audit (at, amount, tags, payload) SELECT timestamptz '{}' + (g % 2000000) * interval '1 second', \
         g / 100.0, ARRAY['a', g::text], repeat(md5(g::text), 5) FROM generate_series($1::int8, $2::int8) g",
        month_start(month)
    );
    let mut next = 0i64;
    loop {
        let size: i64 = query(url, &format!("SELECT pg_relation_size('{part}')")).await[0].get(0);
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
