//! A source with one reader in its own region and one in another region,
//! against the scripted RDS (rds_scripted.rs). RDS lists the cross-region
//! reader by its ARN and `DescribeDBInstances` in the source's region does
//! not find it (the scripted RDS keys instances by identifier, so an ARN is
//! "not found", as on AWS). Local clusters stand in for the source and both
//! readers (the cross-region one through `endpoint_override`).
//!
//! Checked: `upgrade plan` fails (exit 1) and `upgrade start` refuses at
//! precheck, naming the reader, its region and the fix, with no mutating RDS
//! call and no journal; `pgsteward lag` reports each reader's region (text
//! and JSON), and a cross-region reader it cannot reach is listed unchecked;
//! retire_old names a cross-region replica with its region.

use std::sync::Arc;

use pgsteward::cli::OutputFormat;
use pgsteward::config::Cluster;
use pgsteward::localpg::{LocalPgBouncer, PgBouncerDatabase};
use pgsteward::provider::rds::{Instance, RdsProvider};
use pgsteward::provider::{Provider, SourceFacts};
use pgsteward::upgrade::{journal, observe, plan_with, start_with, UpgradeError};

use crate::harness::{self, must, TestCluster};
use crate::rds_scripted::{Scripted, SOURCE};

const READER: &str = "platform-postgres-ro-1";
const WEST: &str = "reporting-west";
const WEST_ARN: &str = "arn:aws:rds:us-west-2:123456789012:db:reporting-west";
const SOURCE_ARN: &str = "arn:aws:rds:us-east-1:123456789012:db:platform-postgres";
const CLASS: &str = "db.r5.2xlarge";

/// The scripted source: `ReadReplicaDBInstanceIdentifiers` holds the
/// same-region reader's id and the cross-region reader's ARN.
fn api() -> Arc<Scripted> {
    let api = Scripted::with_source();
    {
        let mut st = api.state.lock().unwrap();
        let src = st.instances.get_mut(SOURCE).unwrap();
        src.arn = Some(SOURCE_ARN.into());
        src.read_replicas = vec![READER.into(), WEST_ARN.into()];
    }
    api.put(Instance {
        id: READER.into(),
        arn: Some(format!("arn:aws:rds:us-east-1:123456789012:db:{READER}")),
        status: "available".into(),
        class: "db.r5.large".into(),
        engine: "postgres".into(),
        engine_version: "15.4".into(),
        replica_source: Some(SOURCE.into()),
        ..Instance::default()
    });
    api
}

/// Calls that change something at RDS (the scripted RDS logs `<op> <id>`).
fn mutating_calls(api: &Scripted) -> Vec<String> {
    api.state
        .lock()
        .unwrap()
        .calls
        .iter()
        .filter(|c| !c.starts_with("describe "))
        .cloned()
        .collect()
}

struct Stage {
    cluster: TestCluster,
    _pooler: LocalPgBouncer,
    api: Arc<Scripted>,
    cfg: Cluster,
}

impl Stage {
    /// `west_override`: whether `endpoint_override` gives the cross-region
    /// reader an address (else lag cannot reach it).
    fn new(west_override: bool) -> Stage {
        let cluster = TestCluster::start(2);
        let p = &cluster.primary;
        harness::make_roles(p, harness::Grants::UpgradeRds);
        must(p.psql("postgres", "CREATE DATABASE app"));
        harness::prepare_db_with(p, "app", harness::Grants::UpgradeRds);
        harness::grant_app(p, "app");
        cluster.wait_replicas_caught_up();
        let pooler = must(LocalPgBouncer::start(
            &cluster.path().join("pgbouncer"),
            must(pgsteward::localpg::free_port()),
            &[PgBouncerDatabase {
                name: "app".into(),
                host: "127.0.0.1".into(),
                port: p.port,
                dbname: "app".into(),
            }],
            &harness::pooler_auth(),
            &[],
        ));
        let api = api();
        api.bind(SOURCE, p);
        api.bind(READER, &cluster.replicas[0]);
        let west = if west_override {
            format!("\"{WEST}\" = \"127.0.0.1:{}\"", cluster.replicas[1].port)
        } else {
            String::new()
        };
        // No upgrade.rds.region: the source's region comes from its ARN.
        let toml = format!(
            r#"
[database]
primary = "{primary}"
connect_timeout = "5s"
[upgrade]
provider = "rds"
state_dir = "{state}"
step_timeout = "20s"
[upgrade.rds]
source_instance = "{SOURCE}"
endpoint_url = "http://127.0.0.1:9"
poll_interval = "5ms"
[upgrade.rds.endpoint_override]
{west}
[cutover]
kind = "pgbouncer"
admin = ["{admin}"]
config_file = "{ini}"
database = "app"
"#,
            primary = harness::steward_url(p, "app"),
            state = cluster.path().join("state").display(),
            admin = pooler.admin_url(),
            ini = pooler.ini.display(),
        );
        let cfg = must(pgsteward::config::from_figment(
            figment::Figment::from(
                <figment::providers::Toml as figment::providers::Format>::string(&toml),
            ),
            None,
        ))
        .cluster;
        Stage {
            cluster,
            _pooler: pooler,
            api,
            cfg,
        }
    }

    fn provider(&self) -> RdsProvider {
        must(RdsProvider::with_api(&self.cfg, self.api.clone()))
    }
}

/// Every part of the refusal the operator needs.
fn assert_names_the_reader_and_fix(text: &str) {
    for part in [
        "rds reader reporting-west in the source's region",
        "reporting-west is a cross-region read replica in us-west-2",
        "of platform-postgres in us-east-1",
        "aws rds promote-read-replica --region us-west-2 --db-instance-identifier reporting-west",
        "aws rds create-db-instance-read-replica --region us-west-2 --db-instance-identifier reporting-west --source-db-instance-identifier arn:aws:rds:us-east-1:123456789012:db:platform-postgres-<upgrade id>",
    ] {
        assert!(text.contains(part), "{part:?} missing in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_cross_region_reader_fails_plan_and_start_before_anything_changes() {
    let s = Stage::new(true);
    let provider = s.provider();

    // `upgrade plan`: exit 1, the failed check names the reader, its region and the fix.
    let outcome = must(plan_with(&s.cfg, &provider, CLASS, OutputFormat::Text).await);
    assert_eq!(outcome.exit_code(), 1);
    let mut poolers = pgsteward::pooler::Poolers::from_config(&s.cfg);
    let pre = must(observe::prechecks(&s.cfg, &provider, &mut poolers, CLASS, None).await);
    let failed = pre.failures();
    assert_eq!(
        failed.len(),
        1,
        "only the cross-region reader fails: {failed:#?}"
    );
    assert_names_the_reader_and_fix(&failed[0]);
    // The same-region reader is still planned for replacement.
    let readers: Vec<&str> = pre.source.readers.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(readers, [READER]);

    // `upgrade start`: refused at precheck, nothing made at RDS, no journal.
    let api = s.api.clone();
    let cfg = s.cfg.clone();
    let err = start_with(&s.cfg, CLASS, true, move |cancel| {
        let p = RdsProvider::with_api(&cfg, api)?.with_cancel(cancel);
        Ok(Box::new(p) as Box<dyn Provider>)
    })
    .await
    .expect_err("start refuses");
    match &err {
        UpgradeError::PrecheckFailed(lines) => {
            assert_names_the_reader_and_fix(&lines.join("\n"));
        }
        other => panic!("expected a precheck failure, got {other}"),
    }
    assert_eq!(mutating_calls(&s.api), Vec::<String>::new());
    assert!(
        must(journal::latest(&s.cfg.state_dir)).is_none(),
        "no journal for a refused start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_lag_reports_each_readers_region() {
    let s = Stage::new(true);
    let found = must(s.provider().discover_replicas().await);
    let report = must(pgsteward::lag::check_discovered(&s.cfg.database, &s.cfg.lag, found).await);
    let text = pgsteward::lag::render_text(&report);
    println!("{text}");
    assert!(text.contains("REGION"), "{text}");
    for (id, region, port) in [
        (READER, "us-east-1", s.cluster.replicas[0].port),
        (WEST, "us-west-2", s.cluster.replicas[1].port),
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!(":{port}/")))
            .unwrap_or_else(|| panic!("no row for {id}:\n{text}"));
        assert!(line.contains(id) && line.contains(region), "{line}");
    }
    assert!(report.healthy, "{text}");
    let json = must(serde_json::to_value(&report));
    let rows: Vec<(String, String)> = json["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| {
            (
                r["instance"].as_str().unwrap_or_default().to_string(),
                r["region"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (READER.to_string(), "us-east-1".to_string()),
            (WEST.to_string(), "us-west-2".to_string())
        ]
    );
    assert!(json.get("unchecked").is_none(), "absent when empty: {json}");
    // Fields that were there before are still there.
    for key in ["replica", "healthy", "state", "bytes_behind"] {
        assert!(json["replicas"][0].get(key).is_some(), "{key}: {json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_lag_lists_an_unreachable_cross_region_reader_with_its_region() {
    let s = Stage::new(false);
    let found = must(s.provider().discover_replicas().await);
    let report = must(pgsteward::lag::check_discovered(&s.cfg.database, &s.cfg.lag, found).await);
    let text = pgsteward::lag::render_text(&report);
    assert!(
        text.contains("note: replica reporting-west (region us-west-2) not checked")
            && text.contains("upgrade.rds.endpoint_override"),
        "{text}"
    );
    assert_eq!(report.replicas.len(), 1, "{text}");
    assert_eq!(report.replicas[0].region.as_deref(), Some("us-east-1"));
    let json = must(serde_json::to_value(&report));
    assert_eq!(json["unchecked"][0]["instance"], WEST, "{json}");
    assert_eq!(json["unchecked"][0]["region"], "us-west-2", "{json}");
}

/// No clusters: retire_old reads RDS only.
#[tokio::test]
async fn scripted_retire_old_names_a_cross_region_replica_with_its_region() {
    let api = api();
    api.state
        .lock()
        .unwrap()
        .instances
        .get_mut(SOURCE)
        .unwrap()
        .read_replicas = vec![WEST_ARN.into()];
    let toml = format!(
        "[database]\nprimary = \"postgres://s@h/app\"\n[upgrade]\nprovider = \"rds\"\nstep_timeout = \"5s\"\n[upgrade.rds]\nsource_instance = \"{SOURCE}\"\npoll_interval = \"5ms\"\n"
    );
    let cfg = must(pgsteward::config::from_figment(
        figment::Figment::from(
            <figment::providers::Toml as figment::providers::Format>::string(&toml),
        ),
        None,
    ))
    .cluster;
    let p = must(RdsProvider::with_api(&cfg, api.clone()));
    let source = SourceFacts {
        id: SOURCE.into(),
        ..SourceFacts::default()
    };
    let err = p.retire_old(&source).await.unwrap_err().to_string();
    assert!(
        err.contains("still feeds read replicas reporting-west (cross-region, in us-west-2)"),
        "{err}"
    );
    assert_eq!(mutating_calls(&api), Vec::<String>::new());
}

/// No clusters: the provider's precheck reads RDS only. Every listed replica
/// is described or refused; an instance in `deleting` is still skipped.
#[tokio::test]
async fn scripted_precheck_never_skips_a_listed_replica() {
    let cfg_with = |region: &str| {
        let toml = format!(
            "[database]\nprimary = \"postgres://s@h/app\"\n[upgrade]\nprovider = \"rds\"\nstep_timeout = \"5s\"\n[upgrade.rds]\nsource_instance = \"{SOURCE}\"\npoll_interval = \"5ms\"\n{region}"
        );
        must(pgsteward::config::from_figment(
            figment::Figment::from(
                <figment::providers::Toml as figment::providers::Format>::string(&toml),
            ),
            None,
        ))
        .cluster
    };
    let api = api();
    {
        let mut st = api.state.lock().unwrap();
        let src = st.instances.get_mut(SOURCE).unwrap();
        // Listed, but not found in the source's region.
        src.read_replicas.push("ghost".into());
        src.read_replicas.push("going".into());
    }
    api.put(Instance {
        id: "going".into(),
        status: "deleting".into(),
        replica_source: Some(SOURCE.into()),
        ..Instance::default()
    });
    let p = must(RdsProvider::with_api(&cfg_with(""), api.clone()));
    let pre = must(p.precheck(CLASS).await);
    let failed = pre.failures();
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert!(
        failed.iter().any(|f| f.contains("reporting-west")),
        "{failed:#?}"
    );
    assert!(
        failed
            .iter()
            .any(|f| f.starts_with("rds reader ghost can be described")
                && f.contains("DescribeDBInstances in us-east-1 does not find it")),
        "{failed:#?}"
    );
    let readers: Vec<&str> = pre.source.readers.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(readers, [READER], "the deleting one is skipped");

    // Without the source's ARN and upgrade.rds.region, whether the ARN-listed
    // reader is remote cannot be told: refused with the key to set.
    api.state
        .lock()
        .unwrap()
        .instances
        .get_mut(SOURCE)
        .unwrap()
        .arn = None;
    let pre = must(p.precheck(CLASS).await);
    assert!(
        pre.failures()
            .iter()
            .any(|f| f.contains("reporting-west") && f.contains("set upgrade.rds.region")),
        "{:#?}",
        pre.failures()
    );
    // With it, the reader is known to be in us-west-2 again.
    let p = must(RdsProvider::with_api(
        &cfg_with("region = \"us-east-1\"\n"),
        api.clone(),
    ));
    let pre = must(p.precheck(CLASS).await);
    assert!(
        pre.failures()
            .iter()
            .any(|f| f.contains("cross-region read replica in us-west-2")),
        "{:#?}",
        pre.failures()
    );
    assert_eq!(mutating_calls(&api), Vec::<String>::new());
}
