//! One loop per scheduled job: sleep until the next cron time (cancellable),
//! run the job to completion, record it, repeat. A job is awaited before the
//! next time is computed, so it never overlaps itself, and ticks missed while it
//! ran are skipped rather than run in a burst.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Schedule;
use crate::metrics::Metrics;
use crate::outcome::ErrorLabel;

/// How one run of a job ended.
#[derive(Debug)]
pub enum JobRun {
    Done,
    /// Not run on purpose (not the leader); not counted as a run.
    Skipped(&'static str),
    /// Logged, counted under `error`, retried at the next tick.
    Failed {
        error: ErrorLabel,
        message: String,
    },
    /// Stopped by shutdown; not counted as a failure.
    Cancelled,
}

/// Runs `job` on `schedule` until `cancel`. With `run_at_start`, the first run
/// is immediate: metrics are filled at once and, after downtime, missing
/// partitions are made without waiting for the next (say hourly) tick.
pub async fn run_job<F, Fut>(
    name: &'static str,
    schedule: Schedule,
    run_at_start: bool,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
    mut job: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = JobRun>,
{
    tracing::info!(job = name, schedule = %schedule, run_at_start, "job scheduled");
    let mut first = run_at_start;
    loop {
        if !std::mem::take(&mut first) {
            let now = Utc::now();
            let Some(next) = schedule.next_after(now) else {
                tracing::warn!(job = name, schedule = %schedule, "schedule never fires again; job idle");
                cancel.cancelled().await;
                return;
            };
            let wait = (next - now).to_std().unwrap_or_default();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        } else if cancel.is_cancelled() {
            return;
        }
        let started = Instant::now();
        let run = job()
            .instrument(tracing::info_span!("job", job = name))
            .await;
        let seconds = started.elapsed().as_secs_f64();
        match run {
            JobRun::Done => {
                // Every outcome at info: an operator reading the log sees the service work.
                tracing::info!(job = name, seconds, "job done");
                metrics.record_job(name, seconds, None);
            }
            JobRun::Skipped(reason) => tracing::info!(job = name, reason, "job skipped"),
            JobRun::Failed { error, message } => {
                tracing::error!(job = name, error = error.as_str(), seconds, detail = %message, "job failed; retried next tick");
                metrics.record_job(name, seconds, Some(error));
            }
            JobRun::Cancelled => {
                tracing::info!(job = name, "job cancelled");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    /// On tokio's paused clock: the test's 4.5 s and the job's 1.3 s runs take
    /// no wall-clock time (the clock jumps to the next timer whenever every
    /// task waits). The cron ticks still come from the wall clock, which does
    /// not move meanwhile, so each wait for the next tick is at most 1 s.
    #[tokio::test(start_paused = true)]
    async fn slow_job_never_overlaps_and_failures_are_counted_then_retried() {
        let metrics = Arc::new(Metrics::new());
        let cancel = CancellationToken::new();
        let running = Arc::new(AtomicUsize::new(0));
        let max_running = Arc::new(AtomicUsize::new(0));
        let starts = Arc::new(Mutex::new(Vec::new()));
        let schedule: Schedule = "* * * * * *".parse().unwrap();
        let job = {
            let (running, max_running, starts) =
                (running.clone(), max_running.clone(), starts.clone());
            move || {
                let (running, max_running, starts) =
                    (running.clone(), max_running.clone(), starts.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    max_running.fetch_max(now, Ordering::SeqCst);
                    let n = {
                        let mut s = starts.lock().unwrap();
                        s.push(tokio::time::Instant::now());
                        s.len() - 1
                    };
                    // Longer than the 1 s period: the next ticks fall inside the run.
                    tokio::time::sleep(Duration::from_millis(1300)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    if n == 0 {
                        JobRun::Failed {
                            error: ErrorLabel::Postgres,
                            message: "server closed the connection".into(),
                        }
                    } else {
                        JobRun::Done
                    }
                }
            }
        };
        let handle = tokio::spawn(run_job(
            "test",
            schedule,
            false,
            cancel.clone(),
            metrics.clone(),
            job,
        ));
        let t0 = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(4500)).await;
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(3), handle)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(max_running.load(Ordering::SeqCst), 1);
        let starts = starts.lock().unwrap().clone();
        assert!(starts.len() >= 2, "{} runs in 4.5 s", starts.len());
        assert!(starts[0] - t0 <= Duration::from_secs(1), "first tick late");
        // Each run starts at the first tick after the previous one ended:
        // never inside it (>= 1.3 s), and the missed ticks are skipped, not
        // waited for or run in a burst (<= 1.3 s + one period).
        for w in starts.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_millis(1300) && gap <= Duration::from_millis(2350),
                "runs {gap:?} apart"
            );
        }
        let text = metrics.encode();
        assert!(
            text.contains("pgsteward_job_failures_total{job=\"test\",error=\"postgres\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pgsteward_job_last_success_timestamp_seconds{job=\"test\"}"),
            "retried and succeeded: {text}"
        );
    }
}
