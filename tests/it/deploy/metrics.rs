//! The alerts and the dashboard use only metrics the service exports.

use super::*;

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
    let url = harness::as_steward(&harness::fresh_db("deploy"));
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
