//! Upgrade safety as deployed (issue 9): two runners on separate state
//! directories, asynchronous commits, a hard fence on the old primary.
//! Same topology and invariants as `upgrade`: every acknowledged commit is
//! on the node that is primary now, and at most one node accepts writes.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, must, text};
use crate::upgrade::{latest_record, wait_keeper, Load, Topology};

mod durability;
mod fence;
mod hangs;
pub mod members;
mod pgbench;
mod pool_metrics;
mod poolers;
mod slots;
mod two_runners;

/// The topology's config with another `state_dir` (another pod or host).
pub fn config_with_state_dir(t: &Topology, name: &str) -> (PathBuf, PathBuf) {
    let text = must(std::fs::read_to_string(&t.config).map_err(|e| e.to_string()));
    let state = t.dir().join(name);
    let text = text.replace(
        &format!("state_dir = \"{}\"", t.state_dir().display()),
        &format!("state_dir = \"{}\"", state.display()),
    );
    let path = t.dir().join(format!("{name}.toml"));
    must(std::fs::write(&path, text).map_err(|e| e.to_string()));
    (path, state)
}

pub fn upgrade_cmd(config: &std::path::Path, class: &str, failpoint: Option<&str>) -> Command {
    let mut cmd = harness::pgsteward();
    cmd.arg("--config")
        .arg(config)
        .args(["upgrade", "start", "--target-class", class])
        .env("PGSTEWARD_LOCAL_OWNER_PID", std::process::id().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(fp) = failpoint {
        cmd.env("PGSTEWARD_FAILPOINT", fp);
    }
    cmd
}

fn spawn(mut cmd: Command) -> Child {
    must(cmd.spawn().map_err(|e| e.to_string()))
}

fn wait(child: Child) -> Output {
    must(child.wait_with_output().map_err(|e| e.to_string()))
}

/// Waits (bounded) until the journal in `state_dir` shows `step` started;
/// fails with the runner's output if it ends first.
pub fn wait_for_step(
    state_dir: &std::path::Path,
    step: pgsteward::upgrade::record::Step,
    runner: &mut Child,
) {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(p)) = pgsteward::upgrade::journal::latest(state_dir) {
            if let Ok(rec) = pgsteward::upgrade::journal::read(&p) {
                if rec.in_flight() && rec.step(step).started_at.is_some() {
                    return;
                }
            }
        }
        if let Ok(Some(status)) = runner.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = runner.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("the runner ended ({status}) before {step} started: {err}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{step} never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
