//! `pgsteward demo` end to end: its own servers, its own client (the shared
//! `pgsteward::workload`), an upgrade that loses nothing.

use crate::harness::pgsteward;

#[test]
fn the_demo_upgrades_under_load_and_finds_every_commit() {
    let out = pgsteward().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let line = |what: &str| {
        stdout
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} in\n{stdout}"))
            .to_string()
    };
    assert!(line("client errors:").ends_with(" 0"), "{stdout}");
    let found = line("acknowledged commits on new primary:");
    assert!(found.contains("(all)"), "{stdout}");
    // The client wrote through the whole upgrade, not just before it.
    let n: usize = found
        .split_whitespace()
        .rev()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {found:?}"));
    assert!(n >= 100, "{stdout}");
}
