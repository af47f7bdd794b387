//! The `rds` provider: its control-plane calls end to end against moto's RDS
//! server, and the status sequences moto cannot show (it makes every
//! instance `available` at once) against a scripted RDS behind the
//! provider's own `RdsApi` seam. Each scripted test says which real RDS
//! behaviour it stands for.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_rds::types::Tag;
use figment::providers::Format;
use pgsteward::config::Cluster;
use pgsteward::provider::rds::{
    final_snapshot_id, rds_old_id, rds_replica_id, ApiErrorKind, CreateReplica, RdsApi,
    RdsProvider, SdkRds, UPGRADE_TAG,
};
use pgsteward::provider::{Provider, ServerState, SourceFacts};

use crate::moto::Moto;

pub(crate) const SOURCE: &str = "platform-postgres";

pub(crate) fn config(endpoint_url: &str, repoint: &str, step_timeout: &str) -> Cluster {
    let toml = format!(
        r#"
[database]
primary = "postgres://steward@db.example:5432/app?sslmode=verify-full"
[upgrade]
provider = "rds"
step_timeout = "{step_timeout}"
[upgrade.rds]
source_instance = "{SOURCE}"
region = "us-east-1"
endpoint_url = "{endpoint_url}"
repoint = "{repoint}"
poll_interval = "5ms"
[upgrade.rds.endpoint_override]
"{SOURCE}" = "127.0.0.1:15432"
"#
    );
    pgsteward::config::from_figment(
        figment::Figment::from(figment::providers::Toml::string(&toml)),
        None,
    )
    .unwrap()
    .cluster
}

pub(crate) fn facts() -> SourceFacts {
    SourceFacts {
        id: SOURCE.into(),
        ..SourceFacts::default()
    }
}

// ---------------------------------------------------------------- moto

pub(crate) async fn create_source(
    client: &aws_sdk_rds::Client,
    id: &str,
    engine: &str,
    retention: i32,
) {
    client
        .create_db_instance()
        .db_instance_identifier(id)
        .engine(engine)
        .db_instance_class("db.r5.xlarge")
        .allocated_storage(100)
        .master_username("steward")
        .master_user_password("not-a-secret-1")
        .backup_retention_period(retention)
        .tags(Tag::builder().key("team").value("data").build())
        .send()
        .await
        .unwrap();
}

pub(crate) async fn instance(
    client: &aws_sdk_rds::Client,
    id: &str,
) -> Option<aws_sdk_rds::types::DbInstance> {
    match client
        .describe_db_instances()
        .db_instance_identifier(id)
        .send()
        .await
    {
        Ok(out) => out.db_instances().first().cloned(),
        Err(_) => None,
    }
}

pub(crate) fn tags(db: &aws_sdk_rds::types::DbInstance) -> BTreeMap<String, String> {
    db.tag_list()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or("").to_string(),
                t.value().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn moto_provider(moto: &Moto, repoint: &str) -> RdsProvider {
    let cfg = config(&moto.url(), repoint, "30s");
    RdsProvider::with_api(&cfg, Arc::new(SdkRds::new(moto.settings()))).unwrap()
}

#[tokio::test]
async fn moto_upgrade_through_the_pooler_creates_promotes_and_retires_with_a_final_snapshot() {
    let moto = Moto::start();
    let client = moto.client().await;
    create_source(&client, SOURCE, "postgres", 7).await;
    let p = moto_provider(&moto, "pgbouncer").await;

    let pre = p.precheck("db.r5.2xlarge").await.unwrap();
    assert!(pre.checks.iter().all(|c| c.ok), "{:?}", pre.checks);
    assert_eq!(
        pre.source.extra.get("class").map(String::as_str),
        Some("db.r5.xlarge")
    );
    let same = p.precheck("db.r5.xlarge").await.unwrap();
    assert!(same
        .checks
        .iter()
        .any(|c| !c.ok && c.detail.contains("already runs on")));

    let info = p
        .create_replica(&pre.source, "u1", "db.r5.2xlarge")
        .await
        .unwrap();
    let id = rds_replica_id(SOURCE, "u1");
    assert_eq!(info.id, id);
    let db = instance(&client, &id).await.expect("replica exists");
    assert_eq!(db.db_instance_class(), Some("db.r5.2xlarge"));
    assert_eq!(
        db.read_replica_source_db_instance_identifier(),
        Some(SOURCE)
    );
    let t = tags(&db);
    assert_eq!(t.get(UPGRADE_TAG).map(String::as_str), Some("u1"));
    assert_eq!(
        t.get("team").map(String::as_str),
        Some("data"),
        "source tags copied: {t:?}"
    );

    // Idempotent: a second call (a resumed saga) adopts, it does not create again.
    let again = p
        .create_replica(&pre.source, "u1", "db.r5.2xlarge")
        .await
        .unwrap();
    assert_eq!(again.id, id);
    let all = client.describe_db_instances().send().await.unwrap();
    assert_eq!(all.db_instances().len(), 2);
    assert_eq!(p.describe(&id).await.unwrap().state, ServerState::Available);
    assert_eq!(
        p.describe("nope").await.unwrap().state,
        ServerState::Missing
    );

    // moto accepts PromoteReadReplica but keeps listing the instance as a
    // replica; that the source field clears is checked against the scripted RDS.
    p.promote(&id).await.unwrap();
    p.promote(&id).await.unwrap();

    // The saga renames only when the provider swaps identifiers.
    assert!(!p.swaps_identifiers(), "pooler mode renames nothing");
    assert!(instance(&client, SOURCE).await.is_some());

    p.retire_old(&pre.source).await.unwrap();
    p.retire_old(&pre.source).await.unwrap();
    assert!(
        instance(&client, SOURCE)
            .await
            .map_or(true, |d| d.db_instance_status() == Some("deleting")),
        "old primary deleted"
    );
    let snaps = client
        .describe_db_snapshots()
        .db_snapshot_identifier(final_snapshot_id(SOURCE))
        .send()
        .await
        .unwrap();
    assert_eq!(snaps.db_snapshots().len(), 1, "final snapshot taken");
    assert_eq!(
        snaps.db_snapshots()[0].db_instance_identifier(),
        Some(SOURCE)
    );
}

#[tokio::test]
async fn moto_identifier_swap_moves_the_name_to_the_new_primary() {
    let moto = Moto::start();
    let client = moto.client().await;
    create_source(&client, SOURCE, "postgres", 7).await;
    let p = moto_provider(&moto, "identifier-swap").await;
    let id = p
        .create_replica(&facts(), "u7", "db.r5.2xlarge")
        .await
        .unwrap()
        .id;
    p.promote(&id).await.unwrap();
    assert!(p.swaps_identifiers());
    // The saga's two steps after RESUME.
    p.rename_aside(SOURCE, "u7", &id).await.unwrap();
    p.rename_in(&id, SOURCE).await.unwrap();

    let named = instance(&client, SOURCE).await.expect("the name is held");
    assert_eq!(
        named.db_instance_class(),
        Some("db.r5.2xlarge"),
        "new primary holds the name"
    );
    assert_eq!(
        tags(&named).get(UPGRADE_TAG).map(String::as_str),
        Some("u7")
    );
    let old = rds_old_id(SOURCE, "u7");
    let old_db = instance(&client, &old).await.expect("old primary renamed");
    assert_eq!(old_db.db_instance_class(), Some("db.r5.xlarge"));
    assert!(instance(&client, &id).await.is_none());

    // The saga keeps asking for the replica by its first name: it is found
    // under the source's name, with that name's endpoint.
    let seen = p.describe(&id).await.unwrap();
    assert_eq!(seen.id, SOURCE);
    assert_eq!(seen.state, ServerState::Available);
    assert!(seen.endpoint.unwrap().expose().contains("127.0.0.1:15432"));

    // A resumed saga repeats the steps: nothing more happens.
    p.rename_aside(SOURCE, "u7", &id).await.unwrap();
    p.rename_in(&id, SOURCE).await.unwrap();
    assert!(instance(&client, &old).await.is_some());

    p.retire_old(&facts()).await.unwrap();
    let snaps = client
        .describe_db_snapshots()
        .db_snapshot_identifier(final_snapshot_id(&old))
        .send()
        .await
        .unwrap();
    assert_eq!(snaps.db_snapshots().len(), 1);
    assert!(
        instance(&client, SOURCE).await.is_some(),
        "the new primary is kept"
    );
}

#[tokio::test]
async fn moto_prechecks_refusals_and_replica_discovery() {
    let moto = Moto::start();
    let client = moto.client().await;
    create_source(&client, SOURCE, "postgres", 0).await;
    let p = moto_provider(&moto, "pgbouncer").await;
    let pre = p.precheck("db.r5.2xlarge").await.unwrap();
    let backups = pre
        .checks
        .iter()
        .find(|c| c.name == "rds backups enabled")
        .unwrap();
    assert!(
        !backups.ok && backups.detail.contains("--backup-retention-period"),
        "{backups:?}"
    );

    // An instance with the replica's name that pgsteward did not make is never adopted.
    let taken = rds_replica_id(SOURCE, "u2");
    create_source(&client, &taken, "postgres", 1).await;
    let err = p
        .create_replica(&facts(), "u2", "db.r5.2xlarge")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("create_replica") && err.contains(UPGRADE_TAG),
        "{err}"
    );
    let err = p.delete_replica(&taken).await.unwrap_err().to_string();
    assert!(err.contains("did not create it"), "{err}");

    // Discovery lists the source's read replicas with their SQL endpoints.
    client
        .modify_db_instance()
        .db_instance_identifier(SOURCE)
        .backup_retention_period(7)
        .apply_immediately(true)
        .send()
        .await
        .unwrap();
    let r = p
        .create_replica(&facts(), "u3", "db.r5.2xlarge")
        .await
        .unwrap();
    // A reporting replica somebody else made.
    client
        .create_db_instance_read_replica()
        .db_instance_identifier("reporting")
        .source_db_instance_identifier(SOURCE)
        .send()
        .await
        .unwrap();
    let found = p.discover_replicas().await.unwrap();
    let ids: Vec<&str> = found.iter().map(|r| r.id.as_str()).collect();
    assert!(
        ids.contains(&r.id.as_str()) && ids.contains(&"reporting"),
        "{found:?}"
    );
    assert!(
        found.iter().all(|r| r
            .endpoint
            .as_ref()
            .is_ok_and(|e| e.expose().contains("sslmode=verify-full"))),
        "endpoints keep the primary's TLS settings: {found:?}"
    );
    // Same-region replicas carry the source's region (from its ARN or the configuration).
    assert!(found.iter().all(|r| r.region.is_some()), "{found:?}");
    // The old primary still feeds a replica: retiring it would turn that into a second writable node.
    let err = p.retire_old(&facts()).await.unwrap_err().to_string();
    assert!(err.contains("still feeds read replicas reporting"), "{err}");
    // An unpromoted replica of ours can be removed (upgrade abort).
    p.delete_replica(&r.id).await.unwrap();
    p.delete_replica(&r.id).await.unwrap();

    // Engine check: a MySQL source is refused before anything is made.
    let mysql = Moto::start();
    let mclient = mysql.client().await;
    create_source(&mclient, SOURCE, "mysql", 7).await;
    let mp = moto_provider(&mysql, "pgbouncer").await;
    let pre = mp.precheck("db.r5.2xlarge").await.unwrap();
    assert!(pre
        .checks
        .iter()
        .any(|c| c.name == "rds engine is postgres" && !c.ok));
}

#[tokio::test]
async fn moto_api_errors_reach_the_operator_with_the_api_message() {
    let moto = Moto::start();
    let api = SdkRds::new(moto.settings());
    let err = api
        .create_read_replica(&CreateReplica {
            id: "r1".into(),
            source: "does-not-exist".into(),
            class: "db.r5.large".into(),
            ..CreateReplica::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::NotFound, "{err:?}");
    assert!(err.to_string().contains("does-not-exist"), "{err}");

    // An unreachable API: retried as transient until the step's deadline, then
    // reported with the step and the call.
    let port = pgsteward::localpg::free_port().unwrap();
    let cfg = config(&format!("http://127.0.0.1:{port}"), "pgbouncer", "1s");
    let mut settings = moto.settings();
    settings.endpoint_url = Some(format!("http://127.0.0.1:{port}"));
    let p = RdsProvider::with_api(&cfg, Arc::new(SdkRds::new(settings))).unwrap();
    let err = p.precheck("db.r5.2xlarge").await.unwrap_err().to_string();
    assert!(
        err.contains("precheck") && err.contains("DescribeDBInstances"),
        "{err}"
    );
}
