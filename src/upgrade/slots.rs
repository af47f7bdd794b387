//! Replication slots across the upgrade, as a pure judgement: which of the
//! source's slots the new server will have, and a refusal naming each one it
//! would not have (with the operator's options), before anything changes.
//!
//! What the primary can see of its logical consumers is its slots and the
//! walsenders streaming from them: a subscription lives on the subscriber's
//! server, a CDC consumer (Debezium, `pg_recvlogical`) in its own process;
//! on the primary each is a logical slot (plugin, database, confirmed
//! position) and, while connected, a walsender (application name, address).
//! `upgrade plan` lists exactly that.
//!
//! * **Logical slots** are carried only as PostgreSQL 17+ failover slots
//!   synchronized to the new server (`failover = true` on the slot; on the
//!   new server `sync_replication_slots`, `hot_standby_feedback` and a
//!   physical slot of its own on the old primary, `primary_slot_name`). The
//!   new server must show each one synchronized, persistent and valid before
//!   the pause and again right before promote. After promote (`carry_slots`)
//!   the new primary's slot is set to exactly where the consumer stopped on
//!   the old one; see [`carry_target`] for why that loses and repeats nothing.
//!   Any other logical slot refuses the upgrade: a physical copy has none of
//!   the primary's logical slots before 17, nor on 17+ a slot without
//!   failover, and a slot recreated after promote starts at the new primary's
//!   present, so the changes in between would never reach the consumer.
//! * **Physical slots** (another standby, `pg_receivewal`) are created on the
//!   new server while it is still a standby, before the pause, and the pause
//!   waits until each one's user has gone past the point the new slot keeps
//!   WAL from ([`physical_ready`]): when the user is repointed it asks for
//!   WAL the new primary still has.

use crate::provider::{Check, ReplicationSlot, SlotKind};

pub use crate::provider::slotsync::{standby_slot, OWN_PREFIX};

/// What the upgrade does with one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// On the new server before promote, at a position that loses nothing.
    Carry,
    /// The provider keeps it itself (RDS's slots of its own replicas).
    Managed,
    /// The upgrade's own (the new server's slot on the old primary).
    Own,
    /// Would not be on the new primary: the upgrade refuses, saying why and what to do.
    Refuse(String),
}

/// What the provider can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Support {
    /// Synchronizes failover logical slots to the new server (PostgreSQL 17+).
    pub failover_slots: bool,
    /// Creates physical slots on the new server; `false`: they are the
    /// provider's own (RDS) and left to it.
    pub physical_slots: bool,
}

fn consumer(s: &ReplicationSlot) -> String {
    s.consumer
        .clone()
        .unwrap_or_else(|| "no consumer connected".into())
}

/// One slot as the plan lists it: everything an operator needs to find its consumer.
pub fn describe(s: &ReplicationSlot) -> String {
    match s.kind {
        SlotKind::Logical => format!(
            "logical, plugin {}, database {}, {}, confirmed_flush {}, failover {}{}",
            s.plugin.as_deref().unwrap_or("?"),
            s.database.as_deref().unwrap_or("?"),
            consumer(s),
            s.confirmed_flush.as_deref().unwrap_or("none"),
            s.failover,
            if s.temporary { ", temporary" } else { "" }
        ),
        SlotKind::Physical => format!(
            "physical, {}, restart_lsn {}{}",
            consumer(s),
            s.restart_lsn.as_deref().unwrap_or("none (never used)"),
            if s.temporary { ", temporary" } else { "" }
        ),
    }
}

/// Pure: the fate of slot `s` on a source of `version` (`server_version_num`).
pub fn fate(s: &ReplicationSlot, version: i32, support: Support) -> Fate {
    if s.name.starts_with(OWN_PREFIX) && s.kind == SlotKind::Physical {
        return Fate::Own;
    }
    if s.temporary {
        return Fate::Refuse(format!(
            "a temporary slot ends with its session ({}); no server can carry it: \
             let that session finish, then plan again",
            consumer(s)
        ));
    }
    match s.kind {
        SlotKind::Physical if support.physical_slots => Fate::Carry,
        SlotKind::Physical => Fate::Managed,
        SlotKind::Logical => {
            const RESYNC: &str = "or drop the slot before the upgrade and, after it, create it \
                 on the new primary and resync its consumer from a snapshot (a subscription: \
                 ALTER SUBSCRIPTION ... CONNECTION to the new primary, then REFRESH PUBLICATION \
                 WITH (copy_data = true) into emptied tables)";
            if version < 170_000 {
                Fate::Refuse(format!(
                    "before PostgreSQL 17 a replica has none of the primary's logical slots, so the new \
                     primary would not have it: its consumer would stop, or, given a new slot, skip \
                     every change in between. Upgrade PostgreSQL to 17+ first and give the slot \
                     failover = true, {RESYNC}"
                ))
            } else if !support.failover_slots {
                Fate::Refuse(format!(
                    "pgsteward does not carry logical slots to the new server with this provider, \
                     so the new primary would not have it: its consumer would stop, or, given a new \
                     slot, skip every change in between; {RESYNC}"
                ))
            } else if !s.failover {
                Fate::Refuse(format!(
                    "only failover slots are synchronized to a standby: set failover on it \
                     (a subscription, on its server: ALTER SUBSCRIPTION ... DISABLE; \
                     ALTER SUBSCRIPTION ... SET (failover = true); ALTER SUBSCRIPTION ... ENABLE; \
                     another consumer, over a replication connection: \
                     ALTER_REPLICATION_SLOT {} (FAILOVER true)), {RESYNC}",
                    crate::pg::quote_ident(&s.name)
                ))
            } else {
                Fate::Carry
            }
        }
    }
}

/// The slots the upgrade carries (journaled with the source).
pub fn carried(slots: &[ReplicationSlot], version: i32, support: Support) -> Vec<ReplicationSlot> {
    slots
        .iter()
        .filter(|s| fate(s, version, support) == Fate::Carry)
        .cloned()
        .collect()
}

/// One check per slot, in the order `upgrade plan` prints them.
pub fn judge(slots: &[ReplicationSlot], version: i32, support: Support) -> Vec<Check> {
    let mut checks = Vec::new();
    for s in slots {
        let name = format!("replication slot {}", s.name);
        let what = describe(s);
        checks.push(match fate(s, version, support) {
            Fate::Carry => Check::new(
                name,
                true,
                match s.kind {
                    SlotKind::Logical => format!(
                        "{what}: synchronized to the new server, checked before promote, \
                         then set to where its consumer stopped; repoint the consumer after the upgrade"
                    ),
                    SlotKind::Physical => format!(
                        "{what}: made on the new server before the pause, at a position its user is past"
                    ),
                },
            ),
            Fate::Managed => Check::new(name, true, format!("{what}: the provider's own")),
            Fate::Own => Check::new(name, true, format!("{what}: this upgrade's new server")),
            Fate::Refuse(why) => Check::new(name, false, format!("{what}: {why}")),
        });
    }
    if slots.is_empty() {
        checks.push(Check::new(
            "replication slots",
            true,
            "none (no logical consumer or slot-using standby to carry)",
        ));
    }
    checks
}

/// A logical slot on the new server as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    pub name: String,
    pub synced: bool,
    pub temporary: bool,
    /// `invalidation_reason`, when the slot can no longer be used.
    pub invalid: Option<String>,
}

/// Pure: which carried logical slots the new server does not have ready
/// for promote (missing, not synchronized, still temporary: the first
/// synchronization waits for the primary's slot to move past what the
/// standby has, or invalid), each with the reason; empty when all are.
pub fn not_ready(carried: &[ReplicationSlot], on_new: &[Synced]) -> Vec<String> {
    carried
        .iter()
        .filter(|s| s.kind == SlotKind::Logical)
        .filter_map(|s| match on_new.iter().find(|n| n.name == s.name) {
            None => Some(format!("{}: not on the new server yet", s.name)),
            Some(n) if !n.synced => Some(format!(
                "{}: a slot of that name on the new server is not a synchronized one",
                s.name
            )),
            Some(n) if n.temporary => Some(format!(
                "{}: synchronized but not yet persistent (its consumer must confirm a newer position)",
                s.name
            )),
            Some(n) => n
                .invalid
                .as_ref()
                .map(|why| format!("{}: invalidated on the new server ({why})", s.name)),
        })
        .collect()
}

/// Pure: whether the new server's copy of a physical slot (restart at
/// `new_restart`) keeps every WAL record its user still needs: the user
/// has confirmed up to `old_restart` on the old primary and only goes
/// forward, so when it is repointed it asks for WAL from at least there.
/// `diff` is `old_restart - new_restart` in bytes (`None`: the old slot
/// never reserved WAL, so its user asks for nothing older).
pub fn physical_ready(diff: Option<f64>) -> bool {
    diff.map_or(true, |d| d >= 0.0)
}

/// Pure: where the new primary's copy of a logical slot is set after promote.
///
/// * `confirmed_old`: what the consumer confirmed on the old primary, read
///   once it was caught up (past `switch`) or gone.
/// * `switch`: where the new primary's timeline begins (its last replayed
///   record, `pg_last_wal_replay_lsn()` after promote). WAL before it is the
///   same on both servers; WAL after it exists on one of them only.
///
/// The target is the smaller of the two (as `(lsn, lsn)` comparisons done by
/// the server: this function gets `confirmed_old >= switch`).
/// * Nothing lost: every change the consumer has not confirmed lies after
///   the target, and every change committed on the old primary lies before
///   `final_sync`'s flush, which the new server replayed before promote, so
///   the new primary decodes and sends each of them.
/// * Nothing repeated: every change before the target was confirmed by the
///   consumer on the old primary (decoding starts after it); a position past
///   `switch` on the old primary names WAL the new one never had, so it is
///   never the target.
///
/// A consumer that received changes it had not confirmed when it left gets
/// those again from any server; that is its own at-least-once contract.
pub fn carry_target(confirmed_old_past_switch: bool) -> Target {
    if confirmed_old_past_switch {
        Target::Switch
    } else {
        Target::ConfirmedOld
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Switch,
    ConfirmedOld,
}

/// Pure: when a logical slot's consumer on the old primary has confirmed
/// all it will, so its position there is where the new primary's copy
/// starts ([`carry_target`]). Fed one observation of the old primary's slot
/// at a time, after promote (the old primary is fenced and fully flushed:
/// no new change reaches the consumer any more).
///
/// Settled when the consumer is gone (its last confirmation is final), has
/// confirmed past the final flush, or answered twice since the first
/// observation with the same position: a consumer still working through
/// what it received moves its position between two answers. A consumer
/// answers at its own status interval (`pg_recvlogical -s`, 10 s by
/// default; a subscription about as often), so settling takes up to two
/// intervals; the caller bounds it, and past the bound uses the last
/// position seen (nothing lost; that consumer may get changes it had not
/// confirmed again, as after any reconnect).
#[derive(Debug, Clone, Default)]
pub struct Settle {
    /// The consumer's last answer: when (epoch seconds) and the position then.
    last_answer: Option<(f64, u64)>,
    /// Answers seen after the first observation.
    answers: u32,
}

impl Settle {
    /// `active`: a walsender streams from the slot; `confirmed`: the slot's
    /// `confirmed_flush_lsn`; `answered_at`: `pg_stat_replication.reply_time`
    /// of that walsender. `Some(position)` once settled.
    pub fn observe(
        &mut self,
        active: bool,
        confirmed: u64,
        answered_at: Option<f64>,
        final_flush: u64,
    ) -> Option<u64> {
        if !active || confirmed >= final_flush {
            return Some(confirmed);
        }
        let at = answered_at?;
        match self.last_answer {
            None => self.last_answer = Some((at, confirmed)),
            Some((prev_at, prev_pos)) if at > prev_at => {
                self.last_answer = Some((at, confirmed));
                self.answers += 1;
                if self.answers >= 2 && prev_pos == confirmed {
                    return Some(confirmed);
                }
            }
            Some(_) => {}
        }
        None
    }
}

/// Pure: the position the new primary's copy of a carried slot is advanced
/// to: the smaller of where its consumer stopped on the old primary and the
/// old primary's final flush ([`carry_target`]); `None` when the copy is
/// already there or past it (advancing never goes back).
pub fn advance_to(confirmed_old: u64, final_flush: u64, on_new: u64) -> Option<u64> {
    let target = match carry_target(confirmed_old >= final_flush) {
        Target::Switch => final_flush,
        Target::ConfirmedOld => confirmed_old,
    };
    (on_new < target).then_some(target)
}

#[cfg(test)]
#[path = "slots_tests.rs"]
mod tests;
