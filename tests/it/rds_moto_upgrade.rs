//! The `rds` provider's whole upgrade with moto as the control plane and
//! local clusters as the instances' endpoints; the per-database fence RDS
//! needs; the binary's RDS paths (`upgrade plan`, `lag` discovery).

use std::sync::Arc;

use figment::providers::Format;
use pgsteward::provider::rds::{
    final_snapshot_id, rds_replica_id, ApiError, ApiErrorKind, CreateReplica, Instance, RdsApi,
    RdsProvider, SdkRds, UPGRADE_TAG,
};

use crate::moto::Moto;
use crate::rds::{create_source, instance, tags, SOURCE};

// ---------------------------------------------------------------- whole upgrade

/// moto for the control plane; local clusters stand in for the instances'
/// endpoints (moto's are fictitious): the source instance is the harness
/// primary, every `platform-postgres-*` instance is the harness replica, and
/// PromoteReadReplica also promotes that replica, as RDS would.
struct LocalStandIn {
    inner: SdkRds,
    replica: pgsteward::localpg::Cluster,
}

#[async_trait::async_trait]
impl RdsApi for LocalStandIn {
    async fn describe_instance(&self, id: &str) -> Result<Option<Instance>, ApiError> {
        self.inner.describe_instance(id).await
    }
    async fn create_read_replica(&self, req: &CreateReplica) -> Result<(), ApiError> {
        self.inner.create_read_replica(req).await
    }
    async fn promote_read_replica(&self, id: &str) -> Result<(), ApiError> {
        self.inner.promote_read_replica(id).await?;
        self.replica
            .psql("postgres", "SELECT pg_promote()")
            .map_err(|e| ApiError::new(ApiErrorKind::Other, "StandIn", &e.to_string()))?;
        Ok(())
    }
    async fn rename_instance(&self, id: &str, new_id: &str) -> Result<(), ApiError> {
        self.inner.rename_instance(id, new_id).await
    }
    async fn set_backup_retention(&self, id: &str, days: i32) -> Result<(), ApiError> {
        self.inner.set_backup_retention(id, days).await
    }
    async fn delete_instance(&self, id: &str, snap: Option<&str>) -> Result<(), ApiError> {
        self.inner.delete_instance(id, snap).await
    }
    async fn snapshot_status(&self, id: &str) -> Result<Option<String>, ApiError> {
        self.inner.snapshot_status(id).await
    }
}

#[tokio::test]
async fn moto_whole_upgrade_with_local_clusters_as_endpoints() {
    use pgsteward::upgrade::{journal, observe, record, runner};

    let moto = Moto::start();
    let client = moto.client().await;
    create_source(&client, SOURCE, "postgres", 7).await;

    let cluster = crate::harness::TestCluster::start(1);
    let p = &cluster.primary;
    // The steward as on RDS: the master user's grants, nothing more.
    use crate::harness::{must, Grants};
    crate::harness::make_roles(p, Grants::UpgradeRds);
    must(p.psql("postgres", "CREATE DATABASE app"));
    crate::harness::prepare_db_with(p, "app", Grants::UpgradeRds);
    must(p.psql(
        "app",
        "CREATE TABLE t (id int); ALTER TABLE t OWNER TO app_owner",
    ));
    crate::harness::grant_app(p, "app");
    // A database read-only on purpose stays read-only through the fence and its undo.
    must(p.psql("postgres", "CREATE DATABASE archive OWNER app_owner"));
    must(p.psql(
        "postgres",
        "ALTER DATABASE archive SET default_transaction_read_only = on",
    ));
    cluster.wait_replicas_caught_up();
    let pooler = crate::harness::pooler(cluster.path(), &cluster.primary, "app", &[]);
    let state = cluster.path().join("state");
    let toml = format!(
        r#"
[database]
primary = "{primary}"
connect_timeout = "5s"
[upgrade]
provider = "rds"
state_dir = "{state}"
catchup_max_bytes = "1MB"
pause_timeout = "5s"
retire_after = "0s"
step_timeout = "60s"
[upgrade.rds]
source_instance = "{SOURCE}"
region = "us-east-1"
endpoint_url = "{url}"
poll_interval = "20ms"
[upgrade.rds.endpoint_override]
"{SOURCE}" = "127.0.0.1:{pport}"
"{SOURCE}-*" = "127.0.0.1:{rport}"
[cutover]
kind = "pgbouncer"
admin = ["{admin}"]
config_file = "{ini}"
database = "app"
"#,
        primary = crate::harness::steward_url(&cluster.primary, "app"),
        state = state.display(),
        url = moto.url(),
        pport = cluster.primary.port,
        rport = cluster.replicas[0].port,
        admin = pooler.admin_url(),
        ini = pooler.ini.display(),
    );
    let cfg = pgsteward::config::from_figment(
        figment::Figment::from(figment::providers::Toml::string(&toml)),
        None,
    )
    .unwrap()
    .cluster;
    let provider = RdsProvider::with_api(
        &cfg,
        Arc::new(LocalStandIn {
            inner: SdkRds::new(moto.settings()),
            replica: cluster.replicas[0].clone(),
        }),
    )
    .unwrap();

    let mut poolers = pgsteward::pooler::Poolers::from_config(&cfg);
    let pre = observe::prechecks(&cfg, &provider, &mut poolers, "db.r5.2xlarge", None)
        .await
        .unwrap();
    let failed: Vec<_> = pre.checks.iter().filter(|c| !c.ok).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let id = "u1";
    let journal = journal::Journal::create(
        &state,
        record::Event::Created {
            kind: record::UPGRADE_KIND.into(),
            id: id.into(),
            target_class: "db.r5.2xlarge".into(),
            provider: "rds".into(),
            source_primary: cfg.database.primary.to_string(),
            saga: record::SAGA_VERSION,
        },
    )
    .unwrap();
    let mut saga = runner::Saga::new(
        cfg.clone(),
        journal,
        Box::new(provider),
        tokio_util::sync::CancellationToken::new(),
        true,
    );
    saga.drive().await.unwrap();
    assert_eq!(saga.record().phase, record::Phase::Completed);

    // Control plane: replica on the target class with the upgrade's tag, the
    // old primary deleted with a final snapshot.
    let new_id = rds_replica_id(SOURCE, id);
    let db = instance(&client, &new_id).await.expect("new instance");
    assert_eq!(db.db_instance_class(), Some("db.r5.2xlarge"));
    assert_eq!(tags(&db).get(UPGRADE_TAG).map(String::as_str), Some(id));
    assert!(
        instance(&client, SOURCE).await.is_none(),
        "old primary deleted"
    );
    let snaps = client
        .describe_db_snapshots()
        .db_snapshot_identifier(final_snapshot_id(SOURCE))
        .send()
        .await
        .unwrap();
    assert_eq!(snaps.db_snapshots().len(), 1);

    // The old primary stays fenced (per database, as on RDS).
    let ro = crate::harness::query(
        &cluster.primary.url("app"),
        "SHOW default_transaction_read_only",
    )
    .await;
    assert_eq!(ro[0].get::<_, String>(0), "on");

    // Data plane: the stand-in replica is the primary and the pooler writes to it.
    let rows = crate::harness::query(
        &pooler.url("app", "postgres"),
        "INSERT INTO t VALUES (1) RETURNING inet_server_port()",
    )
    .await;
    let port: i32 = rows[0].get(0);
    assert_eq!(port as u16, cluster.replicas[0].port);
    // The new primary: `app` unfenced, `archive` still read-only on purpose.
    let r = &cluster.replicas[0];
    for (db, want) in [("app", "off"), ("archive", "on"), ("postgres", "off")] {
        let ro = crate::harness::query(&r.url(db), "SHOW default_transaction_read_only").await;
        assert_eq!(ro[0].get::<_, String>(0), want, "{db} on the new primary");
    }
    let pause = saga.record().step(record::Step::PauseWrites);
    assert_eq!(
        pause.output.kept_read_only.as_deref(),
        Some(&["archive".to_string()][..])
    );
}

/// RDS refuses ALTER SYSTEM, so the fence is per database. That setting is
/// catalog data and streams to the replica: after promotion the new primary
/// starts read-only too until it is unfenced.
#[tokio::test]
async fn database_fence_blocks_application_writes_and_is_lifted_on_the_new_primary() {
    use pgsteward::provider::fence::{
        fence_databases, terminate_application_sessions, unfence_databases,
    };
    let cluster = crate::harness::TestCluster::start(1);
    let p = &cluster.primary;
    crate::harness::make_roles(p, crate::harness::Grants::UpgradeRds);
    crate::harness::must(p.psql("postgres", "CREATE DATABASE app OWNER app_owner"));
    crate::harness::must(p.psql(
        "app",
        "CREATE TABLE t (id int); ALTER TABLE t OWNER TO app_owner",
    ));
    crate::harness::grant_app(p, "app");
    // Read-only on purpose: kept out of the fence and its undo.
    crate::harness::must(p.psql("postgres", "CREATE DATABASE archive OWNER app_owner"));
    crate::harness::must(p.psql(
        "postgres",
        "ALTER DATABASE archive SET default_transaction_read_only = on",
    ));
    let app_url = |port: u16| {
        crate::harness::with_password(
            &format!("postgres://app@127.0.0.1:{port}/app?sslmode=disable"),
            crate::harness::APP_USER,
            crate::harness::APP_PASSWORD,
        )
    };
    let app = crate::harness::connect(&app_url(p.port)).await;
    app.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();

    let steward = crate::harness::connect(&crate::harness::steward_url(p, "postgres")).await;
    let keep = pgsteward::provider::fence::read_only_databases(&steward)
        .await
        .unwrap();
    assert_eq!(keep, vec!["archive".to_string()]);
    let fenced = fence_databases(&steward, &keep).await.unwrap();
    assert!(!fenced.contains(&"archive".to_string()), "{fenced:?}");
    assert!(
        fenced.contains(&"app".to_string()) && fenced.contains(&"postgres".to_string()),
        "{fenced:?}"
    );
    assert!(terminate_application_sessions(&steward).await.unwrap() >= 1);
    assert!(
        app.batch_execute("INSERT INTO t VALUES (2)").await.is_err(),
        "old session ended"
    );
    let again = crate::harness::connect(&app_url(p.port)).await;
    let err = again
        .batch_execute("INSERT INTO t VALUES (3)")
        .await
        .unwrap_err();
    assert!(
        pgsteward::pg::server_message(&err).contains("read-only"),
        "{err}"
    );
    // Our own session still works: the steward sets its session writable.
    steward.batch_execute("SELECT 1").await.unwrap();

    cluster.wait_replicas_caught_up();
    let r = &cluster.replicas[0];
    crate::harness::must(r.psql("postgres", "SELECT pg_promote()"));
    let new_app = crate::harness::connect(&app_url(r.port)).await;
    let err = new_app
        .batch_execute("INSERT INTO t VALUES (4)")
        .await
        .unwrap_err();
    assert!(
        pgsteward::pg::server_message(&err).contains("read-only"),
        "fence replicated: {err}"
    );
    let new_steward = crate::harness::connect(&crate::harness::steward_url(r, "postgres")).await;
    unfence_databases(&new_steward, &keep).await.unwrap();
    unfence_databases(&new_steward, &keep).await.unwrap();
    let ro = crate::harness::query(&r.url("archive"), "SHOW default_transaction_read_only").await;
    assert_eq!(ro[0].get::<_, String>(0), "on", "archive stays read-only");
    let new_app = crate::harness::connect(&app_url(r.port)).await;
    new_app
        .batch_execute("INSERT INTO t VALUES (5)")
        .await
        .unwrap();
}

/// The binary's own path: `provider = "rds"` in the config file, credentials
/// and region from the environment (aws-config's default chain), the API at
/// `endpoint_url`; API problems exit 1 with the step and the API's message.
#[tokio::test]
async fn moto_upgrade_plan_through_the_binary() {
    let moto = Moto::start();
    let client = moto.client().await;
    create_source(&client, SOURCE, "postgres", 7).await;
    let dir = tempfile::tempdir().unwrap();
    let primary = crate::harness::shared().url("postgres");
    let write = |source: &str| {
        crate::harness::write_config(
            dir.path(),
            &format!(
                "[database]\nprimary = \"{primary}\"\n[upgrade]\nprovider = \"rds\"\nstate_dir = \"{state}\"\n[upgrade.rds]\nsource_instance = \"{source}\"\nendpoint_url = \"{url}\"\n",
                state = dir.path().join("state").display(),
                url = moto.url(),
            ),
        )
    };
    let run = |config: &std::path::Path, args: &[&str]| {
        let mut cmd = crate::harness::pgsteward();
        cmd.arg("--config").arg(config).args(args);
        for k in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_ROLE_ARN",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", crate::moto::REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true");
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let config = write(SOURCE);
    let (code, text) = run(
        &config,
        &["upgrade", "plan", "--target-class", "db.r5.2xlarge"],
    );
    assert!(
        text.contains("[ok] rds engine is postgres") && text.contains("[ok] rds backups enabled"),
        "{text}"
    );
    assert!(text.contains("db.r5.xlarge -> db.r5.2xlarge"), "{text}");
    // The shared test server has no pooler configured etc.; only the RDS checks matter here.
    assert!(code == Some(0) || code == Some(1), "{code:?} {text}");

    let config = write("no-such-instance");
    let (code, text) = run(
        &config,
        &["upgrade", "plan", "--target-class", "db.r5.2xlarge"],
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("[FAIL] rds source exists") && text.contains("upgrade.rds.source_instance"),
        "{text}"
    );

    let config = write("Not_Valid");
    let (code, text) = run(
        &config,
        &["upgrade", "plan", "--target-class", "db.r5.2xlarge"],
    );
    assert_eq!(code, Some(2), "a configuration error: {text}");
    assert!(text.contains("upgrade.rds.source_instance"), "{text}");
}

/// `pgsteward lag` with `provider = "rds"` and no `database.replicas`: the
/// replicas are the source's `ReadReplicaDBInstanceIdentifiers`.
#[tokio::test]
async fn moto_lag_discovers_replicas_from_rds() {
    let moto = Moto::start();
    let client = moto.client().await;
    create_source(&client, SOURCE, "postgres", 7).await;
    client
        .create_db_instance_read_replica()
        .db_instance_identifier("reporting")
        .source_db_instance_identifier(SOURCE)
        .send()
        .await
        .unwrap();
    let cluster = crate::harness::TestCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let config = crate::harness::write_config(
        dir.path(),
        &format!(
            "[database]\nprimary = \"{primary}\"\n[upgrade]\nprovider = \"rds\"\n[upgrade.rds]\nsource_instance = \"{SOURCE}\"\nendpoint_url = \"{url}\"\n[upgrade.rds.endpoint_override]\n\"reporting\" = \"127.0.0.1:{port}\"\n",
            primary = cluster.primary.url("postgres"),
            url = moto.url(),
            port = cluster.replicas[0].port,
        ),
    );
    let out = crate::harness::pgsteward()
        .arg("--config")
        .arg(&config)
        .args(["lag", "--output", "json"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", crate::moto::REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("127.0.0.1:{}", cluster.replicas[0].port)),
        "the discovered replica is checked: {text}"
    );
    // Each RDS replica carries its instance and region (from moto's ARN).
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(json["replicas"][0]["instance"], "reporting", "{text}");
    assert_eq!(json["replicas"][0]["region"], crate::moto::REGION, "{text}");
}
