//! `retention_mode = "archive"` against real servers: PostgreSQL (the
//! steward least-privileged, tables owned by `app_owner`) and moto's S3
//! server on loopback, with a fault proxy in between where a test needs the
//! store to fail, hang or be watched.
//!
//! Why moto and not MinIO: no registry this project builds from ships a
//! MinIO server (it is a Go program under the AGPL, published as binaries
//! and containers), while moto is already installed for the RDS tests and
//! implements the multipart API, HEAD, ranged GETs and listings. The one
//! MinIO behaviour that matters here, refusing the SDKs' default aws-chunked
//! checksum trailers, is checked on the wire by the proxy instead: no request
//! pgsteward sends carries them.

use std::time::Duration;

use pgsteward::config::{self, Cluster};
use pgsteward::partitions::{self, PassReport};
use tokio_util::sync::CancellationToken;

use crate::harness::{self, as_owner, as_steward, connect, must, query};
use crate::moto::Moto;

mod crashes;
mod faults;
mod logical;
mod migration;
pub mod proxy;
mod published;
mod roundtrip;
mod verify;

pub const BUCKET: &str = "pgsteward-archive";
pub const KEY: &str = "testing";

/// The AWS chain pgsteward uses finds these (in-process passes and the
/// binary alike): static test credentials, never in a config file.
pub fn credentials_in_env() {
    std::env::set_var("AWS_ACCESS_KEY_ID", KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", KEY);
    std::env::set_var("AWS_REGION", "us-east-1");
    // Never read a developer's profile or reach a metadata endpoint.
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_CONFIG_FILE", "/dev/null");
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
}

/// moto's S3 with the test bucket made.
pub struct S3 {
    pub moto: Moto,
}

impl S3 {
    pub async fn start() -> S3 {
        credentials_in_env();
        let s3 = S3 {
            moto: Moto::start(),
        };
        must(
            s3.client()
                .await
                .create_bucket()
                .bucket(BUCKET)
                .send()
                .await
                .map_err(|e| format!("{e:?}")),
        );
        s3
    }

    pub fn url(&self) -> String {
        self.moto.url()
    }

    /// A plain SDK client for checking what pgsteward wrote.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(self.url())
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                KEY, KEY, None, None, "test",
            ))
            .load()
            .await;
        let conf = aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Every key in the bucket.
    pub async fn keys(&self) -> Vec<String> {
        let out = must(
            self.client()
                .await
                .list_objects_v2()
                .bucket(BUCKET)
                .send()
                .await
                .map_err(|e| format!("{e:?}")),
        );
        let mut keys: Vec<String> = out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect();
        keys.sort();
        keys
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub async fn open_uploads(&self) -> usize {
        let out = must(
            self.client()
                .await
                .list_multipart_uploads()
                .bucket(BUCKET)
                .send()
                .await
                .map_err(|e| format!("{e:?}")),
        );
        out.uploads().len()
    }
}

/// `[archive]` pointing at `endpoint`, with short timeouts for the tests.
pub fn archive_toml(endpoint: &str) -> String {
    format!(
        "[archive]\nurl = \"s3://{BUCKET}/pg/\"\nendpoint_url = \"{endpoint}\"\nforce_path_style = true\n\
         region = \"us-east-1\"\nrequest_timeout = \"3s\"\nconnect_timeout = \"1s\"\npart_size = \"5MB\"\n"
    )
}

/// The steward's configuration: `audit` monthly, 3 months kept, archived.
pub fn toml(url: &str, endpoint: &str) -> String {
    format!(
        "[database]\nprimary = \"{}\"\n\n[partitions]\nlock_timeout = \"500ms\"\n\
         [[partitions.tables]]\ntable = \"public.audit\"\npremake = 1\nretention = \"3 months\"\n\
         retention_mode = \"archive\"\n\n{}",
        as_steward(url),
        archive_toml(endpoint)
    )
}

pub fn config_of(toml: &str) -> Cluster {
    must(config::from_figment(
        figment::Figment::new()
            .merge(<figment::providers::Toml as figment::providers::Format>::string(toml)),
        None,
    ))
    .cluster
}

pub async fn pass(cfg: &Cluster) -> PassReport {
    must(partitions::run_pass(cfg, &CancellationToken::new()).await)
}

/// Hostile column types, owned by `app_owner`, months -6..=1 partitioned,
/// rows in months `-6..=-4` (past retention) and `-1..=0`.
pub const HOSTILE: &str = "CREATE TABLE audit (\
    id bigint GENERATED ALWAYS AS IDENTITY, \
    at timestamptz NOT NULL, \
    amount numeric(30,10), big numeric, f8 double precision, f4 real, \
    tags text[], grid int[][], doc jsonb, blob bytea, \
    local_ts timestamp, seen timestamptz, day date, dur interval, note text, \
    total numeric GENERATED ALWAYS AS (amount * 2) STORED, \
    PRIMARY KEY (id, at)) PARTITION BY RANGE (at)";

/// `n` rows of every kind in the month `months_from_now` away, written in
/// three session time zones.
pub fn hostile_rows(months_from_now: i32, n: u32) -> String {
    let start = crate::partitions::month_start(months_from_now);
    let mut sql = String::new();
    for (i, zone) in ["UTC", "America/New_York", "Asia/Kolkata"]
        .iter()
        .enumerate()
    {
        sql.push_str(&format!(
            "SET TimeZone = '{zone}'; \
             INSERT INTO audit (at, amount, big, f8, f4, tags, grid, doc, blob, local_ts, seen, day, dur, note) \
             SELECT timestamp '{start}' + interval '2 days' + g * interval '37 minutes' + interval '{i} hours', \
               CASE WHEN g % 7 = 0 THEN NULL ELSE g * 1.0000000001 - 0.5 END, \
               CASE g % 4 WHEN 0 THEN 'NaN'::numeric WHEN 1 THEN 1e40::numeric + g ELSE -g / 3.0::numeric(40,30) END, \
               CASE g % 5 WHEN 0 THEN 'NaN' WHEN 1 THEN '-Infinity' WHEN 2 THEN 0.1 + g ELSE 1.0 / (g + 3) END, \
               (g / 7.0)::real, \
               ARRAY['a\"b', NULL, E'tab\\there', 'back\\\\slash', '{{brace}}', 'ünïcødé ☃', ''], \
               ARRAY[[g, NULL], [3, 4]], \
               jsonb_build_object('g', g, 'nested', jsonb_build_array(1.5, 'x', NULL, jsonb_build_object('k', E'line\\nbreak'))), \
               CASE WHEN g % 3 = 0 THEN NULL ELSE decode(md5(g::text) || '00ff', 'hex') END, \
               timestamp '{start}' + g * interval '1 second', \
               CASE g % 3 WHEN 0 THEN 'infinity'::timestamptz WHEN 1 THEN NULL ELSE now() END, \
               date '{start}' + g, \
               make_interval(months => g % 13, days => g, secs => g / 7.0), \
               CASE WHEN g % 2 = 0 THEN E'multi\\nline\\r\\n\\\\N not null' ELSE NULL END \
             FROM generate_series(1, {n}) g;"
        ));
    }
    sql
}

/// Makes `audit` (as `app_owner`) with partitions for months -6..=1 and
/// hostile rows; returns the superuser URL's database ready for the steward.
pub async fn hostile_table(url: &str, rows_per_month: u32) {
    let mut sql = String::from(HOSTILE);
    sql.push(';');
    for i in -6..=1 {
        sql.push_str(&format!(
            "CREATE TABLE {} PARTITION OF audit FOR VALUES FROM ('{}') TO ('{}');",
            crate::partitions::month_name("audit", i),
            crate::partitions::month_start(i),
            crate::partitions::month_start(i + 1)
        ));
    }
    for i in [-6, -5, -4, -1, 0] {
        sql.push_str(&hostile_rows(i, rows_per_month));
    }
    // Row-level security forced on the old partitions, as pgsteward makes
    // partitions of a parent that forces it, with a policy that shows the
    // owner nothing: an archive must still hold every row.
    for i in [-6, -5, -4] {
        let p = crate::partitions::month_name("audit", i);
        sql.push_str(&format!(
            "ALTER TABLE {p} ENABLE ROW LEVEL SECURITY; ALTER TABLE {p} FORCE ROW LEVEL SECURITY; \
             CREATE POLICY nobody ON {p} USING (false);"
        ));
    }
    let owner = connect(&as_owner(url)).await;
    if let Err(e) = owner
        .batch_execute(&format!("SET TimeZone = 'UTC'; {sql}"))
        .await
    {
        panic!("hostile table: {}", pgsteward::pg::server_message(&e));
    }
}

/// Every row of `relation` as text, ordered by id, in a session with the
/// exact settings (so two tables compare value by value).
pub async fn rows_of(url: &str, relation: &str) -> Vec<String> {
    let client = connect(url).await;
    must(
        client
            .batch_execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'")
            .await
            .map_err(|e| e.to_string()),
    );
    must(
        client
            .query(
                &format!("SELECT t::text FROM {relation} t ORDER BY id"),
                &[],
            )
            .await
            .map_err(|e| pgsteward::pg::server_message(&e)),
    )
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The states of every retirement, oldest first: `(partition, state)`.
pub async fn states(url: &str) -> Vec<(String, String)> {
    query(
        url,
        "SELECT partition_name, state FROM pgsteward.retirements ORDER BY id",
    )
    .await
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

pub async fn exists(url: &str, relation: &str) -> bool {
    query(
        url,
        &format!("SELECT to_regclass('{relation}') IS NOT NULL"),
    )
    .await[0]
        .get(0)
}

/// The pgsteward binary with the test's AWS credentials.
pub fn pgsteward() -> std::process::Command {
    let mut cmd = harness::pgsteward();
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", KEY),
        ("AWS_SECRET_ACCESS_KEY", KEY),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ] {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the binary with a deadline (a hung child fails the test, never the suite).
pub fn run(cmd: &mut std::process::Command, limit: Duration) -> std::process::Output {
    let child = must(
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string()),
    );
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => must(out.map_err(|e| e.to_string())),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::SIGKILL,
            );
            panic!("pgsteward did not finish within {limit:?}");
        }
    }
}
