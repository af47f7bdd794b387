//! Watchdogs: small `sh` loops, in their own process group, that clean up
//! servers made for a test or the demo once the process that made them is
//! gone, even after a kill -9.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::{io, minimal_env, Cluster, LocalPgError, ServerUser};

/// Starts a watchdog that stops the server with `pg_ctl -m immediate` once
/// process `owner` is gone, so servers made by a test or the demo never outlive
/// it, even after a kill -9.
pub fn stop_when_gone(cluster: &Cluster, owner: u32) -> Result<(), LocalPgError> {
    let pg_ctl = cluster.program("pg_ctl")?;
    let script = format!(
        "while [ -d /proc/{owner} ]; do sleep 1; done; \
         '{}' -D '{}' -m immediate stop >/dev/null 2>&1",
        pg_ctl.display(),
        cluster.data_dir.display()
    );
    spawn_watchdog(&script, cluster.user)
}

pub(crate) fn spawn_watchdog(script: &str, user: Option<ServerUser>) -> Result<(), LocalPgError> {
    let mut cmd = Command::new("/bin/sh");
    minimal_env(&mut cmd, user);
    cmd.args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(u) = user {
        cmd.uid(u.uid).gid(u.gid).current_dir("/");
    }
    // Its own process group, so a test runner's Ctrl-C does not kill it before it cleans up.
    cmd.process_group(0);
    cmd.spawn().map_err(io("spawn watchdog"))?;
    Ok(())
}
