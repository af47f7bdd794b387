//! The pooler's unit tests (a file of their own: mod.rs stays under 600 lines).

use super::*;

#[tokio::test]
async fn entries_reach_a_server_by_name_or_address() {
    let servers = Servers::resolve(&[("127.0.0.1".into(), 5432)]).await;
    assert!(servers.reaches("127.0.0.1", 5432).await);
    assert!(servers.reaches("localhost", 5432).await);
    assert!(!servers.reaches("127.0.0.1", 5433).await);
    assert!(!servers.reaches("10.255.255.1", 5432).await);
    assert!(!servers.reaches("", 5432).await);
}

/// Nothing pgsteward sends through a PgBouncer carries startup
/// `options`, whatever the configured strings hold: the admin console's
/// sessions and the verify write's both come from [`pooler_spec`].
#[test]
fn no_pooler_connection_carries_startup_options() {
    let admin = ConnString::new(
        "postgres://pgbouncer:pw@127.0.0.1:6432/pgbouncer?options=-c%20statement_timeout%3D5000",
    );
    let spec = pooler_spec(&admin).unwrap();
    assert_eq!(spec.config.get_options(), None);
    assert_eq!(spec.config.get_dbname(), Some("pgbouncer"));
    let kv = ConnString::new(
        "host=pooler port=6432 user=pgbouncer dbname=pgbouncer options='-c work_mem=1MB'",
    );
    assert_eq!(pooler_spec(&kv).unwrap().config.get_options(), None);
    let poolers = Poolers {
        sources: Vec::new(),
        endpoints: vec![Endpoint::new(
            0,
            Instance {
                key: "127.0.0.1:6432".into(),
                name: admin.to_string(),
                admin,
            },
            None,
        )],
        members_known: true,
        connect_timeout: Duration::from_secs(1),
        query_timeout: Duration::from_secs(1),
        deadline: None,
        database: "app".into(),
        servers: Vec::new(),
        every_entry: false,
    };
    let steward = crate::pg::ConnSpec::parse(
        "postgres://steward:pw@db:5432/app?options=-c%20statement_timeout%3D5000",
    )
    .unwrap();
    let client = poolers.client_url(&steward).unwrap();
    let spec = pooler_spec(&client).unwrap();
    assert_eq!(spec.config.get_options(), None);
    assert_eq!(spec.config.get_user(), Some("steward"));
    assert_eq!(spec.config.get_dbname(), Some("app"));
    assert!(!client.expose().contains("options"));
}
