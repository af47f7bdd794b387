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

Needs: pip install kubernetes-validate promql-parser (pyyaml and jsonschema
come with kubernetes-validate). .ci/run installs them.
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
# The Kubernetes version to validate against: the newest the installed
# kubernetes-validate bundles (a current release), unless given as argv[1].
ENTRY_POINTS = [
    "service",
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


def main():
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
    print(f"{kinds} objects in {len(ENTRY_POINTS)} kustomizations, {queries} dashboard queries checked")
    if problems:
        print(f"{len(problems)} problems", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
