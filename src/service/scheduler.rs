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

/// How one run of a job ended.
#[derive(Debug)]
pub enum JobRun {
    Done,
    /// Not run on purpose (not the leader); not counted as a run.
    Skipped(&'static str),
    /// Logged, counted under `error`, retried at the next tick.
    Failed {
        error: &'static str,
        message: String,
    },
    /// Stopped by shutdown; not counted as a failure.
    Cancelled,
}

pub async fn run_job<F, Fut>(
    name: &'static str,
    schedule: Schedule,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
    mut job: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = JobRun>,
{
    tracing::info!(job = name, schedule = %schedule, "job scheduled");
    loop {
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
        let started = Instant::now();
        let run = job()
            .instrument(tracing::info_span!("job", job = name))
            .await;
        let seconds = started.elapsed().as_secs_f64();
        match run {
            JobRun::Done => {
                tracing::debug!(job = name, seconds, "job done");
                metrics.record_job(name, seconds, None);
            }
            JobRun::Skipped(reason) => tracing::debug!(job = name, reason, "job skipped"),
            JobRun::Failed { error, message } => {
                tracing::error!(job = name, error, seconds, detail = %message, "job failed; retried next tick");
                metrics.record_job(name, seconds, Some(error));
            }
            JobRun::Cancelled => {
                tracing::info!(job = name, "job cancelled");
                return;
            }
        }
    }
}
