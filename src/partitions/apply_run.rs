//! One statement of a plan under the session's `lock_timeout`, with
//! lock-race retries (`pg::Retry`) and the blocker report when it gives up
//! (the invariants are in `apply`).

use tokio_postgres::{NoTls, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;

use super::blockers;
use super::exec::{Done, Exec, StepError, UNCANCELLABLE_ATTEMPTS};
use super::report::TableReport;
use crate::pg::{server_message, Backoff, Retry};

impl Exec<'_> {
    /// Runs one statement, or one batch that is a single implicit
    /// transaction, with lock-race retries.
    pub(super) async fn run(&self, sql: &str, report: &mut TableReport) -> Result<Done, StepError> {
        // On the heap (crate::heap): called from many steps, each of which
        // would otherwise hold a slot of run_with's size in a debug build.
        crate::heap::boxed(|| self.run_with(sql, report, true)).await
    }

    /// `cancellable = false` is for clean-up only: it ignores the token and
    /// stops after `UNCANCELLABLE_ATTEMPTS`, each bounded by `lock_timeout`.
    pub(super) async fn run_with(
        &self,
        sql: &str,
        report: &mut TableReport,
        cancellable: bool,
    ) -> Result<Done, StepError> {
        let retries = if cancellable {
            self.cfg.partitions.lock_retries.max(1)
        } else {
            UNCANCELLABLE_ATTEMPTS
        };
        let never = CancellationToken::new();
        let cancel = if cancellable { self.cancel } else { &never };
        let mut retry = Retry::new(retries, Backoff::LOCK, cancel);
        loop {
            let attempt = retry.begin()?;
            // Watch only once a lock race was lost: an observer session per
            // statement would cost a connection each.
            let (res, seen) = if retry.is_last() && cancellable && attempt > 1 {
                blockers::watching(self.cfg, self.pid, self.once(sql, cancel, report)).await
            } else {
                (self.once(sql, cancel, report).await, Vec::new())
            };
            let e = match res {
                Ok(done) => return Ok(done),
                Err(e) => e,
            };
            if retry.again(e.is_lock_race(), &e).await? {
                continue;
            }
            let first_line = sql.lines().next().unwrap_or_default();
            return Err(if e.is_lock_race() {
                self.gave_up(e, attempt, seen, first_line, &[]).await
            } else {
                e.context(first_line)
            });
        }
    }

    /// The error of a statement that lost its lock race `attempts` times,
    /// naming who blocked it (seen while it waited, else the lock holders of
    /// `relations`); also logged.
    pub(super) async fn gave_up(
        &self,
        e: StepError,
        attempts: u32,
        mut seen: Vec<blockers::Blocker>,
        what: &str,
        relations: &[String],
    ) -> StepError {
        if seen.is_empty() && !relations.is_empty() {
            seen = blockers::holders(self.client, relations).await;
        }
        let who = blockers::describe(&seen);
        tracing::warn!(attempts, statement = what, blockers = %who, "lock not granted; giving up until the next pass");
        match e {
            StepError::Sql { code, message } => StepError::Sql {
                code,
                message: format!(
                    "{message} after {attempts} attempts; {who}; the next pass retries [{what}]"
                ),
            },
            other => other,
        }
    }

    /// One attempt of a statement (or a batch that is one implicit
    /// transaction): no retry; the server's message as the error.
    pub(super) async fn once(
        &self,
        sql: &str,
        cancel: &CancellationToken,
        report: &mut TableReport,
    ) -> Result<Done, StepError> {
        let res = tokio::select! {
            r = self.client.simple_query(sql) => r,
            _ = cancel.cancelled() => {
                let _ = self.client.cancel_token().cancel_query(NoTls).await;
                return Err(StepError::Cancelled);
            }
        };
        let msgs = res.map_err(|e| match e.code() {
            Some(code) => StepError::Sql {
                code: code.clone(),
                message: server_message(&e),
            },
            None => StepError::Client(e),
        })?;
        report.statements.push(sql.to_string());
        let mut done = Done {
            count: 0,
            row: Vec::new(),
        };
        for m in &msgs {
            match m {
                SimpleQueryMessage::CommandComplete(n) => done.count = *n,
                SimpleQueryMessage::Row(r) => {
                    done.row = (0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()
                }
                _ => {}
            }
        }
        Ok(done)
    }
}
