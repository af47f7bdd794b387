//! Workload settings: ports and probes, schedules, replicas, pod security,
//! the IAM role and policy.

use super::*;

#[test]
fn ports_and_probes_match_the_http_listener() {
    let (_dir, path) = configmap_toml();
    let cfg = pgsteward::config::load(&path).unwrap();
    let port = cfg.process.http.listen.port();
    assert_eq!(port, 9187, "the default http.listen");
    let defaults = pgsteward::config::HttpConfig::default();
    assert_eq!(defaults.listen.port(), port);

    let deploy = find("Deployment", "pgsteward");
    let c = &seq(&deploy["spec"]["template"]["spec"]["containers"])[0];
    let ports = seq(&c["ports"]);
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["name"].as_str(), Some("metrics"));
    assert_eq!(ports[0]["containerPort"].as_u64(), Some(u64::from(port)));
    for (probe, want) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(want), "{probe}");
        assert_eq!(get["port"].as_str(), Some("metrics"), "{probe}");
    }

    let svc = find("Service", "pgsteward");
    let sp = &seq(&svc["spec"]["ports"])[0];
    assert_eq!(sp["port"].as_u64(), Some(u64::from(port)));
    assert_eq!(sp["targetPort"].as_str(), Some("metrics"));
    assert_eq!(
        svc["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );

    let sm = find("ServiceMonitor", "pgsteward");
    let ep = &seq(&sm["spec"]["endpoints"])[0];
    assert_eq!(ep["path"].as_str(), Some("/metrics"));
    assert_eq!(ep["port"].as_str(), Some("metrics"));

    let np = find("NetworkPolicy", "pgsteward");
    let ingress_ports: Vec<u64> = seq(&np["spec"]["ingress"])
        .iter()
        .flat_map(|r| seq(&r["ports"]))
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert_eq!(ingress_ports, vec![u64::from(port)]);
}

#[test]
fn cronjob_never_overlaps_and_is_bounded() {
    let cj = find("CronJob", "pgsteward-partitions");
    let spec = &cj["spec"];
    assert_eq!(spec["concurrencyPolicy"].as_str(), Some("Forbid"));
    assert!(spec["startingDeadlineSeconds"].as_u64().is_some());
    assert!(spec["jobTemplate"]["spec"]["activeDeadlineSeconds"]
        .as_u64()
        .is_some());
    assert!(spec["successfulJobsHistoryLimit"].as_u64().is_some());
    assert!(spec["failedJobsHistoryLimit"].as_u64().is_some());
    // The CronJob schedule is crontab too: the binary's own parser accepts it.
    let schedule: Result<pgsteward::config::Schedule, _> =
        str_of(&spec["schedule"], "schedule").parse();
    assert!(schedule.is_ok());
}

#[test]
fn deployment_runs_two_replicas_behind_a_pdb() {
    let deploy = find("Deployment", "pgsteward");
    assert_eq!(deploy["spec"]["replicas"].as_u64(), Some(2));
    let pdb = find("PodDisruptionBudget", "pgsteward");
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn every_pod_is_non_root_read_only_without_capabilities_and_bounded() {
    for (entry, obj, pod) in pod_specs() {
        let what = format!("{entry} {}", name(&obj));
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true), "{what}");
        assert_eq!(
            psc["runAsUser"].as_u64(),
            Some(65532),
            "{what}: distroless nonroot"
        );
        assert_eq!(
            psc["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault"),
            "{what}"
        );
        assert_eq!(
            pod["automountServiceAccountToken"].as_bool(),
            Some(false),
            "{what}"
        );
        for c in seq(&pod["containers"]) {
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{what}");
            assert_eq!(
                sc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{what}"
            );
            assert_eq!(
                seq(&sc["capabilities"]["drop"]),
                vec![Value::from("ALL")],
                "{what}"
            );
            assert!(sc["capabilities"]["add"].is_null(), "{what}");
            for k in ["requests", "limits"] {
                assert!(
                    c["resources"][k]["memory"].as_str().is_some(),
                    "{what}: {k}"
                );
            }
            // The password comes from the Secret, never from the manifests.
            assert_eq!(
                seq(&c["envFrom"])[0]["secretRef"]["name"].as_str(),
                Some("pgsteward-database"),
                "{what}"
            );
        }
    }
}

#[test]
fn only_upgrade_jobs_carry_the_iam_role() {
    for (entry, obj, pod) in pod_specs() {
        let sa_name = str_of(&pod["serviceAccountName"], "serviceAccountName");
        let sa = find("ServiceAccount", sa_name);
        let role = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].as_str();
        if entry.starts_with("upgrade/") {
            assert!(
                role.is_some_and(|r| r.starts_with("arn:aws:iam::")),
                "{entry}"
            );
            assert_eq!(
                obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
                    .as_str(),
                Some("upgrade"),
                "{entry}: the AWS egress policy selects component=upgrade"
            );
        } else {
            assert!(role.is_none(), "{entry}: no AWS access");
        }
    }
    // A dead `upgrade start` pod is never replaced by a second start.
    let start = find("Job", "pgsteward-upgrade-start");
    assert_eq!(start["spec"]["backoffLimit"].as_u64(), Some(0));
}

#[test]
fn iam_policy_grants_exactly_what_the_rds_provider_calls() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/iam/rds-upgrade-policy.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut rds = BTreeSet::new();
    for st in doc["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow");
        assert!(
            st["Resource"] != "*",
            "every statement is scoped to resources"
        );
        for a in st["Action"].as_array().unwrap() {
            if let Some(action) = a.as_str().unwrap().strip_prefix("rds:") {
                rds.insert(action.to_string());
            }
        }
    }
    let want: BTreeSet<String> = [
        "AddTagsToResource",
        "CreateDBInstanceReadReplica",
        "CreateDBSnapshot",
        "DeleteDBInstance",
        "DescribeDBInstances",
        "DescribeDBSnapshots",
        "ModifyDBInstance",
        "PromoteReadReplica",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(rds, want);
}
