//! RDS identifiers pgsteward derives: deterministic, within RDS's rules, so a
//! restarted saga finds by name what a crashed one created; and the tags
//! that say which upgrade made an instance and which instance it replaces.

use std::collections::BTreeMap;

use super::Instance;
use crate::pg::fnv1a_32 as fnv1a;

/// Tag on every instance pgsteward creates: the upgrade that made it.
pub const UPGRADE_TAG: &str = "pgsteward:upgrade-id";
/// Tag on the new instance: the instance it replaces.
pub const SOURCE_TAG: &str = "pgsteward:source";
/// Longest RDS DB instance identifier.
pub(super) const MAX_ID_LEN: usize = 63;
/// Longest RDS DB snapshot identifier.
const MAX_SNAPSHOT_ID_LEN: usize = 255;
/// Lower case letters, digits and single hyphens, as RDS identifiers allow.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
            out.push(c);
        }
    }
    out.trim_end_matches('-').to_string()
}

/// `<base>-<suffix>` within RDS's identifier rules (1–`max` characters,
/// letters, digits and hyphens, starting with a letter, no `--`, no trailing
/// hyphen). When too long, `base` is cut and a hash of the full name keeps the
/// result unique and the same on every run.
pub fn rds_identifier(base: &str, suffix: &str, max: usize) -> String {
    let mut base = sanitize(base);
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base = format!("db-{base}").trim_end_matches('-').to_string();
    }
    let suffix = sanitize(suffix);
    let joined = if suffix.is_empty() {
        base.clone()
    } else {
        format!("{base}-{suffix}")
    };
    if joined.len() <= max {
        return joined;
    }
    let hash = format!("{:08x}", fnv1a(&format!("{base}\u{0}{suffix}")));
    // Keep the suffix whole when it fits with a little of the base; it is
    // what tells upgrades apart.
    let suffix = if suffix.len() + hash.len() + 4 > max {
        String::new()
    } else {
        suffix
    };
    let room = max
        - hash.len()
        - 1
        - if suffix.is_empty() {
            0
        } else {
            suffix.len() + 1
        };
    let head = base[..room.min(base.len())].trim_end_matches('-');
    let mut id = format!("{head}-{hash}");
    if !suffix.is_empty() {
        id = format!("{id}-{suffix}");
    }
    id
}

/// The new instance of upgrade `upgrade_id` on `source`: the saga's
/// [`crate::provider::replica_id`], which keeps within RDS's rules for a
/// valid (lower-case) source identifier and an upgrade id of letters and digits.
pub fn rds_replica_id(source: &str, upgrade_id: &str) -> String {
    let id = crate::provider::replica_id(source, upgrade_id);
    if is_valid_identifier(&id) {
        id
    } else {
        rds_identifier(source, upgrade_id, MAX_ID_LEN)
    }
}

/// The name the old primary takes in an identifier swap.
pub fn rds_old_id(source: &str, upgrade_id: &str) -> String {
    rds_identifier(source, &format!("old-{upgrade_id}"), MAX_ID_LEN)
}

/// The final snapshot taken when `instance` is deleted.
pub fn final_snapshot_id(instance: &str) -> String {
    rds_identifier(instance, "final", MAX_SNAPSHOT_ID_LEN)
}

/// Whether `inst` is the new server `new_id` of an upgrade, renamed to
/// `name` (its tags say which instance it replaces and which upgrade made it).
pub fn is_renamed(inst: &Instance, name: &str, new_id: &str) -> bool {
    inst.tags.get(SOURCE_TAG).map(String::as_str) == Some(name)
        && inst
            .tags
            .get(UPGRADE_TAG)
            .is_some_and(|u| rds_replica_id(name, u) == new_id)
}

/// Whether `id` is a valid RDS DB instance identifier.
pub fn is_valid_identifier(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !id.contains("--")
        && !id.ends_with('-')
}

/// Tags for the new instance: the source's own (except AWS's reserved and
/// pgsteward's from earlier upgrades) plus this upgrade's.
pub fn replica_tags(
    source_tags: &BTreeMap<String, String>,
    source_id: &str,
    upgrade_id: &str,
) -> BTreeMap<String, String> {
    let mut tags: BTreeMap<String, String> = source_tags
        .iter()
        .filter(|(k, _)| !k.starts_with("aws:") && !k.starts_with("pgsteward:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tags.insert(UPGRADE_TAG.into(), upgrade_id.into());
    tags.insert(SOURCE_TAG.into(), source_id.into());
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_rds_rules() {
        assert_eq!(
            rds_replica_id("platform-postgres", "u1"),
            "platform-postgres-u1"
        );
        assert_eq!(
            rds_old_id("platform-postgres", "u1"),
            "platform-postgres-old-u1"
        );
        let odd = rds_replica_id("Platform_Postgres", "2026-01-02T03:04:05Z");
        assert_eq!(odd, "platform-postgres-2026-01-02t03-04-05z");
        assert!(is_valid_identifier(&odd));
        let long = "a".repeat(60);
        let a = rds_replica_id(&long, "20260127-abc");
        let b = rds_replica_id(&long, "20260127-abc");
        let c = rds_replica_id(&format!("{long}b"), "20260127-abc");
        assert_eq!(a, b, "deterministic");
        assert_ne!(a, c, "unique after shortening");
        for id in [&a, &c, &rds_old_id(&long, "20260127-abc")] {
            assert!(is_valid_identifier(id), "{id}");
            assert!(id.ends_with("-20260127-abc"), "{id}");
        }
        assert!(is_valid_identifier(&rds_replica_id("9db", "--x--")));
        assert!(!is_valid_identifier("a--b"));
        assert!(!is_valid_identifier("a-"));
        assert!(!is_valid_identifier("1a"));
        assert!(!is_valid_identifier(&"a".repeat(64)));
        assert_eq!(final_snapshot_id("db-old-u1"), "db-old-u1-final");
    }

    #[test]
    fn tags_drop_reserved_and_earlier_upgrade_tags() {
        let src: BTreeMap<String, String> = [
            ("team", "data"),
            ("aws:cloudformation:stack-name", "x"),
            (UPGRADE_TAG, "old"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let tags = replica_tags(&src, "db", "u2");
        assert_eq!(tags.get("team").map(String::as_str), Some("data"));
        assert_eq!(tags.get(UPGRADE_TAG).map(String::as_str), Some("u2"));
        assert_eq!(tags.get(SOURCE_TAG).map(String::as_str), Some("db"));
        assert!(!tags.keys().any(|k| k.starts_with("aws:")));
    }
}
