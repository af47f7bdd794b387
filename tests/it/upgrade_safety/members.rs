//! PgBouncer as a Deployment behind a headless Service: three instances on
//! 127.0.0.2–4, one port, one shared `[databases]` file (`%include`), found
//! through one name with three addresses in the system resolver's hosts
//! file. `cutover.admin` names only that name. Clients on every instance
//! record every acknowledged commit and every error.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::*;
use crate::upgrade::Topology;
use pgsteward::localpg::LocalPgBouncer;

/// One name in /etc/hosts, its lines removed when dropped. Each test has a
/// name of its own (pid and tag), so tests running at once do not meet;
/// every edit replaces the file atomically (a concurrent reader sees the
/// old or the new file, never a half-written one).
pub struct HostName {
    pub name: String,
}

static HOSTS: Mutex<()> = Mutex::new(());
const HOSTS_FILE: &str = "/etc/hosts";

fn edit_hosts(f: impl FnOnce(Vec<String>) -> Vec<String>) {
    let _held = HOSTS.lock().unwrap_or_else(|p| p.into_inner());
    let text = must(std::fs::read_to_string(HOSTS_FILE).map_err(|e| e.to_string()));
    let lines = f(text.lines().map(str::to_string).collect());
    let tmp = format!("{HOSTS_FILE}.pgsteward-{}", std::process::id());
    let meta = must(std::fs::metadata(HOSTS_FILE).map_err(|e| e.to_string()));
    must(std::fs::write(&tmp, lines.join("\n") + "\n").map_err(|e| e.to_string()));
    must(std::fs::set_permissions(&tmp, meta.permissions()).map_err(|e| e.to_string()));
    must(std::fs::rename(&tmp, HOSTS_FILE).map_err(|e| {
        format!("{e}: the tests add names to {HOSTS_FILE} (run them as root, or in a container)")
    }));
}

impl HostName {
    pub fn new(tag: &str) -> HostName {
        HostName {
            name: format!("pgb-{tag}-{}.pgsteward.test", std::process::id()),
        }
    }

    /// `addr` is one more address of the name (idempotent).
    pub fn add(&self, addr: &str) {
        assert!(addr.starts_with("127."), "only loopback addresses");
        let line = format!("{addr} {}", self.name);
        edit_hosts(|mut lines| {
            if !lines.contains(&line) {
                lines.push(line);
            }
            lines
        });
    }

    /// `addr` is no longer an address of the name.
    pub fn remove(&self, addr: &str) {
        let line = format!("{addr} {}", self.name);
        edit_hosts(|lines| lines.into_iter().filter(|l| *l != line).collect());
    }
}

impl Drop for HostName {
    fn drop(&mut self) {
        let suffix = format!(" {}", self.name);
        edit_hosts(|lines| {
            lines
                .into_iter()
                .filter(|l| !l.ends_with(&suffix))
                .collect()
        });
    }
}

/// The topology with its PgBouncers replaced by `n` instances on
/// 127.0.0.2, .3, ... sharing `port` and one `[databases]` file, and the
/// config's `cutover.admin` naming them by one name.
pub struct Fleet {
    pub t: Topology,
    pub name: HostName,
    pub shared: PathBuf,
    pub port: u16,
}

impl Fleet {
    pub fn new(tag: &str, n: u8, pause_timeout: &'static str) -> Fleet {
        let mut t = Topology::new();
        t.pause_timeout = pause_timeout;
        let shared = t.dir().join("pgbouncer-databases.ini");
        let entries = format!(
            "[databases]\napp = host=127.0.0.1 port={} dbname=app\n",
            t.cluster.primary.port
        );
        must(std::fs::write(&shared, entries).map_err(|e| e.to_string()));
        let port = must(pgsteward::localpg::free_port());
        let name = HostName::new(tag);
        let mut fleet_poolers: Vec<LocalPgBouncer> = Vec::new();
        let mut f = Fleet {
            t,
            name,
            shared,
            port,
        };
        for i in 0..n {
            fleet_poolers.push(f.start_instance(2 + i));
        }
        for p in &fleet_poolers {
            f.name.add(&p.addr);
        }
        let mut all = fleet_poolers.into_iter();
        if let Some(first) = all.next() {
            f.t.pooler = first;
        }
        f.t.more_poolers = all.collect();
        f.write_config();
        f
    }

    /// One more instance on 127.0.0.`last`, not yet listed by the name.
    pub fn start_instance(&self, last: u8) -> LocalPgBouncer {
        let addr = format!("127.0.0.{last}");
        must(LocalPgBouncer::start_shared(
            &self.t.dir().join(format!("pgbouncer-{last}")),
            &addr,
            self.port,
            &self.shared,
            &harness::pooler_auth(),
            &[("query_wait_timeout", "60")],
        ))
    }

    /// The topology's config, `cutover.admin` being the one name and
    /// `cutover.config_file` the shared file.
    pub fn write_config(&mut self) {
        self.t.write_config();
        let text = must(std::fs::read_to_string(&self.t.config).map_err(|e| e.to_string()));
        let admin = self
            .t
            .pooler
            .admin_url()
            .replace(&self.t.pooler.addr, &self.name.name);
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with("admin = ") {
                out.push(format!("admin = [\"{admin}\"]"));
            } else if line.starts_with("config_file = ") {
                out.push(format!("config_file = [\"{}\"]", self.shared.display()));
            } else {
                out.push(line.to_string());
            }
        }
        must(std::fs::write(&self.t.config, out.join("\n") + "\n").map_err(|e| e.to_string()));
    }

    /// Where every instance's `app` entry points now (its SHOW DATABASES port).
    pub async fn entry_ports(poolers: &[&LocalPgBouncer]) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for p in poolers {
            let c = harness::connect(&p.admin_url()).await;
            for m in c.simple_query("SHOW DATABASES").await.unwrap() {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    if r.get("name") == Some("app") {
                        let port = r.get("port").and_then(|v| v.parse().ok()).unwrap_or(0);
                        out.push((p.addr.clone(), port));
                    }
                }
            }
        }
        out
    }
}

/// Clients on one instance: (its address, load).
pub struct Clients(pub Vec<(String, Load)>);

impl Clients {
    pub fn on(poolers: &[&LocalPgBouncer]) -> Clients {
        Clients(
            poolers
                .iter()
                .map(|p| {
                    let url = harness::app_pooler_url(p, "app");
                    (
                        p.addr.clone(),
                        Load::start(&url, 1, Duration::from_millis(5), Duration::from_secs(600)),
                    )
                })
                .collect(),
        )
    }

    pub async fn wait_progress(&self, n: usize) {
        for (_, l) in &self.0 {
            l.wait_progress(n).await;
        }
    }

    /// Every acknowledged id, every error (named by instance), commits per instance.
    pub async fn stop(self) -> (Vec<i64>, Vec<String>, Vec<(String, usize)>) {
        let (mut acked, mut errors, mut per) = (Vec::new(), Vec::new(), Vec::new());
        for (addr, l) in self.0 {
            let ledger = l.stop().await;
            per.push((addr.clone(), ledger.acked.len()));
            acked.extend(ledger.acked);
            errors.extend(ledger.errors.iter().map(|e| format!("{addr}: {e:?}")));
        }
        (acked, errors, per)
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn new_primary_port(f: &Fleet) -> i64 {
    let rec = crate::upgrade::latest_record(&f.t.state_dir());
    let url = rec
        .replica_endpoint()
        .expect("new endpoint recorded")
        .to_string();
    let spec = must(pgsteward::pg::ConnSpec::parse_with(
        &url,
        &harness::pg_env(),
    ));
    i64::from(spec.host_port().1)
}

fn shared_points_at(shared: &Path) -> Vec<u16> {
    let text = must(std::fs::read_to_string(shared).map_err(|e| e.to_string()));
    pgsteward::pooler::ini_entries(&text)
        .into_iter()
        .map(|(_, _, port)| port)
        .collect()
}

/// The case: `cutover.admin` names one name with three addresses.
/// The plan lists the three instances; the upgrade pauses, repoints and
/// resumes all three; every client keeps writing with no error and nothing
/// acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_behind_one_name_are_paused_and_repointed_together() {
    let f = Fleet::new("three", 3, "10s");
    let all: Vec<&LocalPgBouncer> = f.t.poolers().collect();
    let clients = Clients::on(&all);
    clients.wait_progress(10).await;
    let plan = f.t.pgsteward(
        &["upgrade", "plan", "--target-class", f.t.next_class()],
        None,
    );
    let shown = stdout(&plan);
    for addr in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        assert!(
            shown.contains(&format!("{addr}:{}", f.port)),
            "the plan lists {addr}:\n{}",
            text(&plan)
        );
    }
    let out = f.t.upgrade(None);
    assert!(out.status.success(), "{}", text(&out));
    let said = stdout(&out);
    for line in said.lines().filter(|l| l.contains("instance(s)")) {
        println!("{line}");
    }
    assert!(
        said.contains("PAUSE confirmed on 3 instance(s)"),
        "the pause report names three instances:\n{said}"
    );
    let new_port = new_primary_port(&f);
    for (addr, port) in Fleet::entry_ports(&all).await {
        assert_eq!(port, new_port, "{addr} still points elsewhere");
    }
    assert_eq!(shared_points_at(&f.shared), vec![new_port as u16]);
    clients.wait_progress(5).await;
    let (acked, errors, per) = clients.stop().await;
    println!("commits per instance: {per:?}");
    assert!(errors.is_empty(), "client errors: {errors:?}");
    f.t.check_nothing_lost(&acked).await;
}

/// A fourth instance joins the name while the writes are paused (a
/// rollout's new pod): it is paused before the fence, repointed with the
/// others, and its clients see no error; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_appears_mid_cutover_is_paused_and_repointed() {
    let f = Fleet::new("joins", 3, "15s");
    let fourth = f.start_instance(5);
    let mut all: Vec<&LocalPgBouncer> = f.t.poolers().collect();
    all.push(&fourth);
    let clients = Clients::on(&all);
    clients.wait_progress(10).await;
    let mut runner = spawn(upgrade_cmd(
        &f.t.config,
        f.t.next_class(),
        Some("pause_writes-done=sleep:1500"),
    ));
    wait_for_step(
        &f.t.state_dir(),
        pgsteward::upgrade::record::Step::PauseWrites,
        &mut runner,
    );
    // PAUSE is sent right after the step starts; the name lists the new
    // instance once the others are paused.
    std::thread::sleep(Duration::from_millis(600));
    f.name.add(&fourth.addr);
    let out = wait(runner);
    assert!(out.status.success(), "{}", text(&out));
    let said = stdout(&out);
    assert!(
        said.contains("paused new instance(s)") && said.contains(&fourth.addr),
        "the runner names the instance that joined:\n{said}"
    );
    let new_port = new_primary_port(&f);
    for (addr, port) in Fleet::entry_ports(&all).await {
        assert_eq!(port, new_port, "{addr} still points elsewhere");
    }
    clients.wait_progress(5).await;
    let (acked, errors, per) = clients.stop().await;
    println!("commits per instance: {per:?}");
    assert!(errors.is_empty(), "client errors: {errors:?}");
    f.t.check_nothing_lost(&acked).await;
}

/// One of three instances leaves the name while the writes are paused and
/// its process is gone (a pod deleted by a rollout): the cutover does not
/// wait for it; the two others are repointed and resumed, their clients see
/// no error, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_leaves_mid_cutover_does_not_block() {
    let mut f = Fleet::new("leaves", 3, "15s");
    let clients = {
        let all: Vec<&LocalPgBouncer> = f.t.poolers().collect();
        Clients::on(&all)
    };
    clients.wait_progress(10).await;
    let mut runner = spawn(upgrade_cmd(
        &f.t.config,
        f.t.next_class(),
        Some("pause_writes-done=sleep:1500"),
    ));
    wait_for_step(
        &f.t.state_dir(),
        pgsteward::upgrade::record::Step::PauseWrites,
        &mut runner,
    );
    std::thread::sleep(Duration::from_millis(600));
    let mut leaving = f.t.more_poolers.pop().expect("a third instance");
    f.name.remove(&leaving.addr);
    leaving.stop();
    let out = wait(runner);
    assert!(out.status.success(), "{}", text(&out));
    let new_port = new_primary_port(&f);
    let left: Vec<&LocalPgBouncer> = f.t.poolers().collect();
    for (addr, port) in Fleet::entry_ports(&left).await {
        assert_eq!(port, new_port, "{addr} still points elsewhere");
    }
    let (acked, errors, per) = {
        let mut c = clients;
        let gone = c.0.iter().position(|(a, _)| *a == leaving.addr);
        let (ok, lost): (Vec<_>, Vec<_>) =
            c.0.drain(..)
                .enumerate()
                .partition(|(i, _)| Some(*i) != gone);
        let mut acked = Vec::new();
        for (_, (_, l)) in lost {
            acked.extend(l.stop().await.acked);
        }
        let (a, e, p) = Clients(ok.into_iter().map(|(_, x)| x).collect())
            .stop()
            .await;
        acked.extend(a);
        (acked, e, p)
    };
    println!("commits per remaining instance: {per:?}");
    assert!(
        errors.is_empty(),
        "client errors on the remaining instances: {errors:?}"
    );
    f.t.check_nothing_lost(&acked).await;
}

/// One instance SIGSTOPped before the pause: the health gate cannot read it
/// within its bound, so the upgrade refuses before any PAUSE (or rolls back
/// before promote), never hangs, and the two others keep serving. The
/// stopped one resumes its clients once it runs again; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_stopped_before_the_pause_rolls_the_cutover_back() {
    let f = Fleet::new("stopped", 3, "3s");
    let all: Vec<&LocalPgBouncer> = f.t.poolers().collect();
    let clients = Clients::on(&all);
    clients.wait_progress(10).await;
    let old_port = i64::from(f.t.cluster.primary.port);
    let mut runner = spawn(upgrade_cmd(
        &f.t.config,
        f.t.next_class(),
        Some("wait_catchup-done=sleep:1500"),
    ));
    wait_for_step(
        &f.t.state_dir(),
        pgsteward::upgrade::record::Step::WaitCatchup,
        &mut runner,
    );
    let stopped = all[1];
    let pid =
        must(std::fs::read_to_string(stopped.dir.join("pgbouncer.pid")).map_err(|e| e.to_string()));
    let pid = pid.trim().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status();
    let t0 = Instant::now();
    let out = wait(runner);
    let took = t0.elapsed();
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    println!("runner ended {:.1} s after the stop", took.as_secs_f64());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&stopped.addr),
        "the error names the stopped instance:\n{}",
        text(&out)
    );
    assert!(took < Duration::from_secs(60), "bounded: {took:?}");
    for (addr, port) in Fleet::entry_ports(&all).await {
        assert_eq!(
            port, old_port,
            "{addr} was repointed by an upgrade that rolled back"
        );
    }
    clients.wait_progress(5).await;
    let (acked, errors, _) = clients.stop().await;
    let others: Vec<&String> = errors
        .iter()
        .filter(|e| !e.starts_with(&stopped.addr))
        .collect();
    assert!(others.is_empty(), "errors on running instances: {others:?}");
    f.t.check_nothing_lost(&acked).await;
    let abort = f.t.pgsteward(&["upgrade", "abort"], None);
    assert!(abort.status.success(), "{}", text(&abort));
}

/// A saturated pool (more clients waiting than `cutover.max_waiting_clients`
/// for longer than `cutover.max_client_wait`) holds the pause back: the
/// upgrade refuses with the figures, nothing is paused or repointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_holds_the_pause_back_with_the_figures() {
    let f = Fleet::new("saturated", 3, "5s");
    let all: Vec<&LocalPgBouncer> = f.t.poolers().collect();
    // default_pool_size 25 + reserve_pool_size 10 per user on one
    // instance: 35 sessions hold every server connection in a
    // transaction, 5 more wait.
    let target = all[2];
    let url = harness::app_pooler_url(target, "app");
    let mut holders = Vec::new();
    for _ in 0..35 {
        let c = harness::connect(&url).await;
        c.simple_query("BEGIN; SELECT 1").await.unwrap();
        holders.push(c);
    }
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let c = harness::connect(&url).await;
        waiters.push(tokio::spawn(async move {
            c.simple_query("SELECT 1").await.map(|_| c)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let config = must(std::fs::read_to_string(&f.t.config).map_err(|e| e.to_string()));
    let config = config.replace(
        "database = \"app\"\n",
        "database = \"app\"\nmax_waiting_clients = 2\nmax_client_wait = \"1s\"\n",
    );
    must(std::fs::write(&f.t.config, config).map_err(|e| e.to_string()));
    let out = f.t.upgrade(None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all_text = text(&out);
    assert!(
        all_text.contains(&format!(
            "{}:{} database app: 5 clients waiting",
            target.addr, f.port
        )),
        "the refusal gives the figures:\n{all_text}"
    );
    let old_port = i64::from(f.t.cluster.primary.port);
    for (addr, port) in Fleet::entry_ports(&all).await {
        assert_eq!(port, old_port, "{addr} repointed");
    }
    drop(holders);
    for w in waiters {
        let _ = w.await;
    }
    let abort = f.t.pgsteward(&["upgrade", "abort"], None);
    assert!(
        abort.status.success() || abort.status.code() == Some(1),
        "{}",
        text(&abort)
    );
}
