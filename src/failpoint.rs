//! Named failpoints at every step boundary, for crash and error tests: the
//! upgrade saga's, convert's and the archive retirement's (a layer below
//! all three, so none borrows another's).
//! Compiled only into test builds and `--features failpoints` binaries; in a
//! release build [`hit`] is an empty inline function.
//!
//! `PGSTEWARD_FAILPOINT=<name>=<action>[,<name>=<action>...]`, where a name is
//! `[<kind>-]<step>-start` (after `step_started` is written, durably where the step needs it, before the step acts),
//! `<step>-done` (after it acted, before `step_succeeded` is written) or
//! `<step>-undo` (before its undo), and the action is
//! `error` (the step fails), `sleep:MS` (the step waits there), `panic`, `exit` (exit code 99) or `kill`
//! (the process SIGKILLs itself: a real crash, no destructors, no flush).
//! `PGSTEWARD_FAILPOINT_REPEAT=1` runs twice (idempotence) every step the saga core records itself
//! (`saga::forward`: the upgrade's, convert's index builds and partition pass) and the retirement's steps.

/// Environment variables read here; `config::env_provider` ignores them.
pub const FAILPOINT_ENV: &str = "PGSTEWARD_FAILPOINT";
pub const REPEAT_ENV: &str = "PGSTEWARD_FAILPOINT_REPEAT";

/// What a failpoint injected. Tests match on the text of the error it ends in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailpointError {
    #[error("failpoint {0} injected an error")]
    Injected(String),
    #[error("failpoint {name}: unknown action {action:?}")]
    UnknownAction { name: String, action: String },
}

#[cfg(any(test, feature = "failpoints"))]
mod imp {
    use super::*;

    fn action(name: &str) -> Option<String> {
        let spec = std::env::var(FAILPOINT_ENV).ok()?;
        spec.split(',').find_map(|pair| {
            let (n, a) = pair.split_once('=')?;
            (n.trim() == name).then(|| a.trim().to_string())
        })
    }

    /// Runs the action configured for failpoint `name`, if any.
    pub fn hit(name: &str) -> Result<(), FailpointError> {
        let Some(action) = action(name) else {
            return Ok(());
        };
        tracing::warn!(failpoint = name, action = %action, "failpoint hit");
        match action.as_str() {
            "error" => Err(FailpointError::Injected(name.to_string())),
            // `fill:DIR`: a full disk under DIR from here on: every journal in
            // DIR padded with blank lines to a page boundary (replay skips
            // them), then one file takes every free block left.
            a if a.starts_with("fill:") => {
                fill(std::path::Path::new(&a["fill:".len()..]));
                Ok(())
            }
            // `sleep:MS`: hold the step here (a test acts on the servers meanwhile).
            a if a.starts_with("sleep:") => {
                let ms: u64 = a["sleep:".len()..].parse().unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Ok(())
            }
            "panic" => panic!("failpoint {name}"),
            "exit" => std::process::exit(99),
            "kill" => {
                let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::SIGKILL);
                // SIGKILL cannot be caught; this line is not reached.
                std::process::exit(137)
            }
            other => Err(FailpointError::UnknownAction {
                name: name.to_string(),
                action: other.to_string(),
            }),
        }
    }

    fn fill(dir: &std::path::Path) {
        use std::io::Write;
        // Every `*.jsonl`, not just the newest: padding is harmless to any
        // journal, and this module then needs nothing of the journal's.
        let journals = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"));
        for j in journals {
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&j) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                let pad = (4096 - len % 4096) % 4096;
                let _ = f.write_all(&vec![b'\n'; pad as usize]);
                let _ = f.sync_all();
            }
        }
        if let Ok(mut f) = std::fs::File::create(dir.join("fill")) {
            let block = vec![0u8; 4096];
            while f.write_all(&block).is_ok() {}
            let _ = f.sync_all();
        }
    }

    pub fn repeat_steps() -> bool {
        std::env::var(REPEAT_ENV).is_ok_and(|v| v == "1")
    }
}

#[cfg(not(any(test, feature = "failpoints")))]
mod imp {
    use super::FailpointError;

    #[inline(always)]
    pub fn hit(_name: &str) -> Result<(), FailpointError> {
        Ok(())
    }

    pub fn repeat_steps() -> bool {
        false
    }
}

pub use imp::{hit, repeat_steps};

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_points_do_nothing() {
        assert!(super::hit("no-such-point").is_ok());
    }
}
