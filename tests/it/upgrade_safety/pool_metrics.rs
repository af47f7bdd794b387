//! The `pgsteward_pgbouncer_*` metrics after scheduled runs of `pgsteward
//! run`'s `pgbouncer` job: three instances behind one name, one of them
//! with a saturated pool, then one of them gone.

use super::members::Fleet;
use super::*;
use crate::service::{metric_with, service_config, wait_for, Service};
use pgsteward::localpg::LocalPgBouncer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_of_every_instance_after_a_scheduled_run() {
    let mut f = Fleet::new("metrics", 3, "5s");
    let busy =
        f.t.poolers()
            .nth(2)
            .map(|p| (p.addr.clone(), harness::app_pooler_url(p, "app")));
    let (busy_addr, url) = busy.expect("three instances");
    // Every server connection of the busy instance's pool (25 + reserve 10)
    // held in a transaction; two clients wait.
    let mut holders = Vec::new();
    for _ in 0..35 {
        let c = harness::connect(&url).await;
        c.simple_query("BEGIN; SELECT 1").await.unwrap();
        holders.push(c);
    }
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let c = harness::connect(&url).await;
        waiters.push(tokio::spawn(async move {
            c.simple_query("SELECT 1").await.map(|_| c)
        }));
    }
    let admin = must(std::fs::read_to_string(&f.t.config).map_err(|e| e.to_string()))
        .lines()
        .find(|l| l.starts_with("admin = "))
        .map(str::to_string)
        .expect("cutover.admin");
    let port = must(pgsteward::localpg::free_port());
    let config = service_config(
        f.t.dir(),
        &f.t.cluster,
        port,
        &format!(
            "\n[cutover]\nkind = \"pgbouncer\"\n{admin}\nconfig_file = \"{}\"\ndatabase = \"app\"\nstats_schedule = \"*/1 * * * * *\"\n",
            f.shared.display()
        ),
    );
    let svc = Service::start(&config, port, f.t.dir().join("service-metrics.log"));
    let label = |addr: &str| format!("instance=\"{addr}:{}\"", f.port);
    let last = std::cell::RefCell::new(String::new());
    let t0 = Instant::now();
    let found = || {
        let (_, body) = svc.get("/metrics")?;
        last.replace(body.clone());
        let up = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
            .iter()
            .all(|a| metric_with(&body, "pgsteward_pgbouncer_up", &label(a)) == Some(1.0));
        let waiting = metric_with(
            &body,
            "pgsteward_pgbouncer_client_waiting_connections",
            &format!("{},database=\"app\"", label(&busy_addr)),
        );
        (up && waiting == Some(2.0)).then_some(body)
    };
    let body = loop {
        if let Some(b) = found() {
            break b;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no metrics of three instances, two clients waiting, after 30 s:\n{}\nlog:\n{}",
            last.borrow()
                .lines()
                .filter(|l| l.contains("pgbouncer") || l.contains("leader"))
                .collect::<Vec<_>>()
                .join("\n"),
            svc.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let busy_app = format!("{},database=\"app\"", label(&busy_addr));
    let maxwait = metric_with(
        &body,
        "pgsteward_pgbouncer_client_maxwait_seconds",
        &busy_app,
    );
    let active = metric_with(
        &body,
        "pgsteward_pgbouncer_server_active_connections",
        &busy_app,
    );
    let pool = metric_with(&body, "pgsteward_pgbouncer_databases_pool_size", &busy_app);
    let max = metric_with(
        &body,
        "pgsteward_pgbouncer_config_max_client_connections",
        &label(&busy_addr),
    );
    let used = metric_with(
        &body,
        "pgsteward_pgbouncer_used_clients",
        &label(&busy_addr),
    );
    println!("busy instance: maxwait {maxwait:?} s, server active {active:?} of pool_size {pool:?}, clients {used:?} of {max:?}");
    assert!(maxwait.is_some_and(|w| w >= 0.0), "{body}");
    assert_eq!(active, Some(35.0), "{body}");
    assert_eq!(pool, Some(25.0), "{body}");
    assert_eq!(max, Some(10000.0), "{body}");
    assert!(used.is_some_and(|u| u >= 37.0), "{body}");
    assert_eq!(
        metric_with(&body, "pgsteward_pgbouncer_databases_paused", &busy_app),
        Some(0.0)
    );
    drop(holders);
    for w in waiters {
        let _ = w.await;
    }
    // One instance gone but still listed by the name: down, the others up.
    let gone: &mut LocalPgBouncer = f.t.more_poolers.last_mut().expect("a third instance");
    let gone_addr = gone.addr.clone();
    gone.stop();
    wait_for(
        Duration::from_secs(30),
        "the stopped instance reported down",
        || {
            let (_, body) = svc.get("/metrics")?;
            (metric_with(&body, "pgsteward_pgbouncer_up", &label(&gone_addr)) == Some(0.0)
                && metric_with(&body, "pgsteward_pgbouncer_up", &label("127.0.0.2")) == Some(1.0))
            .then_some(())
        },
    );
    // It leaves the name: its series disappear at the next run.
    f.name.remove(&gone_addr);
    wait_for(
        Duration::from_secs(30),
        "the instance that left no longer exported",
        || {
            let (_, body) = svc.get("/metrics")?;
            (!body.contains(&label(&gone_addr))).then_some(())
        },
    );
}
