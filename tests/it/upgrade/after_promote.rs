//! From promote on the upgrade only goes forward: an error there (not a
//! crash) stops the run in needs_resume, nothing is undone, and `upgrade
//! resume` finishes it.

use super::*;

/// An error injected at promote before it acts, and after each step from
/// promote on has acted: `upgrade start` exits 1 naming `upgrade resume`, the
/// journal says needs_resume, `upgrade abort` refuses (exit 2), and `upgrade
/// resume` completes the upgrade onto the new primary. Writes through
/// PgBouncer go on, nothing acknowledged is lost, and at most one node accepts
/// writes at any point checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_after_promote_needs_resume_and_resume_finishes() {
    use pgsteward::upgrade::record::{Phase, STEPS};
    let mut t = Topology::new();
    let load = Load::start(
        &t.pooler_url(),
        3,
        Duration::from_millis(4),
        Duration::from_secs(600),
    );
    load.wait_progress(20).await;
    let mut points = vec!["promote-start=error".to_string()];
    points.extend(
        STEPS
            .iter()
            .filter(|s| !s.before_promote())
            .map(|s| format!("{}-done=error", s.name())),
    );
    for fp in &points {
        let out = t.upgrade(Some(fp));
        assert_eq!(out.status.code(), Some(1), "{fp}\n{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("after promote") && stderr.contains("upgrade resume"),
            "{fp}\n{}",
            text(&out)
        );
        let rec = latest_record(&t.state_dir());
        assert!(
            matches!(rec.phase, Phase::NeedsResume(_)),
            "{fp}: phase {:?}",
            rec.phase
        );
        t.check_one_writable_or_paused(fp).await;
        let abort = t.pgsteward(&["upgrade", "abort"], None);
        assert_eq!(abort.status.code(), Some(2), "{fp}\n{}", text(&abort));
        let out = t.pgsteward(&["upgrade", "resume"], None);
        assert!(out.status.success(), "{fp}: resume\n{}", text(&out));
        t.follow_upgrade();
        load.wait_progress(10).await;
        t.check_nothing_lost(&load.acked_ids()).await;
    }
    load.finish_clean(&t).await;
}
