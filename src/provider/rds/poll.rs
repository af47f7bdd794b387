//! Calling RDS and waiting for it: every call retried with backoff while it
//! is throttled or fails transiently, every wait a poll of
//! `DescribeDBInstances` with a growing, jittered pause, both bounded by
//! `upgrade.step_timeout` and ended by cancellation.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    classify, final_snapshot_id, ApiError, ApiErrorKind, Instance, RdsError, RdsProvider,
    StatusClass,
};

/// Ceiling of the pause between polls and between retries of a throttled call.
const MAX_PAUSE: Duration = Duration::from_secs(60);

impl RdsProvider {
    pub(super) async fn pause(&self, d: Duration) -> Result<(), RdsError> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.cancel.cancelled() => Err(RdsError::Cancelled),
        }
    }

    /// The next pause: half again as long, capped, with ±10 % jitter so many
    /// stewards do not poll in lock step.
    pub(super) fn grow(d: Duration) -> Duration {
        let next = (d + d / 2).min(MAX_PAUSE);
        let jitter = 0.9 + fastrand::f64() * 0.2;
        next.mul_f64(jitter)
    }

    /// One API call, retried with backoff while it is throttled or fails
    /// transiently, until `deadline`.
    pub(super) async fn call<T, F, Fut>(
        &self,
        step: &'static str,
        op: &'static str,
        id: &str,
        deadline: Instant,
        mut f: F,
    ) -> Result<T, RdsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut pause = (self.cfg.poll_interval.0 / 4).max(Duration::from_millis(1));
        loop {
            if self.cancel.is_cancelled() {
                return Err(RdsError::Cancelled);
            }
            match f().await {
                Ok(v) => return Ok(v),
                Err(e)
                    if matches!(e.kind, ApiErrorKind::Throttled | ApiErrorKind::Transient)
                        && Instant::now() + pause < deadline =>
                {
                    tracing::warn!(step, op, id, error = %e, retry_in = ?pause, "rds call failed; retrying");
                    self.pause(pause).await?;
                    pause = Self::grow(pause);
                }
                Err(source) => {
                    return Err(RdsError::Api {
                        step,
                        op,
                        id: id.to_string(),
                        source,
                    })
                }
            }
        }
    }

    pub(super) async fn describe_raw(
        &self,
        step: &'static str,
        id: &str,
        deadline: Instant,
    ) -> Result<Option<Instance>, RdsError> {
        self.call(step, "DescribeDBInstances", id, deadline, || {
            self.api.describe_instance(id)
        })
        .await
    }

    /// Polls `id` until `ready` says yes. A terminal status ends the wait with
    /// its hint; a missing instance waits (RDS lists a new or renamed instance
    /// a little later) unless `missing_ok` makes it the goal.
    pub(super) async fn wait_for(
        &self,
        step: &'static str,
        id: &str,
        want: &str,
        ready: impl Fn(Option<&Instance>) -> bool,
    ) -> Result<Option<Instance>, RdsError> {
        let started = Instant::now();
        let deadline = started + self.step_timeout;
        let mut pause = self.cfg.poll_interval.0;
        loop {
            let inst = self.describe_raw(step, id, deadline).await?;
            if ready(inst.as_ref()) {
                return Ok(inst);
            }
            if let Some(i) = &inst {
                if let StatusClass::Terminal(hint) = classify(&i.status) {
                    return Err(RdsError::Terminal {
                        step,
                        id: id.to_string(),
                        status: i.status.clone(),
                        hint: hint.to_string(),
                    });
                }
            }
            let last = inst
                .as_ref()
                .map_or("not found".to_string(), |i| i.status.clone());
            tracing::debug!(step, id, status = %last, want, "waiting for rds instance");
            if Instant::now() + pause > deadline {
                return Err(RdsError::Timeout {
                    step,
                    id: id.to_string(),
                    last,
                    waited: started.elapsed(),
                });
            }
            self.pause(pause).await?;
            pause = Self::grow(pause);
        }
    }

    /// Waits until `id` exists and is `available`.
    pub async fn wait_available(&self, step: &'static str, id: &str) -> Result<Instance, RdsError> {
        let inst = self
            .wait_for(step, id, "available", |i| {
                i.is_some_and(|i| i.status == "available")
            })
            .await?;
        inst.ok_or_else(|| RdsError::refused(step, format!("{id} vanished")))
    }

    /// `DeleteDBInstance` with a final snapshot, accepted once. A snapshot that
    /// already exists under our name means an earlier attempt got this far.
    pub(super) async fn delete_with_snapshot(
        &self,
        step: &'static str,
        id: &str,
    ) -> Result<(), RdsError> {
        let snapshot = final_snapshot_id(id);
        let res = self
            .call(step, "DeleteDBInstance", id, self.deadline(), || {
                self.api.delete_instance(id, Some(&snapshot))
            })
            .await;
        match res {
            Ok(()) => {
                tracing::info!(id, snapshot = %snapshot, "old primary deleted with a final snapshot");
                Ok(())
            }
            Err(RdsError::Api { source, .. }) if matches!(source.kind, ApiErrorKind::NotFound) => {
                Ok(())
            }
            Err(RdsError::Api { source, .. })
                if source.kind == ApiErrorKind::InvalidState
                    || source.kind == ApiErrorKind::AlreadyExists =>
            {
                // Already deleting (a retried call) is success; busy otherwise: wait and retry once.
                let inst = self.describe_raw(step, id, self.deadline()).await?;
                match inst {
                    None => Ok(()),
                    Some(i) if classify(&i.status) == StatusClass::Deleting => Ok(()),
                    Some(_) => {
                        self.wait_available(step, id).await?;
                        self.call(step, "DeleteDBInstance", id, self.deadline(), || {
                            self.api.delete_instance(id, Some(&snapshot))
                        })
                        .await
                    }
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Renames `from` to `to` and waits until `to` is available. Idempotent:
    /// a rename already done or under way is waited for, not repeated.
    pub(super) async fn rename(
        &self,
        step: &'static str,
        from: &str,
        to: &str,
    ) -> Result<(), RdsError> {
        let deadline = self.deadline();
        let src = self.describe_raw(step, from, deadline).await?;
        let dst = self.describe_raw(step, to, deadline).await?;
        match (src, dst) {
            (Some(_), Some(_)) => {
                return Err(RdsError::refused(
                    step,
                    format!("both {from} and {to} exist; cannot rename {from} to {to}"),
                ))
            }
            (None, _) => {}
            (Some(s), None) => {
                if s.status != "renaming" {
                    self.wait_available(step, from).await?;
                    let res = self
                        .call(
                            step,
                            "ModifyDBInstance(NewDBInstanceIdentifier)",
                            from,
                            deadline,
                            || self.api.rename_instance(from, to),
                        )
                        .await;
                    match res {
                        Ok(()) => tracing::info!(from, to, "rds instance rename requested"),
                        // A retry of an accepted rename finds the old name gone.
                        Err(RdsError::Api { source, .. })
                            if source.kind == ApiErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                self.wait_for(step, from, "the old name to be free", |i| i.is_none())
                    .await?;
            }
        }
        self.wait_available(step, to).await?;
        Ok(())
    }
}
