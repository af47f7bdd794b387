//! Watchdogs: a small `sh` loop, in its own process group, that cleans up a
//! server made for a test or the demo once the process that made it is gone,
//! even after a kill -9.
//!
//! The script is a constant: the owner's pid and the clean-up command reach it
//! as positional arguments (`"$@"`), never spliced into its text, so no path
//! (a `data_root` with a `'` or a `$(...)` in it) can change what it runs.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::{io, minimal_env, Cluster, LocalPgError, ServerUser};

/// Waits for `/proc/$1` to go away, then runs the rest of its arguments.
const WATCHDOG_SCRIPT: &str = r#"owner=$1; shift
while [ -d "/proc/$owner" ]; do sleep 1; done
"$@" >/dev/null 2>&1"#;

/// Starts a watchdog that stops the server with `pg_ctl -m immediate` once
/// process `owner` is gone, so servers made by a test or the demo never outlive
/// it, even after a kill -9.
pub fn stop_when_gone(cluster: &Cluster, owner: u32) -> Result<(), LocalPgError> {
    let pg_ctl = cluster.program("pg_ctl")?;
    let stop = [
        pg_ctl.as_os_str(),
        OsStr::new("-D"),
        cluster.data_dir.as_os_str(),
        OsStr::new("-m"),
        OsStr::new("immediate"),
        OsStr::new("stop"),
    ];
    spawn_watchdog(owner, &stop, cluster.user)
}

/// Runs `then` (a program and its arguments) as `user` once process `owner`
/// is gone.
pub(crate) fn spawn_watchdog(
    owner: u32,
    then: &[&OsStr],
    user: Option<ServerUser>,
) -> Result<(), LocalPgError> {
    let mut cmd = Command::new("/bin/sh");
    minimal_env(&mut cmd, user);
    // `watchdog` is $0, what ps shows for the shell.
    cmd.args(["-c", WATCHDOG_SCRIPT, "watchdog"])
        .arg(owner.to_string())
        .args(then)
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::*;

    /// The pid of a process that has exited and been reaped: `/proc/<pid>`
    /// is gone, so a watchdog for it acts at once.
    fn gone_pid() -> u32 {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait for true");
        pid
    }

    fn wait_for(what: &str, timeout: Duration, done: impl Fn() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(Instant::now() < deadline, "{what} within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn paths_with_quotes_reach_the_command_unchanged() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join(r#"it's "odd" $(touch pwned) `x` \ ;"#);
        std::fs::create_dir(&dir).expect("create dir");
        let marker = dir.join("done'");
        let then = [OsStr::new("touch"), marker.as_os_str()];
        spawn_watchdog(gone_pid(), &then, None).expect("spawn watchdog");
        wait_for("the watchdog's command", Duration::from_secs(10), || {
            marker.exists()
        });
        assert!(!Path::new("pwned").exists() && !dir.join("pwned").exists());
    }

    /// A whole cluster under a data root with a `'` in its name: its
    /// postgresql.conf (socket directory) and its watchdog (pg_ctl -D) both
    /// take the path as it is.
    #[test]
    fn a_cluster_under_a_quoted_data_root_starts_and_is_stopped_when_its_owner_goes() {
        let user = ServerUser::detect().expect("server user");
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("data root's (1)");
        super::super::make_server_dir(&root, user).expect("data root");
        let port = super::super::free_port().expect("port");
        let cluster = Cluster::init(&root.join("pg'1"), port, None, &[]).expect("initdb");
        // Should an assertion below fail, the server still goes with this test run.
        stop_when_gone(&cluster, std::process::id()).expect("watchdog for this run");
        cluster.start().expect("start");
        let answer = cluster.psql("postgres", "SHOW unix_socket_directories");
        let running = cluster.is_running();
        stop_when_gone(&cluster, gone_pid()).expect("watchdog");
        wait_for(
            "the watchdog stopping the server",
            Duration::from_secs(30),
            || !cluster.is_running(),
        );
        assert!(running, "the server ran");
        let answer = answer.expect("psql over the socket");
        assert!(answer.contains("data root's (1)/pg'1.sock"), "{answer}");
        let refused = Cluster::at(&root.join("pg\"2"), port, None)
            .expect("describe")
            .start()
            .unwrap_err();
        assert!(
            matches!(refused, LocalPgError::UnsafePath { .. }),
            "{refused}"
        );
    }
}
