//! RDS storage facts for capacity planning: `AllocatedStorage` and
//! `MaxAllocatedStorage` from `DescribeDBInstances`, `FreeStorageSpace`
//! history from CloudWatch (`GetMetricStatistics`, hourly minimum: the
//! conservative reading of each hour).

use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::primitives::DateTime as AwsDateTime;
use aws_sdk_cloudwatch::types::{Dimension, Statistic};

use super::forecast::{Point, DAY_SECONDS};
use super::model::RdsStorage;
use super::CapacityError;
use crate::provider::rds::{sdk_error, RdsApi, SdkRds, SdkSettings};

/// History read from CloudWatch: eight weeks of hourly points (1,344, under
/// the 1,440 datapoints one call may return), enough for the weekly term.
const HISTORY_DAYS: u64 = 56;
const PERIOD_SECONDS: i32 = 3600;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// Bounds every AWS call of a run.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct RdsTarget {
    pub instance: String,
    pub rds: SdkSettings,
    pub cloudwatch: SdkSettings,
}

pub async fn read(target: &RdsTarget) -> Result<RdsStorage, CapacityError> {
    let aws = |what: &'static str| {
        move |e: crate::provider::rds::ApiError| CapacityError::Aws {
            what,
            message: e.to_string(),
        }
    };
    let timeout = |what: &'static str| CapacityError::Aws {
        what,
        message: format!("no answer within {CALL_TIMEOUT:?}"),
    };
    let api = SdkRds::new(target.rds.clone());
    let inst = tokio::time::timeout(CALL_TIMEOUT, api.describe_instance(&target.instance))
        .await
        .map_err(|_| timeout("DescribeDBInstances"))?
        .map_err(aws("DescribeDBInstances"))?
        .ok_or_else(|| CapacityError::Aws {
            what: "DescribeDBInstances",
            message: format!(
                "no DB instance {}; check upgrade.rds.source_instance and upgrade.rds.region",
                target.instance
            ),
        })?;
    let cw = aws_sdk_cloudwatch::Client::new(&target.cloudwatch.load().await);
    let end = SystemTime::now();
    let start = end - Duration::from_secs(HISTORY_DAYS * 86_400);
    let call = cw
        .get_metric_statistics()
        .namespace("AWS/RDS")
        .metric_name("FreeStorageSpace")
        .dimensions(
            Dimension::builder()
                .name("DBInstanceIdentifier")
                .value(&target.instance)
                .build(),
        )
        .start_time(AwsDateTime::from(start))
        .end_time(AwsDateTime::from(end))
        .period(PERIOD_SECONDS)
        .statistics(Statistic::Minimum)
        .send();
    let out = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| timeout("GetMetricStatistics"))?
        .map_err(|e| aws("GetMetricStatistics")(sdk_error(e)))?;
    let mut free_history: Vec<Point> = out
        .datapoints()
        .iter()
        .filter_map(|d| {
            let t = d.timestamp()?;
            let secs = t.secs() as f64 + f64::from(t.subsec_nanos()) / 1e9;
            Some(Point {
                t: secs / DAY_SECONDS,
                v: d.minimum()?,
            })
        })
        .collect();
    free_history.sort_by(|a, b| a.t.total_cmp(&b.t));
    Ok(RdsStorage {
        instance: target.instance.clone(),
        allocated_bytes: inst.allocated_storage_gib as f64 * GIB,
        max_allocated_bytes: inst.max_allocated_storage_gib.map(|g| g as f64 * GIB),
        free_history,
    })
}
