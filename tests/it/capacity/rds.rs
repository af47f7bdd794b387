//! RDS storage: `AllocatedStorage` and `MaxAllocatedStorage` from moto's
//! RDS, `FreeStorageSpace` data points from moto's CloudWatch, through the
//! binary with credentials from the environment as in a pod.

use aws_sdk_cloudwatch::primitives::DateTime as AwsDateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

use super::{capacity_json, config, db_name};
use crate::harness::fresh_db;
use crate::moto::{CloudWatchCbor, Moto, KEY, REGION};

const INSTANCE: &str = "platform-postgres";
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

async fn cloudwatch(adapter: &CloudWatchCbor) -> aws_sdk_cloudwatch::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(adapter.url())
        .credentials_provider(aws_sdk_cloudwatch::config::Credentials::new(
            KEY, KEY, None, None, "test",
        ))
        .load()
        .await;
    aws_sdk_cloudwatch::Client::new(&conf)
}

/// Hourly `FreeStorageSpace` for the last `days` days: `used(hours ago)`
/// against `allocated` GiB.
async fn put_free_space(
    cw: &aws_sdk_cloudwatch::Client,
    days: u32,
    allocated: f64,
    used: impl Fn(f64) -> f64,
) {
    let now = std::time::SystemTime::now();
    let points: Vec<MetricDatum> = (1..=days * 24)
        .map(|h| {
            let at = now - std::time::Duration::from_secs(u64::from(h) * 3600);
            MetricDatum::builder()
                .metric_name("FreeStorageSpace")
                .dimensions(
                    Dimension::builder()
                        .name("DBInstanceIdentifier")
                        .value(INSTANCE)
                        .build(),
                )
                .timestamp(AwsDateTime::from(at))
                .value((allocated - used(f64::from(h))) * GIB)
                .unit(StandardUnit::Bytes)
                .build()
        })
        .collect();
    for chunk in points.chunks(20) {
        cw.put_metric_data()
            .namespace("AWS/RDS")
            .set_metric_data(Some(chunk.to_vec()))
            .send()
            .await
            .unwrap();
    }
}

/// The RDS provider's settings pointing at moto; CloudWatch through the adapter.
fn rds_config(
    dir: &std::path::Path,
    db: &str,
    moto: &Moto,
    adapter: &CloudWatchCbor,
) -> std::path::PathBuf {
    config(
        dir,
        db,
        &format!(
            "[capacity]\ncloudwatch_endpoint_url = \"{}\"\n[upgrade]\nprovider = \"rds\"\n[upgrade.rds]\nsource_instance = \"{INSTANCE}\"\nregion = \"{REGION}\"\nendpoint_url = \"{}\"\n",
            adapter.url(),
            moto.url()
        ),
    )
}

/// 500 GiB allocated, autoscaling to 600 GiB, 350 GiB used and growing by
/// 5 GiB a day: free ≤ 10 % at 450 GiB in 20 days (a 50 GiB step: 10 % of
/// 500), the 600 GiB maximum after the next step at 495 GiB (29 days), full
/// at 600 GiB (50 days). The maximum within 30 days is a warning: exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_three_dates_from_allocated_storage_and_cloudwatch() {
    let moto = Moto::start();
    let rds = moto.client().await;
    rds.create_db_instance()
        .db_instance_identifier(INSTANCE)
        .engine("postgres")
        .db_instance_class("db.r5.xlarge")
        .allocated_storage(500)
        .max_allocated_storage(600)
        .master_username("steward")
        .master_user_password("not-a-secret-1")
        .send()
        .await
        .unwrap();
    let adapter = moto.cloudwatch_cbor();
    let cw = cloudwatch(&adapter).await;
    put_free_space(&cw, 10, 500.0, |h| 350.0 - 5.0 * h / 24.0).await;

    let db = db_name(&fresh_db("cap_rds"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = rds_config(dir.path(), &db, &moto, &adapter);
    let (code, r) = capacity_json(&cfg, &[]);
    let s = &r["storage"];
    assert_eq!(s["source"], "rds", "{r:#}");
    assert_eq!(s["allocated_bytes"].as_f64(), Some(500.0 * GIB), "{s:#}");
    assert_eq!(
        s["max_allocated_bytes"].as_f64(),
        Some(600.0 * GIB),
        "{s:#}"
    );
    assert_eq!(s["limit_bytes"].as_f64(), Some(600.0 * GIB), "{s:#}");
    let used = s["used_bytes"].as_f64().unwrap() / GIB;
    assert!((used - 350.0).abs() < 0.5, "used {used} GiB: {s:#}");
    let growth = s["growth_bytes_per_day"].as_f64().unwrap() / GIB;
    assert!((growth - 5.0).abs() < 0.1, "growth {growth} GiB/day: {s:#}");
    let near = |key: &str, want: f64| {
        let d = s[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {s:#}"));
        assert!(
            (d - want).abs() < 0.5,
            "{key} = {d}, want about {want}: {s:#}"
        );
    };
    near("days_until_autoscale", 20.0);
    assert!((s["autoscale_step_bytes"].as_f64().unwrap() / GIB - 50.0).abs() < 1e-6);
    near("days_until_max_allocated", 29.0);
    near("days_until_full", 50.0);
    assert_eq!(s["state"], "warning", "{s:#}");
    assert_eq!(
        code, 1,
        "max_allocated_storage within 30 days is a problem: {r:#}"
    );
}

/// No data points yet (a new instance): storage is unknown, said so, exit 1;
/// no date is made up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_without_cloudwatch_history_makes_up_no_date() {
    let moto = Moto::start();
    let rds = moto.client().await;
    rds.create_db_instance()
        .db_instance_identifier(INSTANCE)
        .engine("postgres")
        .db_instance_class("db.r5.xlarge")
        .allocated_storage(100)
        .master_username("steward")
        .master_user_password("not-a-secret-1")
        .send()
        .await
        .unwrap();
    let adapter = moto.cloudwatch_cbor();
    let db = db_name(&fresh_db("cap_rds_empty"));
    let dir = tempfile::tempdir().unwrap();
    let (code, r) = capacity_json(&rds_config(dir.path(), &db, &moto, &adapter), &[]);
    let s = &r["storage"];
    assert_eq!(s["state"], "unknown", "{s:#}");
    assert!(s["days_until_full"].is_null() && s["days_until_autoscale"].is_null());
    assert!(s["max_allocated_bytes"].is_null(), "autoscaling off: {s:#}");
    assert!(
        s["detail"].as_str().unwrap().contains("FreeStorageSpace"),
        "{s:#}"
    );
    assert_eq!(code, 1);
}
