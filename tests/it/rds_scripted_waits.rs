//! The `rds` provider against a scripted RDS behind its own `RdsApi` seam:
//! the status sequences, throttling, failures and crashes between calls
//! that moto cannot show (it makes every instance `available` at once).
//! Each test says which real RDS behaviour it stands for.

use std::sync::Arc;
use std::time::Duration;

use figment::providers::Format;
use pgsteward::provider::rds::{
    final_snapshot_id, rds_old_id, rds_replica_id, ApiErrorKind, RdsApi, RdsProvider, UPGRADE_TAG,
};
use pgsteward::provider::{Provider, ProviderError, ServerState};

use crate::rds::{config, facts, SOURCE};
use crate::rds_scripted::Scripted;
/// A scripted RDS with the source, a provider on it (PgBouncer repoint,
/// `step_timeout`) and the replica it created for upgrade `u1`.
async fn with_replica(step_timeout: &str) -> (Arc<Scripted>, RdsProvider, String) {
    let api = Scripted::with_source();
    let p = scripted(&api, "pgbouncer", step_timeout);
    let id = p
        .create_replica(&facts(), "u1", "db.r5.2xlarge")
        .await
        .unwrap()
        .id;
    (api, p, id)
}

fn scripted(api: &Arc<Scripted>, repoint: &str, step_timeout: &str) -> RdsProvider {
    let cfg = config("http://127.0.0.1:9", repoint, step_timeout);
    RdsProvider::with_api(&cfg, api.clone()).unwrap()
}

/// Real RDS: a read replica spends 10-40 minutes in `creating`, is briefly
/// not listed at all right after the call, and passes through `backing-up`
/// and `modifying` before `available`.
#[tokio::test]
async fn scripted_slow_create_waits_through_every_transitional_status() {
    let api = Scripted::with_source();
    let id = rds_replica_id(SOURCE, "u1");
    api.state.lock().unwrap().hidden.insert(id.clone(), 2);
    api.script(
        &id,
        &[
            "creating",
            "creating",
            "backing-up",
            "modifying",
            "available",
        ],
    );
    let p = scripted(&api, "pgbouncer", "30s");
    let info = p
        .create_replica(&facts(), "u1", "db.r5.2xlarge")
        .await
        .unwrap();
    assert_eq!(info.state, ServerState::Creating);
    let inst = p.wait_available("wait_available", &id).await.unwrap();
    assert_eq!(inst.status, "available");
    assert_eq!(api.calls("create"), 1);
}

/// Real RDS: `PromoteReadReplica` is refused with InvalidDBInstanceState while
/// the replica is `backing-up` (its first automated backup after creation).
#[tokio::test]
async fn scripted_promote_waits_for_backing_up_and_retries_a_busy_refusal() {
    let (api, p, id) = with_replica("30s").await;
    api.script(&id, &["backing-up", "backing-up", "available"]);
    api.fail(
        "promote",
        ApiErrorKind::InvalidState,
        "InvalidDBInstanceState",
        1,
    );
    p.promote(&id).await.unwrap();
    assert_eq!(api.calls("promote"), 2, "refused once, then accepted");
    assert!(api.state.lock().unwrap().instances[&id]
        .replica_source
        .is_none());
}

/// Real RDS: a replica can end in `failed` (or `incompatible-parameters` when
/// the parameter group's memory settings do not fit the class).
#[tokio::test]
async fn scripted_failed_replica_ends_the_wait_with_what_to_do() {
    let (api, p, id) = with_replica("30s").await;
    api.script(&id, &["creating", "failed"]);
    let err = p
        .wait_available("wait_available", &id)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("wait_available") && err.contains("failed") && err.contains("describe-events"),
        "{err}"
    );
    match p.describe(&id).await.unwrap().state {
        ServerState::Failed(reason) => assert!(reason.contains("failed"), "{reason}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    api.script(&id, &["incompatible-parameters"]);
    let err = p
        .wait_available("wait_available", &id)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("parameter group"), "{err}");
}

/// Real RDS: the API throttles bursts of DescribeDBInstances (`Throttling`)
/// and occasionally answers 5xx; both are retried with backoff, and a
/// throttle that outlasts the step's deadline is reported with its code.
#[tokio::test]
async fn scripted_throttling_is_retried_until_the_deadline() {
    let api = Scripted::with_source();
    api.fail("describe", ApiErrorKind::Throttled, "Throttling", 3);
    api.fail("create", ApiErrorKind::Transient, "InternalFailure", 1);
    let p = scripted(&api, "pgbouncer", "30s");
    p.create_replica(&facts(), "u1", "db.r5.2xlarge")
        .await
        .unwrap();
    assert_eq!(api.calls("create"), 2);

    let short = scripted(&api, "pgbouncer", "200ms");
    api.fail("describe", ApiErrorKind::Throttled, "Throttling", 10_000);
    let err = short
        .precheck("db.r5.2xlarge")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("precheck") && err.contains("Throttling"),
        "{err}"
    );
}

/// Real RDS: a create can sit in `creating` for hours when capacity is short;
/// the step ends at `upgrade.step_timeout` with the last status seen.
#[tokio::test]
async fn scripted_wait_ends_at_the_step_timeout_and_on_cancel() {
    let (api, p, id) = with_replica("150ms").await;
    api.script(&id, &["creating"]);
    let err = p
        .wait_available("wait_available", &id)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("still creating") && err.contains("step_timeout"),
        "{err}"
    );

    let cancel = tokio_util::sync::CancellationToken::new();
    let p = scripted(&api, "pgbouncer", "1h").with_cancel(cancel.clone());
    let started = std::time::Instant::now();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.cancel();
    });
    let err = p
        .wait_available("wait_available", &id)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err, "cancelled");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Real RDS: the process dies after CreateDBInstanceReadReplica was accepted
/// but before the saga journaled it; after the first rename of a swap; after
/// DeleteDBInstance was accepted. A fresh provider (the resumed saga) finds
/// each by name and tag and finishes without repeating a call.
#[tokio::test]
async fn scripted_crash_between_calls_resumes_without_repeating_them() {
    let api = Scripted::with_source();
    let first = scripted(&api, "identifier-swap", "30s");
    let id = first
        .create_replica(&facts(), "u9", "db.r5.2xlarge")
        .await
        .unwrap()
        .id;
    drop(first);
    let resumed = scripted(&api, "identifier-swap", "30s");
    assert_eq!(
        resumed
            .create_replica(&facts(), "u9", "db.r5.2xlarge")
            .await
            .unwrap()
            .id,
        id
    );
    assert_eq!(api.calls("create"), 1, "adopted, not created twice");

    api.script(&id, &["available"]);
    resumed.promote(&id).await.unwrap();
    // Crash after the old primary was renamed, before the new one took the name.
    let old = rds_old_id(SOURCE, "u9");
    api.rename_instance(SOURCE, &old).await.unwrap();
    let before = api.calls("rename");
    let again = scripted(&api, "identifier-swap", "30s");
    again.rename_aside(SOURCE, "u9", &id).await.unwrap();
    again.rename_in(&id, SOURCE).await.unwrap();
    assert_eq!(
        api.calls("rename") - before,
        1,
        "only the second rename is issued"
    );
    {
        let st = api.state.lock().unwrap();
        assert_eq!(
            st.instances[SOURCE]
                .tags
                .get(UPGRADE_TAG)
                .map(String::as_str),
            Some("u9")
        );
        assert!(st.instances.contains_key(&old));
    }
    again.rename_aside(SOURCE, "u9", &id).await.unwrap();
    again.rename_in(&id, SOURCE).await.unwrap();
    assert_eq!(api.calls("rename") - before, 1);

    again.retire_old(&facts()).await.unwrap();
    assert!(api
        .state
        .lock()
        .unwrap()
        .calls
        .contains(&format!("snapshot {}", final_snapshot_id(&old))));
    scripted(&api, "identifier-swap", "30s")
        .retire_old(&facts())
        .await
        .unwrap();
    assert_eq!(
        api.calls("delete"),
        1,
        "a deleting instance is not deleted again"
    );
    assert!(
        !api.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .any(|c| c == "snapshot SKIP"),
        "never SkipFinalSnapshot for the old primary"
    );
}

#[tokio::test]
async fn scripted_unsafe_configuration_is_refused() {
    let cfg = pgsteward::config::from_figment(
        figment::Figment::from(figment::providers::Toml::string(&format!(
            "[database]\nprimary = \"postgres://s@h/app\"\n[upgrade]\nprovider = \"rds\"\n[upgrade.rds]\nsource_instance = \"{SOURCE}\"\nfinal_snapshot = false\n"
        ))),
        None,
    )
    .unwrap()
    .cluster;
    let err = match RdsProvider::with_api(&cfg, Scripted::with_source()) {
        Err(ProviderError::Usage(e)) => e,
        other => panic!("expected a usage error, got {:?}", other.err()),
    };
    assert!(err.contains("final_snapshot"), "{err}");
}
