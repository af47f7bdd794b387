//! A pod spec from deploy/kubernetes, as the docker flags the kubelet's
//! choices translate to. An unknown volume kind fails the test, so a manifest
//! change is either carried here or seen.

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A single-document manifest under deploy/kubernetes.
pub fn kube(rel: &str) -> Value {
    let path = repo().join("deploy/kubernetes").join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn pod_spec(obj: &Value) -> &Value {
    match obj["kind"].as_str() {
        Some("CronJob") => &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &obj["spec"]["template"]["spec"],
    }
}

pub fn seq(v: &Value) -> Vec<Value> {
    v.as_sequence().cloned().unwrap_or_default()
}

pub fn text(v: &Value, what: &str) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
        .to_string()
}

/// Host directories standing in for the pod's volumes.
pub struct Volumes {
    pub config: PathBuf,
    pub rds_ca: PathBuf,
    pub state: PathBuf,
    pub pgbouncer: PathBuf,
}

/// What `docker create`/`run` needs to run a pod's only container as the kubelet would.
pub struct Workload {
    pub flags: Vec<String>,
    pub args: Vec<String>,
    pub mounts: Vec<String>,
    pub grace: u64,
}

/// Kubernetes quantities as docker takes them: "64Mi" -> "64m", "250m" CPU -> "0.25".
fn mebibytes(q: &str) -> String {
    let n = q
        .strip_suffix("Mi")
        .unwrap_or_else(|| panic!("{q}: this test reads Mi quantities"));
    format!("{n}m")
}

fn cpus(q: &str) -> String {
    match q.strip_suffix('m') {
        Some(milli) => format!("{}", milli.parse::<f64>().expect("millicores") / 1000.0),
        None => q.to_string(),
    }
}

pub fn workload(obj: &Value, vols: &Volumes, env_file: &Path) -> Workload {
    let pod = pod_spec(obj);
    let containers = seq(&pod["containers"]);
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let (psc, csc) = (&pod["securityContext"], &c["securityContext"]);
    let id = |k: &str| {
        csc[k]
            .as_u64()
            .or(psc[k].as_u64())
            .unwrap_or_else(|| panic!("{k} is set"))
    };
    let (uid, gid) = (id("runAsUser"), id("runAsGroup"));
    assert!(uid != 0 && psc["runAsNonRoot"].as_bool() == Some(true));
    let mut flags = vec![
        "--user".to_string(),
        format!("{uid}:{gid}"),
        "--network".into(),
        "host".into(),
    ];
    if let Some(fs_group) = psc["fsGroup"].as_u64() {
        flags.extend(["--group-add".into(), fs_group.to_string()]);
    }
    // RuntimeDefault is docker's default seccomp profile too: nothing to add.
    assert_eq!(
        psc["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    if csc["readOnlyRootFilesystem"].as_bool() == Some(true) {
        flags.push("--read-only".into());
    }
    if csc["allowPrivilegeEscalation"].as_bool() == Some(false) {
        flags.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    for cap in seq(&csc["capabilities"]["drop"]) {
        flags.extend(["--cap-drop".into(), text(&cap, "drop")]);
    }
    assert!(csc["capabilities"]["add"].is_null());
    let limits = &c["resources"]["limits"];
    flags.extend([
        "--memory".into(),
        mebibytes(&text(&limits["memory"], "memory")),
    ]);
    flags.extend(["--cpus".into(), cpus(&text(&limits["cpu"], "cpu"))]);
    for from in seq(&c["envFrom"]) {
        assert_eq!(
            from["secretRef"]["name"].as_str(),
            Some("pgsteward-database")
        );
        flags.push(format!("--env-file={}", env_file.display()));
    }
    let volumes = seq(&pod["volumes"]);
    let mut mounts = Vec::new();
    for m in seq(&c["volumeMounts"]) {
        let name = text(&m["name"], "volumeMounts.name");
        let path = text(&m["mountPath"], "mountPath");
        let v = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(&name))
            .unwrap_or_else(|| panic!("volume {name}"));
        let ro = if m["readOnly"].as_bool() == Some(true) {
            ":ro"
        } else {
            ""
        };
        let host = match (
            v["configMap"]["name"].as_str(),
            v["persistentVolumeClaim"]["claimName"].as_str(),
        ) {
            (Some("pgsteward-config"), _) => &vols.config,
            // Optional and absent here: the kubelet mounts it empty.
            (Some("rds-ca-bundle"), _) => &vols.rds_ca,
            (_, Some("pgsteward-upgrade-state")) => &vols.state,
            (_, Some("pgbouncer-config")) => &vols.pgbouncer,
            _ if v["emptyDir"].is_mapping() => {
                let size = mebibytes(&text(&v["emptyDir"]["sizeLimit"], "sizeLimit"));
                flags.push(format!(
                    "--tmpfs={path}:rw,nosuid,nodev,size={size},mode=1777"
                ));
                mounts.push(path);
                continue;
            }
            _ => panic!("volume {name}: this test does not know how to provide {v:?}"),
        };
        flags.push(format!("--volume={}:{path}{ro}", host.display()));
        mounts.push(path);
    }
    Workload {
        flags,
        args: seq(&c["args"]).iter().map(|a| text(a, "args")).collect(),
        mounts,
        grace: pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30),
    }
}
