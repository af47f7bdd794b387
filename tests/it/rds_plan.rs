//! `upgrade plan`'s server changes for the RDS topology of rds_readers.rs:
//! every instance created, promoted, renamed and deleted, in order.

use pgsteward::provider::rds::RdsProvider;

use crate::harness::must;
use crate::rds_readers::READERS;
use crate::rds_scripted::{Scripted, SOURCE};

/// `upgrade plan`'s list: every instance created, promoted, renamed and
/// deleted, in order, with classes.
#[test]
fn plan_lists_every_server_change_in_order() {
    use pgsteward::provider::{ReaderFacts, SourceFacts};
    let cfg = |repoint: &str| {
        let toml = format!(
            "[database]\nprimary = \"postgres://s@h/app\"\n[upgrade]\nprovider = \"rds\"\n[upgrade.rds]\nsource_instance = \"{SOURCE}\"\nrepoint = \"{repoint}\"\n"
        );
        must(pgsteward::config::from_figment(
            figment::Figment::from(
                <figment::providers::Toml as figment::providers::Format>::string(&toml),
            ),
            None,
        ))
        .cluster
    };
    let source = SourceFacts {
        id: SOURCE.into(),
        readers: vec![ReaderFacts {
            id: READERS[0].into(),
            class: "db.r5.large".into(),
            new_class: "db.r5.xlarge".into(),
            address: Some("10.0.0.2:5432".into()),
            ..ReaderFacts::default()
        }],
        ..SourceFacts::default()
    };
    let swap = must(RdsProvider::with_api(
        &cfg("identifier-swap"),
        Scripted::with_source(),
    ));
    let list: Vec<(String, String, Option<String>)> =
        pgsteward::upgrade::swap::server_changes(&swap, &source, "u9", "db.r5.2xlarge")
            .into_iter()
            .map(|c| (c.action.to_string(), c.server, c.class))
            .collect();
    let s =
        |a: &str, b: &str, c: Option<&str>| (a.to_string(), b.to_string(), c.map(str::to_string));
    assert_eq!(
        list,
        vec![
            s("create", "platform-postgres-u9", Some("db.r5.2xlarge")),
            s("create", "platform-postgres-ro-1-u9", Some("db.r5.xlarge")),
            s("promote", "platform-postgres-u9", Some("db.r5.2xlarge")),
            s("rename", SOURCE, None),
            s("rename", "platform-postgres-u9", None),
            s("rename", READERS[0], None),
            s("rename", "platform-postgres-ro-1-u9", None),
            s("delete", "platform-postgres-ro-1-old-u9", None),
            s("delete", "platform-postgres-old-u9", None),
        ]
    );
    let pooler = must(RdsProvider::with_api(
        &cfg("pgbouncer"),
        Scripted::with_source(),
    ));
    let changes = pgsteward::upgrade::swap::server_changes(&pooler, &source, "u9", "db.r5.2xlarge");
    let actions: Vec<&str> = changes.iter().map(|c| c.action).collect();
    assert_eq!(
        actions,
        ["create", "create", "promote", "repoint", "delete", "delete"]
    );
    assert!(
        changes[5]
            .detail
            .contains("final snapshot platform-postgres-final"),
        "{:?}",
        changes[5]
    );
    assert!(
        changes[4].detail.contains("SkipFinalSnapshot"),
        "{:?}",
        changes[4]
    );
}
