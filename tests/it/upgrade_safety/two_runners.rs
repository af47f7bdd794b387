//! Two runners, one upgrade: exactly one acts, the other refuses at once.

use super::*;

/// Two `upgrade start` against one primary from two state_dirs: started
/// together, exactly one completes and the other refuses at once (exit 1,
/// naming the upgrade in flight); started two seconds apart, the second one
/// refuses while the first is mid-way and again while the first waits out
/// retire_after. Never two writable nodes, nothing lost, no client error,
/// and the refused runner leaves no journal behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_one_upgrade() {
    let mut t = Topology::new();
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(4),
        Duration::from_secs(300),
    );
    load.wait_progress(20).await;

    // Together.
    let (config_b, state_b) = config_with_state_dir(&t, "state-b");
    let class = t.next_class();
    let a = spawn(upgrade_cmd(&t.config, class, None));
    let b = spawn(upgrade_cmd(&config_b, class, None));
    let (a, b) = (wait(a), wait(b));
    let (won, lost, lost_state) = if a.status.success() {
        (a, b, state_b.clone())
    } else {
        (b, a, t.state_dir())
    };
    assert!(won.status.success(), "no runner completed:\n{}", text(&won));
    assert_eq!(lost.status.code(), Some(1), "{}", text(&lost));
    let stderr = String::from_utf8_lossy(&lost.stderr);
    assert!(
        stderr.contains("in flight") || stderr.contains("holds the upgrade lock"),
        "{}",
        text(&lost)
    );
    let journals = std::fs::read_dir(&lost_state)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(journals, 0, "the refused runner wrote a journal");
    // Follow whichever state_dir completed.
    if lost_state == t.state_dir() {
        copy_journal(&state_b, &t.state_dir());
    }
    t.follow_upgrade();
    load.wait_progress(20).await;
    t.check_one_writable().await;

    // Staggered: A starts, B two seconds later (A is past create by then).
    t.write_config();
    t.retire_after = "3s";
    t.write_config();
    let (config_b, _) = config_with_state_dir(&t, "state-b2");
    let class = t.next_class();
    let mut a = spawn(upgrade_cmd(&t.config, class, None));
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let b = wait(spawn(upgrade_cmd(&config_b, class, None)));
    assert_eq!(b.status.code(), Some(1), "{}", text(&b));
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "refusal not at once: {:?}",
        t0.elapsed()
    );
    let stderr = String::from_utf8_lossy(&b.stderr);
    let rec_a = {
        let p = pgsteward::upgrade::journal::latest(&t.state_dir())
            .unwrap()
            .expect("A's journal");
        pgsteward::upgrade::journal::read(&p).unwrap()
    };
    assert!(
        stderr.contains(&rec_a.id) && stderr.contains("step") && stderr.contains("since"),
        "the refusal names the upgrade in flight (id, host, step, since):\n{}",
        text(&b)
    );
    // While A waits out retire_after (old primary fenced, still up).
    wait_for_step(
        &t.state_dir(),
        pgsteward::upgrade::record::Step::RetireOld,
        &mut a,
    );
    let b = wait(spawn(upgrade_cmd(&config_b, class, None)));
    assert_eq!(b.status.code(), Some(1), "{}", text(&b));
    assert!(
        String::from_utf8_lossy(&b.stderr).contains(&rec_a.id),
        "{}",
        text(&b)
    );
    t.check_one_writable_or_paused("during retire_after").await;
    let a = wait(a);
    assert!(a.status.success(), "{}", text(&a));
    t.follow_upgrade();
    load.wait_progress(20).await;

    load.finish_clean(&t).await;
    // The new primary's guard row is finished: partition DDL may run there.
    let client = harness::connect(&t.primary_url).await;
    let row = pgsteward::upgrade::guard::read(&client, &t.primary_url, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        pgsteward::upgrade::gate::decide(row.as_ref(), false),
        pgsteward::upgrade::Gate::Clear
    );
}

fn copy_journal(from: &std::path::Path, to: &std::path::Path) {
    must(std::fs::create_dir_all(to).map_err(|e| e.to_string()));
    let path = pgsteward::upgrade::journal::latest(from)
        .unwrap()
        .expect("a journal");
    let name = path.file_name().unwrap();
    // Numbered above everything in `to`, so it is the newest there.
    let dest = to.join(format!("999999-{}", name.to_string_lossy()));
    must(std::fs::copy(&path, dest).map_err(|e| e.to_string()));
}

/// `config` with `database.primary` replaced by `primary`.
fn config_with_primary(t: &Topology, config: &std::path::Path, primary: &str) {
    let text = must(std::fs::read_to_string(config).map_err(|e| e.to_string()));
    let text = text.replace(
        &format!("primary = \"{}\"", t.primary_url),
        &format!("primary = \"{primary}\""),
    );
    assert!(text.contains(primary), "primary not replaced in {text}");
    must(std::fs::write(config, text).map_err(|e| e.to_string()));
}

/// One upgrade per cluster, whatever the connection string says: runner A
/// names `/app`, runner B (another state_dir) names another database of the
/// same cluster, or another name of the same server (`localhost`, in either
/// form of connection string), started 0 to 3 s after A. Each time exactly one completes, the
/// other exits 1 naming the upgrade in flight, one node is writable, and no
/// acknowledged commit is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_naming_two_databases_of_one_cluster() {
    let mut t = Topology::new();
    // The old primary stays up (fenced) a while after each upgrade, so a B
    // started 3 s late still meets A's guard there rather than a stopped server.
    t.retire_after = "5s";
    t.write_config();
    // B's database gets the per-database grants docs/privileges.md lists for
    // the database `database.primary` names.
    must(t.cluster.primary.psql(
        "postgres",
        "GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO steward",
    ));
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(4),
        Duration::from_secs(600),
    );
    load.wait_progress(20).await;
    let trials: [(u64, &str); 4] = [
        (0, "127.0.0.1/postgres"),
        (900, "localhost/postgres"),
        (1800, "localhost/app key/value"),
        (3000, "127.0.0.1/postgres"),
    ];
    for (i, (stagger_ms, name)) in trials.iter().enumerate() {
        let (config_b, state_b) = config_with_state_dir(&t, &format!("state-cluster-{i}"));
        let url = url::Url::parse(&t.primary_url).unwrap();
        let port = url.port().unwrap();
        let primary_b = match *name {
            "127.0.0.1/postgres" => t.primary_url.replace("/app?", "/postgres?"),
            "localhost/postgres" => t
                .primary_url
                .replace("127.0.0.1", "localhost")
                .replace("/app?", "/postgres?"),
            // The same server and database in the key/value form, by name.
            _ => format!(
                "host=localhost port={port} user={} dbname=app sslmode=disable",
                harness::STEWARD_USER
            ),
        };
        config_with_primary(&t, &config_b, &primary_b);
        let class = t.next_class();
        let a = spawn(upgrade_cmd(&t.config, class, None));
        std::thread::sleep(Duration::from_millis(*stagger_ms));
        let b = spawn(upgrade_cmd(&config_b, class, None));
        let (a, b) = (wait(a), wait(b));
        let label = format!("trial {i}: B on {name} {stagger_ms} ms after A");
        let completed = [a.status.success(), b.status.success()];
        assert_eq!(
            completed.iter().filter(|c| **c).count(),
            1,
            "{label}: exactly one runner completes\nA: {}\nB: {}",
            text(&a),
            text(&b)
        );
        let lost = if completed[0] { &b } else { &a };
        assert_eq!(lost.status.code(), Some(1), "{label}: {}", text(lost));
        let stderr = String::from_utf8_lossy(&lost.stderr);
        assert!(
            stderr.contains("in flight") || stderr.contains("holds the upgrade lock"),
            "{label}: {}",
            text(lost)
        );
        if completed[1] {
            copy_journal(&state_b, &t.state_dir());
        }
        t.follow_upgrade();
        // B's journal names the new primary with B's database: ours is `app`.
        if !t.primary_url.contains("/app") {
            let u = url::Url::parse(&t.primary_url).unwrap();
            let fixed = format!(
                "postgres://{}@127.0.0.1:{}/app?sslmode=disable",
                harness::STEWARD_USER,
                u.port().unwrap()
            );
            t.nodes.pop();
            t.nodes.push(fixed.clone());
            t.primary_url = fixed;
            t.write_config();
        }
        load.wait_progress(20).await;
        t.check_one_writable().await;
        t.check_nothing_lost(&load.acked_ids()).await;
    }
    load.finish_clean(&t).await;
}
