//! The deploy/ files agree with the binary: image version, command lines that
//! parse, probe paths and ports the service serves, a ConfigMap the loader
//! accepts, and the safety settings a platform team relies on.
//!
//! Manifests are read the way deploy/validate.py's fallback reads them: each
//! kustomization's listed files plus its generated ConfigMaps (every file is a
//! complete object), so no kubectl is needed here. Schema validation against
//! Kubernetes itself is deploy/validate.py's job (run by .ci/run).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use pgsteward::cli::{Cli, Command, PartitionsCommand, UpgradeCommand};
use serde_yaml_ng::Value;

use crate::harness::{self, pgsteward, write_config};

/// The kustomizations an operator applies.
const ENTRY_POINTS: [&str; 7] = [
    "service",
    "cronjob",
    "upgrade/plan",
    "upgrade/start",
    "upgrade/resume",
    "upgrade/abort",
    "upgrade/status",
];
const IMAGE_REPOSITORY: &str = "ghcr.io/pgsteward/pgsteward";

fn kube_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn read_yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            <Value as serde::Deserialize>::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The objects of one kustomization: listed files, nested kustomizations and
/// configMapGenerator ConfigMaps (without kustomize's name hash).
fn objects(dir: &Path) -> Vec<Value> {
    let kust = &read_yaml_docs(&dir.join("kustomization.yaml"))[0];
    let mut out = Vec::new();
    for res in seq(&kust["resources"]) {
        let path = dir.join(res.as_str().unwrap());
        if path.is_dir() {
            out.extend(objects(&path));
        } else {
            out.extend(read_yaml_docs(&path));
        }
    }
    for generator in seq(&kust["configMapGenerator"]) {
        let mut data = serde_yaml_ng::Mapping::new();
        for f in seq(&generator["files"]) {
            let name = f.as_str().unwrap();
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            data.insert(Value::from(name), Value::from(text));
        }
        let mut cm = serde_yaml_ng::Mapping::new();
        cm.insert("kind".into(), "ConfigMap".into());
        cm.insert(
            "metadata".into(),
            serde_yaml_ng::from_str(&format!("name: {}", generator["name"].as_str().unwrap()))
                .unwrap(),
        );
        cm.insert("data".into(), Value::Mapping(data));
        out.push(Value::Mapping(cm));
    }
    out
}

fn seq(v: &Value) -> Vec<Value> {
    v.as_sequence().cloned().unwrap_or_default()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

fn name(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["kind"].as_str().unwrap_or("?"),
        obj["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Every object of every entry point, tagged with the entry point.
fn all_objects() -> Vec<(&'static str, Value)> {
    ENTRY_POINTS
        .iter()
        .flat_map(|e| {
            objects(&kube_dir().join(e))
                .into_iter()
                .map(move |o| (*e, o))
        })
        .collect()
}

fn find(kind: &str, name: &str) -> Value {
    all_objects()
        .into_iter()
        .map(|(_, o)| o)
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind}/{name} in deploy/kubernetes"))
}

/// (entry point, workload, pod spec) for every Deployment, CronJob and Job.
fn pod_specs() -> Vec<(&'static str, Value, Value)> {
    let mut out = Vec::new();
    for (entry, obj) in all_objects() {
        let spec = match obj["kind"].as_str() {
            Some("Deployment") | Some("Job") => obj["spec"]["template"]["spec"].clone(),
            Some("CronJob") => obj["spec"]["jobTemplate"]["spec"]["template"]["spec"].clone(),
            _ => continue,
        };
        out.push((entry, obj, spec));
    }
    assert_eq!(
        out.len(),
        ENTRY_POINTS.len(),
        "one workload per entry point"
    );
    out
}

/// The ConfigMap's pgsteward.toml, written to a temp file.
fn configmap_toml() -> (tempfile::TempDir, PathBuf) {
    let cm = find("ConfigMap", "pgsteward-config");
    let text = str_of(&cm["data"]["pgsteward.toml"], "pgsteward.toml").to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &text);
    (dir, path)
}

fn args(container: &Value) -> Vec<String> {
    seq(&container["args"])
        .iter()
        .map(|a| str_of(a, "args").to_string())
        .collect()
}

fn mount_path(pod: &Value, container: &Value, pred: impl Fn(&Value) -> bool) -> Option<String> {
    let volume = seq(&pod["volumes"]).into_iter().find(|v| pred(v))?;
    let vname = volume["name"].as_str()?;
    seq(&container["volumeMounts"])
        .into_iter()
        .find(|m| m["name"].as_str() == Some(vname))
        .and_then(|m| m["mountPath"].as_str().map(String::from))
}

#[test]
fn every_container_runs_this_version_of_the_image() {
    let want = format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"));
    for (entry, obj, pod) in pod_specs() {
        let containers = seq(&pod["containers"]);
        assert_eq!(containers.len(), 1, "{entry} {}", name(&obj));
        assert!(seq(&pod["initContainers"]).is_empty());
        for c in containers {
            assert_eq!(
                str_of(&c["image"], "image"),
                want,
                "{entry} {}: image tag follows Cargo.toml's version",
                name(&obj)
            );
            // Arguments only: the image's ENTRYPOINT is the binary, and there is no shell.
            assert!(c["command"].is_null(), "{entry}: no command override");
        }
    }
}

#[test]
fn every_command_line_parses_and_runs_the_intended_subcommand() {
    for (entry, obj, pod) in pod_specs() {
        let c = &seq(&pod["containers"])[0];
        let argv = args(c);
        let cli = Cli::try_parse_from(std::iter::once("pgsteward".to_string()).chain(argv.clone()))
            .unwrap_or_else(|e| panic!("{entry} {}: {argv:?} does not parse: {e}", name(&obj)));
        let intended = match (entry, &cli.command) {
            ("service", Command::Run) => true,
            ("cronjob", Command::Partitions(PartitionsCommand::Apply(_))) => true,
            ("upgrade/plan", Command::Upgrade(UpgradeCommand::Plan { target, .. }))
            | ("upgrade/start", Command::Upgrade(UpgradeCommand::Start { target })) => {
                !target.target_class.is_empty()
            }
            ("upgrade/resume", Command::Upgrade(UpgradeCommand::Resume)) => true,
            ("upgrade/abort", Command::Upgrade(UpgradeCommand::Abort)) => true,
            ("upgrade/status", Command::Upgrade(UpgradeCommand::Status(_))) => true,
            _ => false,
        };
        assert!(intended, "{entry}: {argv:?} runs {:?}", cli.command);

        // --config names the file the ConfigMap volume provides.
        let config_dir = mount_path(&pod, c, |v| {
            v["configMap"]["name"].as_str() == Some("pgsteward-config")
        })
        .unwrap_or_else(|| panic!("{entry}: the config volume is mounted"));
        assert_eq!(
            cli.config.as_deref(),
            Some(Path::new(&config_dir).join("pgsteward.toml").as_path()),
            "{entry}"
        );

        // The built binary agrees (same argv plus --help exits 0 and prints usage).
        let out = pgsteward().args(&argv).arg("--help").output().unwrap();
        assert!(
            out.status.success(),
            "{entry}: {argv:?} --help: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: pgsteward"));
    }
}

#[test]
fn a_misspelled_command_line_would_be_caught() {
    // The check above means something: clap rejects these, and the binary exits 2.
    for bad in [
        vec!["upgrade", "start"],
        vec!["upgrade", "start", "--target", "x"],
        vec!["partitions", "aply"],
    ] {
        assert!(Cli::try_parse_from(std::iter::once("pgsteward").chain(bad.clone())).is_err());
        let out = pgsteward().args(&bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn configmap_is_accepted_by_the_config_loader_and_matches_the_mounts() {
    let (_dir, path) = configmap_toml();
    let cfg = pgsteward::config::load(&path).unwrap_or_else(|e| panic!("ConfigMap: {e}"));
    assert_eq!(cfg.upgrade.provider, pgsteward::config::ProviderKind::Rds);
    assert!(cfg.upgrade.rds.as_ref().is_some_and(|r| r.final_snapshot));
    assert!(!cfg.partitions.tables.is_empty());

    for (entry, _, pod) in pod_specs() {
        let c = &seq(&pod["containers"])[0];
        // The CA bundle the URLs name is where the rds-ca volume is mounted.
        let ca = mount_path(&pod, c, |v| {
            v["configMap"]["name"].as_str() == Some("rds-ca-bundle")
        })
        .unwrap_or_else(|| panic!("{entry}: rds-ca mounted"));
        for url in std::iter::once(&cfg.database.primary).chain(&cfg.database.replicas) {
            assert!(
                url.expose().contains(&format!("sslrootcert={ca}/")),
                "{entry}: {url} reads its CA from {ca}"
            );
        }
        if entry.starts_with("upgrade/") {
            let state = mount_path(&pod, c, |v| {
                v["persistentVolumeClaim"]["claimName"].as_str() == Some("pgsteward-upgrade-state")
            })
            .unwrap_or_else(|| panic!("{entry}: the state claim is mounted"));
            assert_eq!(Path::new(&state), cfg.upgrade.state_dir, "{entry}");
            let pgbouncer = mount_path(&pod, c, |v| {
                v["persistentVolumeClaim"]["claimName"].as_str() == Some("pgbouncer-config")
            })
            .unwrap_or_else(|| panic!("{entry}: the PgBouncer config claim is mounted"));
            for file in &cfg.cutover.config_file {
                assert_eq!(file.parent(), Some(Path::new(&pgbouncer)), "{entry}");
            }
        }
    }
}

#[test]
fn secret_overrides_load_the_way_the_environment_does() {
    // Each Secret key becomes an environment variable (envFrom); figment's Env
    // provider parses its value with `Value::from_str` and nests on `__`. Do the
    // same here without touching this process's environment.
    let (_dir, path) = configmap_toml();
    let secret = &read_yaml_docs(&kube_dir().join("secret.example.yaml"))[0];
    let mut figment = Figment::new().merge(Toml::file_exact(&path));
    let mut primary = None;
    for (k, v) in secret["stringData"].as_mapping().unwrap() {
        let key = str_of(k, "key");
        let value = str_of(v, key);
        let rest = key
            .strip_prefix("PGSTEWARD_")
            .unwrap_or_else(|| panic!("{key}: only PGSTEWARD_ overrides belong here"));
        let dotted = rest.to_lowercase().replace("__", ".");
        let parsed: figment::value::Value = value.parse().unwrap();
        figment = figment.merge(Serialized::default(&dotted, parsed));
        if dotted == "database.primary" {
            primary = Some(value.to_string());
        }
    }
    let cfg = pgsteward::config::from_figment(figment, Some(&path))
        .unwrap_or_else(|e| panic!("ConfigMap + Secret: {e}"));
    assert_eq!(Some(cfg.database.primary.expose().to_string()), primary);
    assert!(
        !cfg.database.primary.to_string().contains("CHANGE-ME"),
        "redacted"
    );
    assert_eq!(cfg.database.replicas.len(), 1);
    assert_eq!(cfg.cutover.admin.len(), 2);
}

#[test]
fn ports_and_probes_match_the_http_listener() {
    let (_dir, path) = configmap_toml();
    let cfg = pgsteward::config::load(&path).unwrap();
    let port = cfg.http.listen.port();
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

/// GET over a plain TCP stream: status line and body.
pub(crate) fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Every `pgsteward_*` name in the alerts and the dashboard.
fn referenced_metric_names() -> BTreeSet<String> {
    let rule = find("PrometheusRule", "pgsteward");
    let mut text = String::new();
    for g in seq(&rule["spec"]["groups"]) {
        for r in seq(&g["rules"]) {
            text.push_str(str_of(&r["expr"], "expr"));
            text.push('\n');
        }
    }
    text.push_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/pgsteward-dashboard.json"),
        )
        .unwrap(),
    );
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("pgsteward_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The probe paths and every metric the alerts and the dashboard use, against
/// a real `pgsteward run` on the shared server.
#[test]
fn service_serves_the_probe_paths_and_every_alerted_metric() {
    let url = harness::fresh_db("deploy");
    let port = pgsteward::localpg::free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            "[database]\nprimary = \"{url}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             [lag]\nschedule = \"* * * * * *\"\n"
        ),
    );
    let mut child = pgsteward()
        .arg("--config")
        .arg(&path)
        .arg("run")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready = None;
    while Instant::now() < deadline {
        if let Some((200, _)) = http_get(port, "/readyz") {
            ready = Some(());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let healthz = http_get(port, "/healthz");
    let metrics = http_get(port, "/metrics");
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready.is_some(), "/readyz answered 200 within 30s");
    assert_eq!(healthz.map(|h| h.0), Some(200));
    let (status, body) = metrics.unwrap();
    assert_eq!(status, 200);
    // Families are announced by `# TYPE name kind` even before their first sample.
    let exported: BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in referenced_metric_names() {
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        assert!(
            exported.contains(family) || exported.contains(name.as_str()),
            "{name} is used by an alert or the dashboard but not exported; exported: {exported:?}"
        );
    }
}

#[test]
fn plan_and_start_name_the_same_target_class() {
    let class = |job: &str| {
        let j = find("Job", job);
        let argv = args(&seq(&j["spec"]["template"]["spec"]["containers"])[0]);
        let i = argv.iter().position(|a| a == "--target-class").unwrap();
        argv[i + 1].clone()
    };
    assert_eq!(
        class("pgsteward-upgrade-plan"),
        class("pgsteward-upgrade-start")
    );
}
