//! A crash (SIGKILL) at every step boundary, then `upgrade resume`.

use super::*;

/// kill -9 of `pgsteward upgrade start` at every step boundary, then
/// `upgrade resume` (twice when the first resume rolls back a crashed write
/// pause): nothing acknowledged is lost and exactly one node is writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_at_every_step_boundary_then_resume() {
    let mut t = Topology::new();
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(4),
        Duration::from_secs(600),
    );
    load.wait_progress(20).await;
    for step in step_names() {
        for at in ["start", "done"] {
            let fp = format!("{step}-{at}=kill");
            let out = t.upgrade(Some(&fp));
            assert!(killed(&out), "{fp}: expected SIGKILL\n{}", text(&out));
            let rec = latest_record(&t.state_dir());
            // Between the crash and the resume: never two writable nodes.
            t.check_one_writable_or_paused(&fp).await;
            let out = t.pgsteward(&["upgrade", "resume"], None);
            if !out.status.success() {
                let rolled_back = String::from_utf8_lossy(&out.stderr).contains("rolled back");
                assert!(rolled_back, "{fp}: resume failed\n{}", text(&out));
                assert!(!rec.promote_started(), "{fp}: rolled back after promote");
                load.wait_progress(10).await;
                t.check_one_writable().await;
                let out = t.pgsteward(&["upgrade", "resume"], None);
                assert!(out.status.success(), "{fp}: retry failed\n{}", text(&out));
            }
            t.check_one_writable_or_paused(&format!("{fp}, after resume"))
                .await;
            t.follow_upgrade();
            load.wait_progress(10).await;
            let acked = load.acked_ids();
            t.check_nothing_lost(&acked).await;
        }
    }
    load.finish_clean(&t).await;
}
