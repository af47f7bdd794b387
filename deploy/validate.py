#!/usr/bin/env python3
"""Validates everything under deploy/ offline; exits non-zero on any problem.

- Every kustomization entry point is rendered (`kubectl kustomize`, or, where
  kubectl is missing, by reading the plain files its kustomization lists) and
  every object is checked against the Kubernetes JSON schemas bundled with the
  PyPI package kubernetes-validate (strict: unknown fields are errors).
- Prometheus Operator objects (no schema in that bundle) are checked against
  deploy/schemas/*.json, and every PromQL expression is parsed (PyPI
  promql-parser, the Rust parser's bindings), the Grafana dashboard's too.
- The IAM policies must be well-formed policy documents.
- The Helm chart (deploy/helm/pgsteward) passes `helm lint --strict`, and is
  rendered by `helm template` once per kustomization, with the values that
  select the same workload: every object passes the checks above, and the
  objects equal the kustomization's (less Helm's release labels and the
  annotations only Helm needs). So the chart cannot drift from the manifests.

Needs: pip install kubernetes-validate promql-parser (pyyaml and jsonschema
come with kubernetes-validate), and helm (`$HELM`, else on PATH; kubectl too,
optionally). .ci/run installs them all (scripts/lib/deps.sh, ensure_deploy_tools).
"""

import importlib.metadata
import json
import pathlib
import re
import shutil
import subprocess
import sys

import jsonschema
import kubernetes_validate
import promql_parser
import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent
KUBE = DEPLOY / "kubernetes"
CHART = DEPLOY / "helm" / "pgsteward"
# The Kubernetes version to validate against: the newest the installed
# kubernetes-validate bundles (a current release), unless given as argv[1].
ENTRY_POINTS = [
    "service",
    "pgbouncer",
    "cronjob",
    "upgrade/plan",
    "upgrade/start",
    "upgrade/resume",
    "upgrade/abort",
    "upgrade/status",
]
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
}

problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")
    print(f"FAIL {where}: {msg}")


def render_plain(directory):
    """The fallback renderer: the listed resources and generated ConfigMaps,
    without kustomize's transformations (every file is complete on its own:
    names, namespace and labels are written out)."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs = []
    for res in kust.get("resources", []):
        path = (directory / res).resolve()
        if path.is_dir():
            docs.extend(render_plain(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for gen in kust.get("configMapGenerator", []):
        data = {}
        for f in gen.get("files", []):
            key, _, src = f.partition("=")
            src = src or key
            data[pathlib.Path(key).name] = (directory / src).read_text()
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": gen["name"],
                    "namespace": kust.get("namespace", "default"),
                    "labels": gen.get("options", {}).get("labels", {}),
                },
                "data": data,
            }
        )
    return docs


def render(entry):
    directory = KUBE / entry
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run(
            [kubectl, "kustomize", str(directory)], capture_output=True, text=True
        )
        if out.returncode != 0:
            problem(entry, f"kubectl kustomize failed: {out.stderr.strip()}")
            return []
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    return render_plain(directory)


def check_promql(where, expr):
    # Grafana's variables are not PromQL; give them plausible values first.
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "6h")
    expr = re.sub(r"\$\{?(\w+)\}?", "x", expr)
    try:
        promql_parser.parse(expr)
    except Exception as e:  # the parser raises a bare ValueError-like type
        problem(where, f"PromQL does not parse: {e}: {expr}")


def check_object(where, doc, k8s_version):
    key = (doc.get("apiVersion"), doc.get("kind"))
    name = f"{where} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if key in CUSTOM_SCHEMAS:
        schema = json.loads((DEPLOY / "schemas" / CUSTOM_SCHEMAS[key]).read_text())
        for err in jsonschema.Draft7Validator(schema).iter_errors(doc):
            path = ".".join(str(p) for p in err.absolute_path)
            problem(name, f"{path}: {err.message}")
        if doc["kind"] == "PrometheusRule":
            for group in doc["spec"]["groups"]:
                for rule in group["rules"]:
                    check_promql(f"{name} {rule.get('alert') or rule.get('record')}", str(rule["expr"]))
        return
    try:
        kubernetes_validate.validate(doc, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        problem(name, f"{path}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError as e:
        problem(name, f"no schema for {key} in Kubernetes {k8s_version}: {e}")
    if doc.get("metadata", {}).get("namespace") != "data":
        problem(name, "not in namespace data")


def check_dashboard(path):
    dash = json.loads(path.read_text())
    for field in ("uid", "title", "panels", "schemaVersion"):
        if field not in dash:
            problem(path.name, f"missing {field}")
    n = 0
    for panel in dash.get("panels", []):
        for target in panel.get("targets", []):
            n += 1
            check_promql(f"{path.name} panel {panel.get('title')!r}", target["expr"])
    if n == 0:
        problem(path.name, "no queries")
    return n


def check_iam(path):
    doc = json.loads(path.read_text())
    if doc.get("Version") != "2012-10-17":
        problem(path.name, 'Version must be "2012-10-17"')
    for i, st in enumerate(doc.get("Statement", [])):
        if st.get("Effect") not in ("Allow", "Deny"):
            problem(path.name, f"statement {i}: Effect")
        if "Action" not in st or not ("Resource" in st or "Principal" in st):
            problem(path.name, f"statement {i}: needs Action and Resource (or Principal)")
        actions = st.get("Action", [])
        for a in [actions] if isinstance(actions, str) else actions:
            if not re.fullmatch(r"[a-z0-9-]+:[A-Za-z]+", a):
                problem(path.name, f"statement {i}: action {a!r}")


# The chart's values that select each kustomization's workload.
HELM_PROFILES = {
    "service": [],
    "cronjob": ["service.enabled=false", "cronjob.enabled=true"],
    **{
        f"upgrade/{a}": ["service.enabled=false", f"upgrade.action={a}"]
        for a in ("plan", "start", "resume", "abort", "status")
    },
}
# Labels Helm adds to metadata, and annotations only the chart needs
# (Kustomize rolls pods by the ConfigMap's name hash; Helm keeps the journal's
# volume and a running upgrade Job when a release drops them).
HELM_ONLY_LABELS = {
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
    "helm.sh/chart",
}
HELM_ONLY_ANNOTATIONS = {"checksum/config", "helm.sh/resource-policy"}
# Objects the chart adds beyond the kustomizations: the dashboard, which the
# manifests leave to a manual import.
HELM_EXTRA = {("ConfigMap", "pgsteward-dashboard")}


def helm_binary():
    import os

    return os.environ.get("HELM") or shutil.which("helm")


def strip_helm(value):
    """The object as the kustomization writes it: Helm's labels and
    annotations removed wherever they appear, empty maps dropped."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "labels" and isinstance(v, dict):
                v = {lk: lv for lk, lv in v.items() if lk not in HELM_ONLY_LABELS}
            if k == "annotations" and isinstance(v, dict):
                v = {ak: av for ak, av in v.items() if ak not in HELM_ONLY_ANNOTATIONS}
            v = strip_helm(v)
            if v == {} and k in ("labels", "annotations"):
                continue
            out[k] = v
        return out
    if isinstance(value, list):
        return [strip_helm(v) for v in value]
    return value


def differences(a, b, path=""):
    """Where two YAML values differ, as dotted paths (first few)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                out.append(f"{path}.{k}: only in the chart")
            elif k not in b:
                out.append(f"{path}.{k}: missing from the chart")
            else:
                out.extend(differences(a[k], b[k], f"{path}.{k}"))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) == len(b):
            return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
        return [f"{path}: {len(a)} items in the kustomization, {len(b)} in the chart"]
    return [] if a == b else [f"{path}: kustomize {a!r}, chart {b!r}"]


# The chart's copies of files the kustomizations and deploy/grafana own
# (Helm reads only files inside the chart): `validate.py --sync` refreshes them.
def chart_copies():
    rule = (KUBE / "service" / "prometheusrule.yaml").read_text()
    groups = rule[rule.index("  groups:"):]
    alerts = "\n".join(l[2:] if l.startswith("  ") else l for l in groups.splitlines())
    return {
        CHART / "files" / "pgsteward.toml": (KUBE / "base" / "pgsteward.toml").read_text(),
        CHART / "files" / "pgsteward-dashboard.json": (DEPLOY / "grafana" / "pgsteward-dashboard.json").read_text(),
        CHART / "files" / "alerts.yaml": (
            "# The PrometheusRule's spec, the same as deploy/kubernetes/service/prometheusrule.yaml's\n"
            "# (deploy/validate.py compares the rendered objects; `validate.py --sync` refreshes this copy).\n"
            "# Not a template: {{ $labels }} is Prometheus'.\n" + alerts + "\n"
        ),
    }


def check_chart_copies():
    for path, text in chart_copies().items():
        if not path.exists() or path.read_text() != text:
            problem(
                str(path.relative_to(DEPLOY)),
                "out of date with the file it copies: run `python3 deploy/validate.py --sync`",
            )


def check_helm(k8s_version):
    helm = helm_binary()
    if not helm:
        problem(
            "helm",
            "helm not found (set HELM or put it on PATH): "
            "bash -c 'source scripts/lib/deps.sh && ensure_deploy_tools' prints the directory holding it",
        )
        return 0
    out = subprocess.run([helm, "lint", "--strict", "--namespace", "data", str(CHART)], capture_output=True, text=True)
    if out.returncode != 0:
        problem("helm lint", (out.stdout + out.stderr).strip())
    objects = 0
    for entry, sets in HELM_PROFILES.items():
        cmd = [helm, "template", "pgsteward", str(CHART), "--namespace", "data"]
        for s in sets:
            cmd += ["--set", s]
        out = subprocess.run(cmd, capture_output=True, text=True)
        where = f"helm {entry}"
        if out.returncode != 0:
            problem(where, f"helm template failed: {out.stderr.strip()}")
            continue
        rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
        for doc in rendered:
            check_object(where, doc, k8s_version)
            objects += 1
        key = lambda d: (d["kind"], d["metadata"]["name"])
        chart = {key(d): strip_helm(d) for d in rendered}
        kust = {key(d): d for d in render_plain(KUBE / entry)}
        for k in sorted(set(chart) - set(kust) - HELM_EXTRA):
            problem(where, f"{k[0]}/{k[1]} is rendered by the chart but not in the kustomization")
        for k in sorted(set(kust) - set(chart)):
            problem(where, f"{k[0]}/{k[1]} is in the kustomization but not rendered by the chart")
        for k in sorted(set(kust) & set(chart)):
            for d in differences(kust[k], chart[k])[:5]:
                problem(f"{where} {k[0]}/{k[1]}", d)
        dash = chart.get(("ConfigMap", "pgsteward-dashboard"))
        if dash and json.loads(dash["data"]["pgsteward-dashboard.json"]) != json.loads(
            (DEPLOY / "grafana" / "pgsteward-dashboard.json").read_text()
        ):
            problem(where, "the chart's dashboard differs from deploy/grafana/pgsteward-dashboard.json")
    return objects


def main():
    if sys.argv[1:] == ["--sync"]:
        for path, text in chart_copies().items():
            path.write_text(text)
            print(f"wrote {path.relative_to(DEPLOY)}")
        return
    k8s_version = sys.argv[1] if len(sys.argv) > 1 else kubernetes_validate.latest_version()
    print(f"validating against Kubernetes {k8s_version} (kubernetes-validate {importlib.metadata.version('kubernetes-validate')})")
    kinds = 0
    for entry in ENTRY_POINTS:
        docs = render(entry)
        if not docs:
            problem(entry, "rendered no objects")
        for doc in docs:
            check_object(entry, doc, k8s_version)
            kinds += 1
    secret = KUBE / "secret.example.yaml"
    for doc in yaml.safe_load_all(secret.read_text()):
        check_object(secret.name, doc, k8s_version)
        kinds += 1
    queries = check_dashboard(DEPLOY / "grafana" / "pgsteward-dashboard.json")
    for p in sorted((DEPLOY / "iam").glob("*.json")):
        check_iam(p)
    check_chart_copies()
    helm_objects = check_helm(k8s_version)
    print(
        f"{kinds} objects in {len(ENTRY_POINTS)} kustomizations, {helm_objects} from the Helm chart "
        f"in {len(HELM_PROFILES)} profiles, {queries} dashboard queries checked"
    )
    if problems:
        print(f"{len(problems)} problems", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
