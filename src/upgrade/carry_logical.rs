//! Logical slots across the upgrade (PostgreSQL 17+ failover slots; the
//! judgement is `slots`): synchronized to the new server before the pause
//! and before promote, then, after promote, each copy advanced to where its
//! consumer stopped on the old primary (`slots::advance_to`).
//!
//! Invariants: promote never runs while a carried slot is missing, not
//! synchronized, temporary or invalid on the new server (the check is the
//! last thing final_sync does, under the pause deadline, so a failure rolls
//! back). After promote the copy is never moved past the consumer's own
//! position on the old primary (nothing lost) nor left behind it when that
//! position could be read (nothing repeated that the consumer confirmed).

use std::time::Duration;

use super::error::UpgradeError;
use super::fence::flush::parse_lsn;
use super::record::{Output, Step};
use super::saga::Saga;
use super::slots::{advance_to, not_ready, Settle, Synced};
use super::sql::{ADVANCE_SLOT, CARRIED_SLOT_ON_NEW, CARRIED_SLOT_ON_OLD, LOGICAL_SLOTS_ON_NEW};
use crate::provider::SlotKind;

/// The longest a consumer is given to settle (two status intervals of
/// `pg_recvlogical`'s default 10 s, with room); `step_timeout` when shorter.
const SETTLE_AT_MOST: Duration = Duration::from_secs(45);

fn lsn_text(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF)
}

impl Saga {
    /// The carried logical slots (journaled at precheck).
    fn carried_logical(&self) -> Result<Vec<crate::provider::ReplicationSlot>, UpgradeError> {
        Ok(self
            .source()?
            .slots
            .into_iter()
            .filter(|s| s.kind == SlotKind::Logical)
            .collect())
    }

    /// What the new server lacks of the carried logical slots, each with its reason.
    async fn logical_not_ready(&mut self) -> Result<Vec<String>, UpgradeError> {
        let carried = self.carried_logical()?;
        if carried.is_empty() {
            return Ok(Vec::new());
        }
        let endpoint = self.new_endpoint().await?;
        let limit = self.query_limit();
        let new = self.new_client().await?;
        let rows = limit
            .run(&endpoint, new.query(LOGICAL_SLOTS_ON_NEW, &[]))
            .await?;
        let on_new: Vec<Synced> = rows
            .iter()
            .map(|r| Synced {
                name: r.get(0),
                synced: r.get(1),
                temporary: r.get(2),
                invalid: r.get(3),
            })
            .collect();
        Ok(not_ready(&carried, &on_new))
    }

    /// Before the pause: waits (under `step_timeout`) until the new server
    /// has every carried logical slot synchronized and persistent.
    pub(crate) async fn wait_logical_slots_synced(&mut self) -> Result<(), UpgradeError> {
        let deadline = tokio::time::Instant::now() + self.cfg.upgrade.step_timeout.0;
        let mut said = std::time::Instant::now() - Duration::from_secs(10);
        loop {
            let missing = self.logical_not_ready().await?;
            if missing.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(UpgradeError::Step {
                    step: Step::WaitCatchup,
                    detail: format!(
                        "logical slots not synchronized to the new server within upgrade.step_timeout: {}. \
                         A slot becomes persistent there once its consumer confirms a position newer than \
                         what the new server had when it first copied the slot: start or wake its consumer, \
                         then `pgsteward upgrade resume`; the new server's log names what the slot \
                         synchronization worker waits for",
                        missing.join("; ")
                    ),
                });
            }
            if said.elapsed() >= Duration::from_secs(2) {
                self.progress.say(
                    Step::WaitCatchup,
                    &format!("waiting for slot synchronization: {}", missing.join("; ")),
                );
                said = std::time::Instant::now();
            }
            self.tick(Duration::from_millis(200)).await?;
        }
    }

    /// Inside the pause, right before promote: one look, no wait.
    pub(crate) async fn check_logical_slots_synced(&mut self) -> Result<(), UpgradeError> {
        let missing = self.logical_not_ready().await?;
        if missing.is_empty() {
            return Ok(());
        }
        Err(UpgradeError::Step {
            step: Step::FinalSync,
            detail: format!(
                "carried logical slots not ready on the new server before promote: {}",
                missing.join("; ")
            ),
        })
    }

    /// After promote: each carried slot's copy on the new primary advanced
    /// to where its consumer stopped on the old primary.
    pub(crate) async fn carry_slots(&mut self) -> Result<Output, UpgradeError> {
        let carried = self.carried_logical()?;
        if carried.is_empty() {
            return Ok(Output::note("no logical slots to carry"));
        }
        let final_text = self
            .record()
            .step(Step::FinalSync)
            .output
            .final_lsn
            .clone()
            .ok_or_else(|| UpgradeError::MissingFact {
                journal: self.journal.path().to_path_buf(),
                what: "the old primary's final flush position",
                step: Step::FinalSync,
            })?;
        let final_flush = parse_lsn(&final_text).ok_or_else(|| UpgradeError::Step {
            step: Step::CarrySlots,
            detail: format!("journaled final position {final_text:?} is not an LSN"),
        })?;
        let settle_for = SETTLE_AT_MOST.min(self.cfg.upgrade.step_timeout.0);
        let mut notes = Vec::new();
        for slot in carried {
            let name = slot.name;
            let stopped_at = match self
                .consumer_stopped_at(&name, final_flush, settle_for)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    // The old primary does not answer: the copy stays where
                    // synchronization left it, at or before the consumer.
                    notes.push(format!(
                        "{name}: left at its synchronized position (old primary: {e}); its consumer may \
                         receive changes it had already confirmed again"
                    ));
                    continue;
                }
            };
            notes.push(self.advance_copy(&name, stopped_at, final_flush).await?);
        }
        Ok(Output::note(notes.join("; ")))
    }

    /// Where `slot`'s consumer stopped on the old primary, once it settled
    /// ([`Settle`]) or `settle_for` passed (then the last position seen),
    /// and whether it settled.
    async fn consumer_stopped_at(
        &mut self,
        slot: &str,
        final_flush: u64,
        settle_for: Duration,
    ) -> Result<(u64, bool), UpgradeError> {
        let primary = self.cfg.database.primary.clone();
        let until = tokio::time::Instant::now() + settle_for;
        let mut settle = Settle::default();
        loop {
            let limit = self.query_limit();
            let old = self.old_client().await?;
            let row = limit
                .run(&primary, old.query_opt(CARRIED_SLOT_ON_OLD, &[&slot]))
                .await?;
            let Some(row) = row else {
                return Err(UpgradeError::Step {
                    step: Step::CarrySlots,
                    detail: format!("slot {slot} is gone from the old primary"),
                });
            };
            let active: bool = row.get(0);
            let confirmed = row
                .get::<_, Option<String>>(1)
                .as_deref()
                .and_then(parse_lsn)
                .unwrap_or(0);
            let answered: Option<f64> = row.get(2);
            if let Some(p) = settle.observe(active, confirmed, answered, final_flush) {
                return Ok((p, true));
            }
            if tokio::time::Instant::now() >= until {
                return Ok((confirmed, false));
            }
            self.tick(Duration::from_millis(200)).await?;
        }
    }

    /// Advances the new primary's copy of `slot` ([`advance_to`]); the note says what it did.
    async fn advance_copy(
        &mut self,
        slot: &str,
        (stopped_at, settled): (u64, bool),
        final_flush: u64,
    ) -> Result<String, UpgradeError> {
        let endpoint = self.new_endpoint().await?;
        let limit = self.query_limit();
        let new = self.new_client().await?;
        let Some(row) = limit
            .run(&endpoint, new.query_opt(CARRIED_SLOT_ON_NEW, &[&slot]))
            .await?
        else {
            return Err(UpgradeError::Step {
                step: Step::CarrySlots,
                detail: format!(
                    "slot {slot} is not on the new primary although it was synchronized before promote; \
                     recreate it there and resync its consumer from a snapshot"
                ),
            });
        };
        let active: bool = row.get(0);
        let on_new = row
            .get::<_, Option<String>>(1)
            .as_deref()
            .and_then(parse_lsn)
            .unwrap_or(0);
        let unsettled = if settled {
            ""
        } else {
            " (its consumer did not settle in time: it may receive changes it had not confirmed again)"
        };
        if active {
            return Ok(format!(
                "{slot}: its consumer already reads from the new primary (from its own position), left at {}",
                lsn_text(on_new)
            ));
        }
        match advance_to(stopped_at, final_flush, on_new) {
            None => Ok(format!(
                "{slot}: at {} on the new primary, where its consumer stopped{unsettled}",
                lsn_text(on_new)
            )),
            Some(target) => {
                let target = lsn_text(target);
                limit
                    .run(&endpoint, new.query_one(ADVANCE_SLOT, &[&slot, &target]))
                    .await?;
                Ok(format!(
                    "{slot}: advanced from {} to {target} on the new primary, where its consumer stopped{unsettled}",
                    lsn_text(on_new)
                ))
            }
        }
    }
}
