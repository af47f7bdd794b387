//! Replication slots across the upgrade (issue 21): a CDC consumer
//! (`pg_recvlogical`, test_decoding) and a logical subscriber (pgoutput) on
//! the primary refuse the upgrade, naming each slot, before anything changes;
//! on PostgreSQL 17+ with failover slots both are carried and receive every
//! acknowledged change exactly once; a physical slot is on the new primary
//! when it serves.

use super::*;
use crate::logical::{assert_cdc_matches, assert_subscriber_matches, Cdc, Subscriber};

const LEDGER_IDS: &str = "SELECT id FROM ledger ORDER BY id";
const LEDGER_TEXTS: &str = "SELECT id::text FROM ledger ORDER BY id";

/// Every file name under the local provider's data root (new servers).
fn new_servers(t: &Topology) -> Vec<String> {
    std::fs::read_dir(t.dir().join("clusters"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Slot names on `url`'s server, in order.
async fn slot_names(url: &str) -> Vec<String> {
    crate::logical::texts(
        url,
        "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1",
    )
    .await
}

/// A subscriber and a CDC consumer on the primary, a writer through
/// PgBouncer: `upgrade plan` fails naming both slots (plugin, database,
/// consumer, the fix); `upgrade start` refuses with the same lines and
/// changes nothing (no new server, no journal step past precheck, no
/// PgBouncer pause, pg_hba.conf and slots as they were); both consumers
/// then hold every acknowledged row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_consumers_refuse_the_upgrade_before_anything_changes() {
    let t = Topology::new();
    let super_app = crate::partitions::as_super(&t.primary_url);
    must(
        t.cluster
            .primary
            .psql("app", "CREATE PUBLICATION ledger_pub FOR TABLE ledger"),
    );
    let sub = Subscriber::create(
        &t.primary_url,
        "ledger_pub",
        pgsteward::workload::LEDGER_TABLE,
    );
    let mut cdc = Cdc::start(&t.primary_url).await;
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(3),
        Duration::from_secs(120),
    );
    load.wait_progress(50).await;
    let slots_before = slot_names(&super_app).await;
    assert_eq!(slots_before.len(), 2, "{slots_before:?}");
    let hba = t.cluster.primary.data_dir.join("pg_hba.conf");
    let hba_before = must(std::fs::read_to_string(&hba).map_err(|e| e.to_string()));

    let plan = t.pgsteward(&["upgrade", "plan", "--target-class", t.next_class()], None);
    let plan_text = text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{plan_text}");
    let start = t.upgrade(None);
    let start_text = text(&start);
    assert_eq!(start.status.code(), Some(1), "{start_text}");
    let major = harness::server_major();
    for out in [&plan_text, &start_text] {
        for slot in &slots_before {
            let line = out
                .lines()
                .find(|l| l.contains(&format!("replication slot {slot}")))
                .unwrap_or_else(|| panic!("{slot} not named:\n{out}"));
            for want in [
                "logical, plugin ",
                "database app",
                "confirmed_flush ",
                "resync",
            ] {
                assert!(line.contains(want), "{want}: {line}");
            }
            assert!(!line.contains("[ok]"), "{line}");
            if major < 17 {
                assert!(line.contains("before PostgreSQL 17"), "{line}");
            } else {
                // Slots without failover: only failover slots are carried.
                assert!(line.contains("only failover slots"), "{line}");
            }
        }
        assert!(out.contains("plugin test_decoding"), "{out}");
        assert!(out.contains("plugin pgoutput"), "{out}");
        // The consumers as the primary sees them: the walsenders' names.
        assert!(out.contains("pg_recvlogical at 127.0.0.1"), "{out}");
        assert!(out.contains(&format!("{} at 127.0.0.1", sub.name)), "{out}");
    }

    // Nothing changed: no new server, PgBouncer not paused and still on the
    // old primary, the old primary unfenced, the slots as they were.
    assert!(new_servers(&t).is_empty(), "{:?}", new_servers(&t));
    let hba_after = must(std::fs::read_to_string(&hba).map_err(|e| e.to_string()));
    assert_eq!(hba_before, hba_after, "pg_hba.conf changed");
    assert_eq!(slot_names(&super_app).await, slots_before);
    let admin = harness::connect(&t.pooler.admin_url()).await;
    let rows = admin.simple_query("SHOW DATABASES").await.unwrap();
    let port = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("app") => {
            r.get(2).map(str::to_string)
        }
        _ => None,
    });
    assert_eq!(port, Some(t.cluster.primary.port.to_string()));
    if let Ok(Some(p)) = pgsteward::upgrade::journal::latest(&t.state_dir()) {
        let rec = must(pgsteward::upgrade::journal::read(&p).map_err(|e| e.to_string()));
        assert!(
            rec.step(pgsteward::upgrade::record::Step::CreateReplica)
                .started_at
                .is_none(),
            "{rec:?}"
        );
    }

    load.wait_progress(50).await;
    load.finish_clean(&t).await;
    assert_subscriber_matches(&super_app, LEDGER_TEXTS, &sub, LEDGER_TEXTS, "subscriber").await;
    assert_cdc_matches(&mut cdc, "public.ledger", &super_app, LEDGER_IDS, "CDC").await;
}

/// PostgreSQL 17+: a subscription made with `failover = true` and a CDC
/// consumer on a failover slot, a writer through PgBouncer recording every
/// acknowledged commit. The plan carries both slots; the upgrade completes
/// with 0 client errors; both consumers, repointed to the new primary (as
/// an operator would), end with every acknowledged row exactly once (the
/// CDC stream fails on a row inserted twice, the subscriber on a duplicate
/// key), and the new server's standby slot on the old primary is this
/// upgrade's own. Before 17 the same slots refuse the upgrade (the plan).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_slots_are_carried_and_consumers_miss_and_repeat_nothing() {
    carry_case(None).await;
}

/// The same, with the runner killed (SIGKILL) at each boundary of
/// `carry_slots` and the upgrade finished by `upgrade resume`: the advance
/// runs once the consumers settle, whichever process does it; nothing is
/// missed or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_around_the_slot_carry_then_resumed_consumers_miss_and_repeat_nothing() {
    carry_case(Some("carry_slots-start=kill")).await;
    carry_case(Some("carry_slots-done=kill")).await;
}

async fn carry_case(kill_at: Option<&str>) {
    let mut t = Topology::new();
    let major = harness::server_major();
    let super_app = crate::partitions::as_super(&t.primary_url);
    must(
        t.cluster
            .primary
            .psql("app", "CREATE PUBLICATION ledger_pub FOR TABLE ledger"),
    );
    if major < 17 {
        let _cdc = Cdc::start(&t.primary_url).await;
        let plan = t.pgsteward(&["upgrade", "plan", "--target-class", t.next_class()], None);
        let plan_text = text(&plan);
        assert_eq!(plan.status.code(), Some(1), "{plan_text}");
        assert!(plan_text.contains("before PostgreSQL 17"), "{plan_text}");
        return;
    }
    let sub = Subscriber::create_opts(
        &t.primary_url,
        "ledger_pub",
        pgsteward::workload::LEDGER_TABLE,
        "copy_data = false, failover = true",
    );
    let mut cdc = Cdc::start_with(&t.primary_url, true).await;
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(3),
        Duration::from_secs(180),
    );
    load.wait_progress(50).await;

    let plan = t.pgsteward(&["upgrade", "plan", "--target-class", t.next_class()], None);
    let plan_text = text(&plan);
    assert!(plan.status.success(), "{plan_text}");
    for slot in slot_names(&super_app).await {
        let line = plan_text
            .lines()
            .find(|l| l.contains(&format!("replication slot {slot}")))
            .unwrap_or_else(|| panic!("{slot} not named:\n{plan_text}"));
        assert!(line.contains("synchronized to the new server"), "{line}");
    }
    assert!(plan_text.contains("carry_slots"), "{plan_text}");

    let out = match kill_at {
        None => t.upgrade(None),
        Some(fp) => {
            let killed = t.upgrade(Some(fp));
            assert!(
                killed.status.code().is_none(),
                "{fp}: expected SIGKILL\n{}",
                text(&killed)
            );
            t.check_one_writable_or_paused(fp).await;
            t.pgsteward(&["upgrade", "resume"], None)
        }
    };
    let out_text = text(&out);
    if !out.status.success() {
        let logs = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("grep -h -i -E \"slot|sync|FATAL|ERROR|LOG\" {}/clusters/*.log | tail -n 40; grep -h -E \"primary_|sync|feedback\" {}/clusters/*/postgresql.auto.conf {}/clusters/*/pgsteward.conf", t.dir().display(), t.dir().display(), t.dir().display()))
            .output();
        panic!(
            "{out_text}\n{}",
            logs.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        );
    }
    let rec = latest_record(&t.state_dir());
    let carried = rec
        .step(pgsteward::upgrade::record::Step::CarrySlots)
        .output
        .note
        .clone()
        .unwrap_or_default();
    assert!(carried.contains(&sub.name), "{carried}");
    assert!(!carried.contains("did not settle"), "{carried}");
    assert!(!carried.contains("left at its synchronized"), "{carried}");
    t.follow_upgrade();
    load.wait_progress(50).await;

    // The consumers move to the new primary, as their operators would.
    let new_super = crate::partitions::as_super(&t.primary_url);
    sub.repoint(&t.primary_url);
    cdc.reconnect(&t.primary_url);
    sub.forget_errors_once_streaming(&new_super).await;
    load.wait_progress(30).await;
    load.finish_clean(&t).await;
    println!("carry_slots: {carried}");
    assert_subscriber_matches(&new_super, LEDGER_TEXTS, &sub, LEDGER_TEXTS, "subscriber").await;
    assert_cdc_matches(&mut cdc, "public.ledger", &new_super, LEDGER_IDS, "CDC").await;
}

/// `pg_receivewal` streaming through physical slot `slot` of the server at
/// `port` (as the superuser, a test fixture), reporting every second.
struct ReceiveWal {
    child: std::process::Child,
    /// Where it writes the WAL; removed with it.
    _dir: tempfile::TempDir,
}

impl ReceiveWal {
    fn start(port: u16, slot: &str) -> ReceiveWal {
        let dir = must(tempfile::tempdir().map_err(|e| e.to_string()));
        let program = harness::bin_dir()
            .map(|d| d.join("pg_receivewal"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| {
                must(pgsteward::localpg::find_program(
                    "pg_receivewal",
                    harness::bin_dir(),
                ))
            });
        let child = must(
            Command::new(program)
                .args([
                    "-d",
                    &format!("host=127.0.0.1 port={port} user={}", harness::SUPER_USER),
                    "-S",
                    slot,
                    "-s",
                    "1",
                    "-n",
                    "-D",
                ])
                .arg(dir.path())
                .env("PGPASSFILE", harness::passfile())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("pg_receivewal: {e}")),
        );
        ReceiveWal { child, _dir: dir }
    }
}

impl Drop for ReceiveWal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A physical slot streamed from by `pg_receivewal` is made on the new
/// server before the pause, so its user finds it (and the WAL it asks for)
/// on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_physical_slot_is_on_the_new_primary() {
    let mut t = Topology::new();
    must(t.cluster.primary.psql(
        "postgres",
        "SELECT pg_create_physical_replication_slot('standby_b', true)",
    ));
    let _receiver = ReceiveWal::start(t.cluster.primary.port, "standby_b");
    let super_postgres =
        crate::partitions::as_super(&harness::steward_url(&t.cluster.primary, "postgres"));
    let t0 = Instant::now();
    while harness::query(
        &super_postgres,
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'standby_b' AND active",
    )
    .await
    .is_empty()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "pg_receivewal never streamed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let load = Load::start(
        &t.pooler_url(),
        2,
        Duration::from_millis(4),
        Duration::from_secs(120),
    );
    load.wait_progress(30).await;
    let plan = t.pgsteward(&["upgrade", "plan", "--target-class", t.next_class()], None);
    let plan_text = text(&plan);
    assert!(plan.status.success(), "{plan_text}");
    assert!(
        plan_text.contains("replication slot standby_b: physical"),
        "{plan_text}"
    );
    let out = t.upgrade(None);
    assert!(out.status.success(), "{}", text(&out));
    t.follow_upgrade();
    load.wait_progress(30).await;
    load.finish_clean(&t).await;
    let new_super = crate::partitions::as_super(&t.primary_url);
    let rows = harness::query(
        &new_super,
        "SELECT slot_type, restart_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = 'standby_b'",
    )
    .await;
    assert_eq!(rows.len(), 1, "standby_b is not on the new primary");
    assert_eq!(rows[0].get::<_, String>(0), "physical");
    assert!(rows[0].get::<_, bool>(1), "standby_b reserves no WAL there");
}

/// A roll back keeps the new server for a retry, and with it its slot on
/// the primary (PostgreSQL 17+, a failover slot to carry); `upgrade abort`
/// deletes the server and drops that slot, which would otherwise keep WAL
/// on the primary forever. The consumer's own slot stays. Before 17 no such
/// slot is ever made (nothing to carry): the same abort leaves none either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_drops_the_new_servers_slot_on_the_primary() {
    let t = Topology::new();
    let major = harness::server_major();
    let super_postgres =
        crate::partitions::as_super(&harness::steward_url(&t.cluster.primary, "postgres"));
    let own_slots = || async {
        crate::logical::texts(
            &super_postgres,
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE 'pgsteward%' ORDER BY 1",
        )
        .await
    };
    let _cdc = if major >= 17 {
        Some(Cdc::start_with(&t.primary_url, true).await)
    } else {
        None
    };
    let load = Load::start(
        &t.pooler_url(),
        2,
        Duration::from_millis(4),
        Duration::from_secs(120),
    );
    load.wait_progress(30).await;
    let out = t.upgrade(Some("final_sync-done=error"));
    if major < 17 {
        // The failover-less slot refuses before anything is made.
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(own_slots().await.is_empty());
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rolled back"),
        "{}",
        text(&out)
    );
    let kept = own_slots().await;
    assert_eq!(
        kept.len(),
        1,
        "the new server's slot, kept for a retry: {kept:?}"
    );
    let abort = t.pgsteward(&["upgrade", "abort"], None);
    assert!(abort.status.success(), "{}", text(&abort));
    assert!(
        own_slots().await.is_empty(),
        "left: {:?}",
        own_slots().await
    );
    let consumers = crate::logical::texts(
        &super_postgres,
        "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE 'cdc%'",
    )
    .await;
    assert_eq!(
        consumers.len(),
        1,
        "the consumer's slot stays: {consumers:?}"
    );
    load.wait_progress(20).await;
    load.finish_clean(&t).await;
}
