//! `convert` walked through its saga table (`convert::table::TABLE`): an
//! error injected at every boundary, then `resume` finishes; killed at every
//! undo boundary of `abort`, then `abort` again leaves the table as it was.
//! The boundaries come from the table, so a new step is covered here (and
//! by the kill test in `convert.rs`) without new test code.

use pgsteward::convert::table::TABLE;
use pgsteward::saga::{boundaries, undo_boundaries};

use crate::convert::{checksum, config, relkind, run, setup, Run};
use crate::harness::{fresh_db, query};

/// `convert <cmd> --table public.events` under `failpoint`, off the runtime.
async fn convert(cfg: &std::path::Path, cmd: &'static str, failpoint: Option<String>) -> Run {
    let cfg = cfg.to_path_buf();
    tokio::task::spawn_blocking(move || {
        run(
            &cfg,
            &["convert", cmd, "--table", "public.events"],
            failpoint.as_deref(),
        )
    })
    .await
    .unwrap()
}

/// The CHECKs and indexes on the table: what an abort must restore.
const SHAPE: &str = "SELECT coalesce((SELECT string_agg(conname || ':' || pg_get_constraintdef(oid), ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'public.events'::regclass), ''), \
     coalesce((SELECT string_agg(indexrelid::regclass::text, ',' ORDER BY 1) FROM pg_index WHERE indrelid = 'public.events'::regclass), '')";

async fn shape(url: &str) -> (String, String) {
    let r = &query(url, SHAPE).await[0];
    (r.get(0), r.get(1))
}

async fn state(url: &str) -> String {
    query(url, "SELECT state FROM pgsteward.conversions").await[0].get(0)
}

#[tokio::test]
async fn an_error_at_every_boundary_then_resume_finishes() {
    let points = boundaries(TABLE);
    assert!(points.len() >= 10, "{points:?}");
    for (i, b) in points.iter().enumerate() {
        let point = &b.failpoint;
        let url = fresh_db(&format!("convert_err{i}"));
        setup(&url, 200).await;
        let before = checksum(&url, 200).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &url, &["public.events"]);
        let out = convert(&cfg, "start", Some(format!("{point}=error"))).await;
        assert_eq!(out.code, Some(1), "{point}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("failpoint {point} injected")),
            "{point}: {}",
            out.stderr
        );
        // Not undone (resuming can help), and converted only once the swap committed.
        assert_eq!(state(&url).await, "active", "{point}");
        let kind = if b.past_no_return { "p" } else { "r" };
        assert_eq!(relkind(&url, "public.events").await, kind, "{point}");
        let out = convert(&cfg, "resume", None).await;
        assert_eq!(out.code, Some(0), "{point}: resume: {}", out.stderr);
        assert_eq!(relkind(&url, "public.events").await, "p", "{point}");
        assert_eq!(checksum(&url, 200).await, before, "{point}");
        assert_eq!(state(&url).await, "done", "{point}");
    }
}

#[tokio::test]
async fn killed_at_every_undo_boundary_then_abort_again_restores_the_table() {
    let points = undo_boundaries(TABLE);
    assert!(!points.is_empty());
    // Every step before the point of no return done, the swap not started.
    let swap_start = boundaries(TABLE)
        .into_iter()
        .take_while(|b| !b.past_no_return)
        .map(|b| b.failpoint)
        .filter(|p| p.ends_with("-start"))
        .last()
        .expect("a step before the point of no return");
    for (i, point) in points.iter().enumerate() {
        let url = fresh_db(&format!("convert_undo{i}"));
        setup(&url, 200).await;
        let before = shape(&url).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &url, &["public.events"]);
        let out = convert(&cfg, "start", Some(format!("{swap_start}=error"))).await;
        assert_eq!(out.code, Some(1), "{point}: {}", out.stderr);
        assert_ne!(shape(&url).await, before, "{point}: nothing was built");
        let out = convert(&cfg, "abort", Some(format!("{point}=kill"))).await;
        assert_eq!(out.code, None, "{point}: not killed: {}", out.stderr);
        assert_eq!(state(&url).await, "active", "{point}");
        let out = convert(&cfg, "abort", None).await;
        assert_eq!(out.code, Some(0), "{point}: abort again: {}", out.stderr);
        assert_eq!(shape(&url).await, before, "{point}");
        assert_eq!(relkind(&url, "public.events").await, "r", "{point}");
        assert_eq!(state(&url).await, "aborted", "{point}");
    }
}
