//! The effect half of `slots`: the source's physical slots made on the new
//! server while it is still a standby, before the pause (`wait_catchup`
//! calls this once the new server has caught up); its PostgreSQL 17+
//! failover slots checked synchronized there before the pause and again
//! before promote, and set after promote to where each consumer stopped
//! (`carry_slots`, logical.rs).
//!
//! Invariant: when `wait_catchup` succeeds, every physical slot in the
//! journaled `SourceFacts::slots` exists on the new server with a
//! `restart_lsn` at or before where its user stands on the old primary
//! (`slots::physical_ready`), so the user, repointed after promote, asks the
//! new primary only for WAL it keeps. Idempotent: a slot already there is
//! kept (a resumed upgrade runs this again). A slot whose user is behind
//! the new server's first WAL and not streaming refuses at once (the wait
//! could not end), before the pause.

use std::time::Duration;

use super::error::UpgradeError;
use super::record::Step;
use super::runner::Saga;
use super::slots::physical_ready;
use super::sql::{CREATE_PHYSICAL_SLOT, PHYSICAL_SLOT_OLD_MINUS_NEW, PHYSICAL_SLOT_ON_NEW};
use crate::provider::SlotKind;

impl Saga {
    /// Makes each carried physical slot on the new server and waits (under
    /// `step_timeout`) until each one's user is past the new slot's start.
    pub(crate) async fn carry_physical_slots(&mut self) -> Result<(), UpgradeError> {
        let source = self.source()?;
        let physical: Vec<String> = source
            .slots
            .iter()
            .filter(|s| s.kind == SlotKind::Physical)
            .map(|s| s.name.clone())
            .collect();
        if physical.is_empty() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.cfg.upgrade.step_timeout.0;
        let endpoint = self.new_endpoint().await?;
        let primary = self.cfg.database.primary.clone();
        for name in &physical {
            loop {
                let limit = self.query_limit();
                let new = self.new_client().await?;
                let row = limit
                    .run(&endpoint, new.query_opt(PHYSICAL_SLOT_ON_NEW, &[name]))
                    .await?;
                let new_restart: Option<String> = match row {
                    Some(r) => r.get(0),
                    None => {
                        limit
                            .run(&endpoint, new.execute(CREATE_PHYSICAL_SLOT, &[name]))
                            .await?;
                        self.progress.say(
                            Step::WaitCatchup,
                            &format!("made physical slot {name} on the new server"),
                        );
                        continue;
                    }
                };
                let Some(new_restart) = new_restart else {
                    return Err(UpgradeError::Step {
                        step: Step::WaitCatchup,
                        detail: format!(
                            "physical slot {name} on the new server reserves no WAL; drop it there \
                             (SELECT pg_drop_replication_slot('{name}')) and run `pgsteward upgrade resume`"
                        ),
                    });
                };
                let limit = self.query_limit();
                let old = self.old_client().await?;
                let row = limit
                    .run(
                        &primary,
                        old.query_opt(PHYSICAL_SLOT_OLD_MINUS_NEW, &[name, &new_restart]),
                    )
                    .await?;
                let diff: Option<f64> = row.as_ref().map(|r| r.get(0));
                if physical_ready(diff) {
                    break;
                }
                // Behind the new server's first WAL and nobody streaming:
                // waiting cannot help, and the new primary could never
                // serve that user. Refuse before the pause, naming the fix.
                if let Some(r) = row.as_ref().filter(|r| !r.get::<_, bool>(2)) {
                    let at: String = r.get(1);
                    return Err(UpgradeError::Step {
                        step: Step::WaitCatchup,
                        detail: format!(
                            "physical slot {name} keeps WAL from {at}, before the new server's first WAL \
                             ({new_restart}), and no one streams from it: the new primary could not serve \
                             its user. Let its user (a standby, pg_receivewal) catch up, or drop the slot \
                             on the primary if it is unused, then `pgsteward upgrade resume`"
                        ),
                    });
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(UpgradeError::Timeout {
                        what: format!(
                            "the user of physical slot {name} past {new_restart}, where the new server's copy starts"
                        ),
                        after: self.cfg.upgrade.step_timeout.0,
                    });
                }
                self.tick(Duration::from_millis(200)).await?;
            }
        }
        Ok(())
    }
}
