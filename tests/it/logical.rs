//! Logical replication as the application's consumers see it: a subscriber
//! (a second server with `CREATE SUBSCRIPTION`, pgoutput) and a CDC consumer
//! (`pg_recvlogical` with test_decoding), each compared row by row with the
//! publisher after pgsteward moved rows. Subscriptions and slots are test
//! fixtures, made as the superuser; pgsteward itself stays the steward.
//!
//! Every publisher of the harness runs with `wal_level = logical`
//! (`harness::test_settings`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgsteward::localpg::{self, Cluster, StopMode};

use crate::harness::{self, must, query};

/// How long a consumer may take to catch up before the test fails with
/// what it saw.
const CATCH_UP: Duration = Duration::from_secs(30);

/// The subscriber server, shared by every test of this process (each test
/// subscribes from a database of its own).
pub fn subscriber_server() -> &'static Cluster {
    static SERVER: OnceLock<(Cluster, PathBuf)> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let dir =
                std::env::temp_dir().join(format!("pgsteward-subscriber-{}", std::process::id()));
            must(localpg::make_server_dir(
                &dir,
                must(localpg::ServerUser::detect()),
            ));
            let cluster = harness::new_primary(&dir, "subscriber");
            harness::remove_when_gone(&dir);
            // One apply worker per subscription; several tests subscribe at once.
            must(cluster.psql(
                "postgres",
                "ALTER SYSTEM SET max_logical_replication_workers = 16",
            ));
            must(cluster.psql("postgres", "ALTER SYSTEM SET max_worker_processes = 32"));
            must(cluster.stop(StopMode::Fast));
            must(cluster.start());
            (cluster, dir)
        })
        .0
}

pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The database name and port of a harness URL.
pub fn db_and_port(url: &str) -> (String, u16) {
    let u = must(url::Url::parse(url).map_err(|e| e.to_string()));
    (
        u.path().trim_start_matches('/').to_string(),
        u.port().unwrap_or(5432),
    )
}

/// A subscription on the subscriber server to `publication` of the database
/// `pub_url` names, into tables made by `ddl` (run on the subscriber first).
/// Rows are not copied initially: subscribe before writing the rows.
pub struct Subscriber {
    pub db: String,
    pub name: String,
}

/// A conninfo the subscriber server uses to reach the publisher of `pub_url`
/// as the superuser (a test fixture).
fn publisher_conninfo(pub_url: &str) -> String {
    let (pub_db, port) = db_and_port(pub_url);
    // A conninfo value: quoted, with `\` and `'` escaped by a backslash.
    let password = harness::SUPER_PASSWORD
        .replace('\\', "\\\\")
        .replace('\'', "\\'");
    format!(
        "host=127.0.0.1 port={port} dbname={pub_db} user={} password='{password}'",
        harness::SUPER_USER
    )
}

impl Subscriber {
    pub fn create(pub_url: &str, publication: &str, ddl: &str) -> Subscriber {
        Subscriber::create_with(pub_url, publication, ddl, false)
    }

    /// As [`Subscriber::create`]; with `copy_data` the rows present are
    /// copied first (the subscription then starts where the copy ended).
    pub fn create_with(pub_url: &str, publication: &str, ddl: &str, copy_data: bool) -> Subscriber {
        Subscriber::create_opts(
            pub_url,
            publication,
            ddl,
            &format!("copy_data = {copy_data}"),
        )
    }

    /// With the subscription's options spelled out (`WITH (<with>)`).
    pub fn create_opts(pub_url: &str, publication: &str, ddl: &str, with: &str) -> Subscriber {
        let server = subscriber_server();
        let db = unique("sub");
        let name = unique("s");
        must(server.psql("postgres", &format!("CREATE DATABASE {db}")));
        must(server.psql(&db, ddl));
        let conn = publisher_conninfo(pub_url);
        must(server.psql_secret(
            &db,
            &format!(
                "CREATE SUBSCRIPTION {name} CONNECTION {} PUBLICATION {publication} WITH ({with})",
                pgsteward::pg::quote_literal(&conn)
            ),
        ));
        Subscriber { db, name }
    }

    /// Points the subscription at another publisher server (what an
    /// operator does after the primary moved; the slot must be there).
    pub fn repoint(&self, pub_url: &str) {
        let conn = publisher_conninfo(pub_url);
        must(subscriber_server().psql_secret(
            &self.db,
            &format!(
                "ALTER SUBSCRIPTION {} CONNECTION {}",
                self.name,
                pgsteward::pg::quote_literal(&conn)
            ),
        ));
    }

    pub fn url(&self) -> String {
        subscriber_server().url(&self.db)
    }

    /// After [`Subscriber::repoint`]: waits until the publisher of
    /// `pub_super_url` streams to the subscription, then zeroes its error
    /// counters: the failed connections to the retired server are counted
    /// as apply errors, and only errors from here on are about the rows.
    pub async fn forget_errors_once_streaming(&self, pub_super_url: &str) {
        let t0 = Instant::now();
        while query(
            pub_super_url,
            &format!(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = '{}' AND active",
                self.name
            ),
        )
        .await
        .is_empty()
        {
            assert!(
                t0.elapsed() < CATCH_UP,
                "subscription {} never streamed from the new publisher",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if harness::server_major() >= 15 {
            query(
                &self.url(),
                &format!(
                    "SELECT pg_stat_reset_subscription_stats(oid) FROM pg_subscription WHERE subname = '{}'",
                    self.name
                ),
            )
            .await;
        }
    }

    /// Apply errors the subscriber counted (PostgreSQL 15+; 0 before).
    pub async fn apply_errors(&self) -> i64 {
        if harness::server_major() < 15 {
            return 0;
        }
        let rows = query(
            &self.url(),
            &format!(
                "SELECT coalesce((SELECT apply_error_count FROM pg_stat_subscription_stats WHERE subname = '{}'), 0)",
                self.name
            ),
        )
        .await;
        rows[0].get(0)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let server = subscriber_server();
        // Drops the publisher's slot too; a failure only leaves a test fixture.
        let _ = server.psql(
            &self.db,
            &format!("DROP SUBSCRIPTION IF EXISTS {}", self.name),
        );
        let _ = server.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db),
        );
    }
}

/// `pg_recvlogical` with test_decoding on the publisher's database: every
/// change, under the name of the relation it was made in.
pub struct Cdc {
    child: Child,
    file: PathBuf,
    _dir: tempfile::TempDir,
    slot: String,
    pub_url: String,
    markers: u32,
}

/// The program: the server's own, else Debian's PostgreSQL 15 one (a client;
/// it reads other majors).
fn recvlogical() -> PathBuf {
    let own = harness::bin_dir().map(|d| d.join("pg_recvlogical"));
    if let Some(p) = own.filter(|p| p.is_file()) {
        return p;
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin/pg_recvlogical");
    if debian.is_file() {
        return debian;
    }
    must(localpg::find_program("pg_recvlogical", harness::bin_dir()))
}

impl Cdc {
    pub async fn start(pub_url: &str) -> Cdc {
        Cdc::start_with(pub_url, false).await
    }

    /// `failover`: the slot is a PostgreSQL 17+ failover slot.
    pub async fn start_with(pub_url: &str, failover: bool) -> Cdc {
        let slot = unique("cdc");
        let super_url = crate::partitions::as_super(pub_url);
        let make = if failover {
            format!("SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding', false, false, true)")
        } else {
            format!("SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')")
        };
        query(&super_url, &make).await;
        let dir = must(tempfile::tempdir().map_err(|e| e.to_string()));
        let file = dir.path().join("changes.txt");
        let child = Cdc::spawn(pub_url, &slot, &file);
        Cdc {
            child,
            file,
            _dir: dir,
            slot,
            pub_url: super_url,
            markers: 0,
        }
    }

    /// Stops the consumer and starts it again on the server of `pub_url`,
    /// from the slot's position there, appending to the same stream (what
    /// a CDC consumer does when its database moved).
    pub fn reconnect(&mut self, pub_url: &str) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Cdc::spawn(pub_url, &self.slot, &self.file);
        self.pub_url = crate::partitions::as_super(pub_url);
    }

    fn spawn(pub_url: &str, slot: &str, file: &std::path::Path) -> Child {
        let (db, port) = db_and_port(pub_url);
        must(
            Command::new(recvlogical())
                .args([
                    "-d",
                    &format!(
                        "host=127.0.0.1 port={port} dbname={db} user={}",
                        harness::SUPER_USER
                    ),
                    "-S",
                    slot,
                    "--start",
                    "-F",
                    "0",
                    "-s",
                    "1",
                    "-o",
                    "skip-empty-xacts=1",
                    "-f",
                ])
                .arg(file)
                .env("PGPASSFILE", harness::passfile())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("pg_recvlogical: {e}")),
        )
    }

    /// Every row id of tables whose name starts with `prefix`, replayed from
    /// the stream up to now: id → how many times it is present (1 for each
    /// row; 0 rows are left out). Fails on a DELETE of a row never seen or
    /// an INSERT of a row present.
    pub async fn rows(&mut self, prefix: &str) -> BTreeMap<i64, i64> {
        let mut rows: BTreeMap<i64, i64> = BTreeMap::new();
        for (id, sign, line) in self.changes(prefix).await {
            let n = rows.entry(id).or_default();
            *n += sign;
            assert!(
                (0..=1).contains(n),
                "CDC consumer: {line} leaves row {id} present {n} times"
            );
        }
        rows.retain(|_, n| *n > 0);
        rows
    }

    /// The INSERTs (+1) and DELETEs (-1) of tables whose name starts with
    /// `prefix`, in stream order up to now (a marker this call emits), each
    /// with its row id and the line it was read from.
    pub async fn changes(&mut self, prefix: &str) -> Vec<(i64, i64, String)> {
        self.changes_of(|rel| rel.starts_with(prefix)).await
    }

    /// As [`Cdc::changes`], of the tables (`schema.name`) `keep` accepts.
    pub async fn changes_of(&mut self, keep: impl Fn(&str) -> bool) -> Vec<(i64, i64, String)> {
        self.markers += 1;
        let marker = format!("pgsteward-marker-{}-{}", self.slot, self.markers);
        query(
            &self.pub_url,
            &format!("SELECT pg_logical_emit_message(true, 'pgsteward-test', '{marker}')"),
        )
        .await;
        let t0 = Instant::now();
        let text = loop {
            let text = std::fs::read_to_string(&self.file).unwrap_or_default();
            if text.contains(&marker) {
                break text;
            }
            if t0.elapsed() > CATCH_UP {
                panic!(
                    "pg_recvlogical did not deliver the marker within {CATCH_UP:?}; it wrote:\n{text}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut out = Vec::new();
        for line in text.lines() {
            let Some((rel, rest)) = line.strip_prefix("table ").and_then(|l| l.split_once(": "))
            else {
                continue;
            };
            if !keep(rel) {
                continue;
            }
            let sign = if rest.starts_with("INSERT: ") {
                1
            } else if rest.starts_with("DELETE: ") {
                -1
            } else {
                continue;
            };
            // The `id` column, of any integer type: ` id[bigint]:7 ` or ` id[integer]:7`.
            let id: i64 = rest
                .split(" id[")
                .nth(1)
                .and_then(|v| v.split_once("]:"))
                .and_then(|(_, v)| v.split(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no id in {line}"));
            out.push((id, sign, line.to_string()));
        }
        out
    }
}

impl Drop for Cdc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let slot = self.slot.clone();
        let url = self.pub_url.clone();
        // A blocking connection in Drop: the slot would hold WAL on the shared server.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(spec) = pgsteward::pg::ConnSpec::parse_with(&url, &harness::pg_env()) {
                        if let Ok(c) = spec.connect(Duration::from_secs(5)).await {
                            for _ in 0..50 {
                                let r = c
                                    .query(
                                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                                         WHERE slot_name = $1 AND NOT active",
                                        &[&slot],
                                    )
                                    .await;
                                if matches!(r, Ok(ref v) if !v.is_empty()) {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                })
            }
        })
        .join();
    }
}

/// One text per row of `sql` (its first column), in order.
pub async fn texts(url: &str, sql: &str) -> Vec<String> {
    query(url, sql).await.iter().map(|r| r.get(0)).collect()
}

/// Waits until the subscriber's `sub_sql` returns what the publisher's
/// `pub_sql` does (each a list of row texts), and no apply error was
/// counted; fails after [`CATCH_UP`] with both sides' differences.
pub async fn assert_subscriber_matches(
    pub_url: &str,
    pub_sql: &str,
    sub: &Subscriber,
    sub_sql: &str,
    what: &str,
) {
    let want = texts(pub_url, pub_sql).await;
    let t0 = Instant::now();
    loop {
        let got = texts(&sub.url(), sub_sql).await;
        let errors = sub.apply_errors().await;
        if got == want && errors == 0 {
            return;
        }
        if t0.elapsed() > CATCH_UP || errors > 0 {
            let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).take(5).collect();
            let extra: Vec<&String> = got.iter().filter(|g| !want.contains(g)).take(5).collect();
            panic!(
                "{what}: the subscriber has {} rows, the publisher {} ({errors} apply errors); \
                 missing on the subscriber (first 5): {missing:?}; extra there: {extra:?}",
                got.len(),
                want.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The CDC consumer's rows of tables named `prefix*` equal the publisher's
/// ids (`pub_sql` returns one bigint id per row).
pub async fn assert_cdc_matches(
    cdc: &mut Cdc,
    prefix: &str,
    pub_url: &str,
    pub_sql: &str,
    what: &str,
) {
    let want: Vec<i64> = query(pub_url, pub_sql)
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    let got: Vec<i64> = cdc.rows(prefix).await.into_keys().collect();
    if got != want {
        let missing: Vec<&i64> = want.iter().filter(|w| !got.contains(w)).take(5).collect();
        let extra: Vec<&i64> = got.iter().filter(|g| !want.contains(g)).take(5).collect();
        panic!(
            "{what}: the CDC consumer replayed {} rows, the publisher has {}; missing (first 5): {missing:?}; extra: {extra:?}",
            got.len(),
            want.len()
        );
    }
}
