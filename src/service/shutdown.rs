//! Stopping cleanly: the signal that starts it, and a tracker that knows its
//! tasks by name so a drain that runs past its deadline says who is stuck.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::task::TaskTracker;

/// Resolves on the first SIGTERM or SIGINT. Installing the handlers can fail
/// only when the runtime has no signal driver, which `main` always enables.
pub fn signal() -> std::io::Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Spawned tasks, by name. Every task watches the service's cancellation token;
/// the tracker only waits for them.
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    running: Arc<Mutex<Vec<(u64, &'static str)>>>,
    next_id: Arc<AtomicU64>,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut r) = self.running.lock() {
            r.push((id, name));
        }
        let running = self.running.clone();
        self.tracker.spawn(async move {
            fut.await;
            if let Ok(mut r) = running.lock() {
                r.retain(|(i, _)| *i != id);
            }
            tracing::debug!(task = name, "task ended");
        });
    }

    /// Names of the tasks still running.
    pub fn running(&self) -> Vec<&'static str> {
        self.running
            .lock()
            .map(|r| r.iter().map(|(_, n)| *n).collect())
            .unwrap_or_default()
    }

    /// Waits up to `deadline` for every task to end. Returns the names of those
    /// that did not (they are abandoned: the process is about to exit).
    pub async fn drain(&self, deadline: Duration) -> Vec<&'static str> {
        self.tracker.close();
        match tokio::time::timeout(deadline, self.tracker.wait()).await {
            Ok(()) => Vec::new(),
            Err(_) => self.running(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn drain_names_stragglers() {
        let tasks = Tasks::new();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tasks.spawn("polite", async move { c.cancelled().await });
        tasks.spawn("stuck", std::future::pending());
        cancel.cancel();
        let left = tasks.drain(Duration::from_millis(100)).await;
        assert_eq!(left, vec!["stuck"]);
    }
}
