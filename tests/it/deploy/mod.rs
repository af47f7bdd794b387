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

mod commands;
mod metrics;
mod pods;

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
