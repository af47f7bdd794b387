use super::*;

const LOCAL: Support = Support {
    failover_slots: true,
    physical_slots: true,
};
const RDS: Support = Support {
    failover_slots: false,
    physical_slots: false,
};

fn logical(name: &str, failover: bool) -> ReplicationSlot {
    ReplicationSlot {
        name: name.into(),
        kind: SlotKind::Logical,
        plugin: Some("pgoutput".into()),
        database: Some("app".into()),
        active: true,
        temporary: false,
        restart_lsn: Some("0/3000028".into()),
        confirmed_flush: Some("0/3000060".into()),
        failover,
        consumer: Some("sub1 at 10.0.0.9 (streaming)".into()),
    }
}

fn physical(name: &str) -> ReplicationSlot {
    ReplicationSlot {
        name: name.into(),
        kind: SlotKind::Physical,
        restart_lsn: Some("0/3000028".into()),
        ..ReplicationSlot::default()
    }
}

fn failed(checks: &[Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect()
}

#[test]
fn before_17_every_logical_slot_refuses_naming_it_and_the_options() {
    let slots = [logical("sub1", false), physical("standby_b")];
    let fails = failed(&judge(&slots, 150_004, LOCAL));
    assert_eq!(fails.len(), 1, "{fails:?}");
    let f = &fails[0];
    for hint in [
        "replication slot sub1",
        "plugin pgoutput",
        "database app",
        "sub1 at 10.0.0.9",
        "confirmed_flush 0/3000060",
        "failover false",
        "before PostgreSQL 17",
        "resync",
    ] {
        assert!(f.contains(hint), "{hint}: {f}");
    }
    // Even a failover slot: 15 has no such thing to synchronize.
    assert_eq!(
        failed(&judge(&[logical("c", true)], 160_000, LOCAL)).len(),
        1
    );
    assert_eq!(carried(&slots, 150_004, LOCAL), vec![physical("standby_b")]);
}

#[test]
fn on_17_failover_slots_are_carried_and_others_name_alter_subscription() {
    let slots = [logical("sub1", true), logical("cdc", false)];
    let fails = failed(&judge(&slots, 170_002, LOCAL));
    assert_eq!(fails.len(), 1, "{fails:?}");
    assert!(fails[0].starts_with("replication slot cdc"), "{fails:?}");
    assert!(fails[0].contains("SET (failover = true)"), "{fails:?}");
    assert!(fails[0].contains("ALTER_REPLICATION_SLOT \"cdc\" (FAILOVER true)"));
    assert_eq!(carried(&slots, 180_000, LOCAL), vec![logical("sub1", true)]);
}

#[test]
fn rds_refuses_logical_slots_and_leaves_its_own_physical_ones() {
    let slots = [logical("sub1", true), physical("rds_us_east_1_db_abc")];
    let checks = judge(&slots, 170_000, RDS);
    let fails = failed(&checks);
    assert_eq!(fails.len(), 1, "{fails:?}");
    assert!(fails[0].contains("does not carry logical slots"));
    assert!(checks
        .iter()
        .any(|c| c.ok && c.detail.contains("provider's own")));
    assert!(carried(&slots, 170_000, RDS).is_empty());
}

#[test]
fn temporary_slots_refuse_and_the_upgrades_own_slot_is_left_alone() {
    let mut t = logical("tmp", true);
    t.temporary = true;
    assert!(matches!(fate(&t, 170_000, LOCAL), Fate::Refuse(_)));
    let own = physical(&standby_slot("pg-u251207050000123"));
    assert_eq!(own.name, "pgsteward_pg_u251207050000123");
    assert_eq!(fate(&own, 150_000, LOCAL), Fate::Own);
    assert!(standby_slot(&"x".repeat(100)).len() <= 63);
    // No slot at all: one passing line says so.
    let none = judge(&[], 150_000, LOCAL);
    assert_eq!(none.len(), 1);
    assert!(none[0].ok);
}

#[test]
fn a_carried_slot_is_ready_only_synchronized_persistent_and_valid() {
    let carried = [logical("a", true), logical("b", true), physical("p")];
    let ready = |name: &str| Synced {
        name: name.into(),
        synced: true,
        temporary: false,
        invalid: None,
    };
    assert!(not_ready(&carried, &[ready("a"), ready("b")]).is_empty());
    let missing = not_ready(&carried, &[ready("a")]);
    assert_eq!(missing, vec!["b: not on the new server yet".to_string()]);
    let mut temp = ready("b");
    temp.temporary = true;
    assert!(not_ready(&carried, &[ready("a"), temp])[0].contains("not yet persistent"));
    let mut bad = ready("b");
    bad.invalid = Some("wal_removed".into());
    assert!(not_ready(&carried, &[ready("a"), bad])[0].contains("wal_removed"));
    let mut own = ready("b");
    own.synced = false;
    assert!(not_ready(&carried, &[ready("a"), own])[0].contains("not a synchronized one"));
}

#[test]
fn physical_copies_keep_what_their_user_still_needs() {
    assert!(physical_ready(None));
    assert!(physical_ready(Some(0.0)));
    assert!(physical_ready(Some(8192.0)));
    assert!(!physical_ready(Some(-1.0)));
}

#[test]
fn the_carry_target_never_passes_the_switch_point() {
    assert_eq!(carry_target(true), Target::Switch);
    assert_eq!(carry_target(false), Target::ConfirmedOld);
}

#[test]
fn a_consumer_settles_when_gone_past_the_end_or_steady_twice() {
    // Gone: its last confirmation is final.
    assert_eq!(Settle::default().observe(false, 10, None, 100), Some(10));
    // Past the final flush: nothing more to confirm.
    assert_eq!(
        Settle::default().observe(true, 120, Some(1.0), 100),
        Some(120)
    );
    // Still working: its position moves between answers.
    let mut s = Settle::default();
    assert_eq!(s.observe(true, 10, Some(1.0), 100), None); // first look
    assert_eq!(s.observe(true, 20, Some(1.0), 100), None); // no new answer
    assert_eq!(s.observe(true, 30, Some(2.0), 100), None); // answer 1
    assert_eq!(s.observe(true, 40, Some(3.0), 100), None); // answer 2, moved
    assert_eq!(s.observe(true, 40, Some(4.0), 100), Some(40)); // steady
                                                               // The first answer after the first look is never enough by itself.
    let mut s = Settle::default();
    assert_eq!(s.observe(true, 10, Some(1.0), 100), None);
    assert_eq!(s.observe(true, 10, Some(2.0), 100), None);
    assert_eq!(s.observe(true, 10, Some(3.0), 100), Some(10));
    // No walsender row (not yet answered): wait.
    assert_eq!(Settle::default().observe(true, 10, None, 100), None);
}

#[test]
fn the_copy_moves_to_the_consumer_never_past_the_switch_nor_back() {
    assert_eq!(advance_to(50, 100, 30), Some(50));
    assert_eq!(advance_to(150, 100, 30), Some(100));
    assert_eq!(advance_to(50, 100, 50), None);
    assert_eq!(advance_to(50, 100, 70), None);
}
