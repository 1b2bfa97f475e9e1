"""The install bundle: the Helm chart, the plain manifests rendered from it, and the Dockerfile.

* `helm lint` / `helm template` with the helm that tests/helm/install.sh builds from the Go module proxy. Without
  it these tests skip and say why, unless AWE_REQUIRE_HELM=1 (CI), where a missing helm fails them.
* The chart's ClusterRole is exactly deploy/rbac/clusterrole.yaml; its PrometheusRule, with default values, is
  exactly alerts/rules/ (and passes alerts/tests/ under promtool); each prometheusRule.config value changes exactly
  the expressions, `for:` and annotations that use it, and a shortened `for:` fires earlier under promtool; its
  dashboard ConfigMaps hold exactly what dashboards/build.py generates; every value is documented.
* The ServiceMonitor and PrometheusRule render only where the cluster serves their kinds (`--api-versions` for
  `helm template`), or when forced; NOTES.txt names the labels Prometheus selects on, the command that shows the
  selector, the `--set` that fixes a mismatch, and what it skipped.
* Against the real test kube-apiserver (tests/controlplane): the committed deploy/manifests and the chart with
  every optional object on pass server-side dry run (dryRun=All) once the vendored prometheus-operator CRDs are
  installed; the pod template is admitted by Pod Security `restricted`; the exporter, run in-process with a
  token of the chart's ServiceAccount bound only to the chart's ClusterRole, watches everything and discovers a
  webhook configuration; and a real `helm install` on a private control plane without the CRDs succeeds (and
  says what it skipped), then `helm upgrade` once the CRDs exist creates the ServiceMonitor and PrometheusRule.
* Docker cannot run here: the Dockerfile's structure is checked instead of building it.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.app import Exporter
from exporter.cli import DEFAULT_PORT
from exporter.discovery import Discovery
from exporter.kubeapi import KubeApi, load_credentials
from exporter.pki import CertificateAuthority
from tests import factories as f
from tests.chart import (
    CHART,
    NAMESPACE,
    REPO,
    alert_rule_groups,
    api_resource,
    apply,
    dynamic_client,
    ensure_namespace,
    install_crds,
    kinds,
    only,
    require_helm,
    run,
    template,
)
from tests.conftest import Servers
from tests.controlplane.harness import ControlPlane
from tests.helpers import eventually, uid

MANIFESTS = REPO / "deploy" / "manifests"
RBAC = REPO / "deploy" / "rbac" / "clusterrole.yaml"
WATCHED = ("validatingwebhookconfigurations", "mutatingwebhookconfigurations", "namespaces", "services",
           "endpointslices")


@pytest.fixture(scope="session")
def helm() -> Path:
    return require_helm()


def committed_manifests() -> list[dict[str, Any]]:
    """deploy/manifests/ in kustomization order, as `kubectl apply -k` would send it."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in yaml.safe_load_all((MANIFESTS / name).read_text())
            if d]


# --------------------------------------------------------------------------------------------- #
# chart rendering (helm only, no cluster)


def test_helm_lint_strict(helm: Path) -> None:
    done = run([helm, "lint", "--strict", CHART])
    assert done.returncode == 0, done.stdout + done.stderr
    for extra in (["--set", "networkPolicy.enabled=true,podDisruptionBudget.enabled=true,namespace.create=true"],
                  # lint knows no prometheus-operator API: force the two templates that need it
                  ["--set", "serviceMonitor.force=true,prometheusRule.force=true"],
                  ["--set", "serviceMonitor.enabled=false,prometheusRule.enabled=false,rbac.create=false,"
                            "serviceAccount.create=false,serviceAccount.name=existing"]):
        done = run([helm, "lint", "--strict", CHART, *extra])
        assert done.returncode == 0, done.stdout + done.stderr


def test_default_render_is_what_a_kube_prometheus_stack_user_needs(helm: Path) -> None:
    docs = template(helm)
    dashboards = sorted((CHART / "files" / "dashboards").glob("*.json"))
    assert kinds(docs) == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment",
                                  "ServiceMonitor", "PrometheusRule", *["ConfigMap"] * len(dashboards)])
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "admission-webhook-exporter", doc["kind"]
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]
    # The probes announce this identity in their AdmissionReview userInfo (exporter/probe.py).
    assert only(docs, "ServiceAccount")["metadata"]["name"] == "admission-webhook-exporter"


def test_deployment_is_hardened_and_probed(helm: Path) -> None:
    deployment = only(template(helm), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert set(container["resources"]) == {"requests", "limits"}
    assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["ports"] == [{"name": "metrics", "containerPort": DEFAULT_PORT, "protocol": "TCP"}]
    assert container["args"] == ["serve", f"--listen-address=:{DEFAULT_PORT}", "--probe-interval=30",
                                 "--probe-concurrency=64", "--log-level=info", "--log-format=logfmt"]
    assert container["image"] == "ghcr.io/admission-webhook-exporter/admission-webhook-exporter:0.1.0"
    assert pod["serviceAccountName"] == "admission-webhook-exporter"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]

    tuned = only(template(helm, "exporter.probeInterval=10", "exporter.logFormat=json", "exporter.port=9999",
                          "exporter.extraArgs={--probe-concurrency=8}", "image.tag=0.2.0"), "Deployment")
    (container,) = tuned["spec"]["template"]["spec"]["containers"]
    assert "--probe-interval=10" in container["args"] and "--log-format=json" in container["args"]
    assert "--listen-address=:9999" in container["args"] and container["args"][-1] == "--probe-concurrency=8"
    assert container["image"].endswith(":0.2.0")
    pinned = only(template(helm, "image.digest=sha256:" + "a" * 64), "Deployment")
    assert pinned["spec"]["template"]["spec"]["containers"][0]["image"].endswith("@sha256:" + "a" * 64)


def test_clusterrole_is_exactly_the_rbac_discovery_needs(helm: Path) -> None:
    want = yaml.safe_load(RBAC.read_text())["rules"]
    docs = template(helm)
    role = only(docs, "ClusterRole")
    assert role["rules"] == want
    committed = [d for d in committed_manifests() if d["kind"] == "ClusterRole"]
    assert [d["rules"] for d in committed] == [want]
    binding = only(docs, "ClusterRoleBinding")
    account = only(docs, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    assert not [d for d in template(helm, "rbac.create=false") if d["kind"].startswith("ClusterRole")]


def test_service_and_servicemonitor_match_kube_prometheus_stack(helm: Path) -> None:
    docs = template(helm)
    service, monitor = only(docs, "Service"), only(docs, "ServiceMonitor")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": DEFAULT_PORT, "targetPort": "metrics",
                                         "protocol": "TCP"}]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # The per-endpoint series' own `endpoint` label must beat the target label of that name (docs/alerts.md).
    assert endpoint["honorLabels"] is True
    # The alerts select job="admission-webhook-exporter" whatever the release is called.
    assert {"action": "replace", "targetLabel": "job", "replacement": "admission-webhook-exporter"} \
        in endpoint["relabelings"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["prometheusRule"]["config"]["exporterSelector"] == \
        f'job="{values["serviceMonitor"]["jobLabel"]}"' == 'job="admission-webhook-exporter"'

    # The README's one command: a single --set labels the ServiceMonitor and the PrometheusRule.
    other = template(helm, "serviceMonitor.additionalLabels.release=kps", release="awe")
    assert only(other, "ServiceMonitor")["metadata"]["labels"]["release"] == "kps"
    assert only(other, "PrometheusRule")["metadata"]["labels"]["release"] == "kps"
    split = template(helm, "serviceMonitor.additionalLabels.release=a", "prometheusRule.additionalLabels.release=b")
    assert only(split, "PrometheusRule")["metadata"]["labels"]["release"] == "b"
    assert only(other, "Deployment")["metadata"]["name"] == "awe-admission-webhook-exporter"
    (endpoint,) = only(other, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["relabelings"][0]["replacement"] == "admission-webhook-exporter"
    assert not [d for d in template(helm, "serviceMonitor.enabled=false") if d["kind"] == "ServiceMonitor"]


def test_prometheusrule_is_the_alerts_bundle(helm: Path) -> None:
    want = alert_rule_groups()
    rule = only(template(helm), "PrometheusRule")
    assert rule["spec"]["groups"] == want
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    alerts = [r["alert"] for g in want for r in g["rules"] if "alert" in r]
    dropped = alerts[0]
    tuned = only(template(helm, f"prometheusRule.disabledAlerts={{{dropped}}}",
                          "prometheusRule.additionalRuleLabels.team=platform",
                          "prometheusRule.additionalRuleLabels.severity=ignored"), "PrometheusRule")
    rules = [r for g in tuned["spec"]["groups"] for r in g["rules"]]
    assert dropped not in [r.get("alert") for r in rules]
    assert len([r for r in rules if "alert" in r]) == len(alerts) - alerts.count(dropped)
    for r in rules:
        if "alert" in r:
            original = next(o for g in want for o in g["rules"] if o.get("alert") == r["alert"]
                            and o["expr"] == r["expr"])
            assert r["labels"] == {**original.get("labels", {}), "team": "platform",
                                   "severity": original["labels"]["severity"]}
        else:
            assert "team" not in r.get("labels", {})  # recording rules keep their series' labels
    assert not [d for d in template(helm, "prometheusRule.enabled=false") if d["kind"] == "PrometheusRule"]


def _chart_with_dashboards(tmp_path: Path, dashboards: dict[str, Any]) -> Path:
    chart = tmp_path / "admission-webhook-exporter"
    shutil.copytree(CHART, chart)
    folder = chart / "files" / "dashboards"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, content in dashboards.items():
        (folder / name).write_text(json.dumps(content, indent=2) + "\n")
    return chart


def test_dashboards_become_one_grafana_configmap_each(helm: Path, tmp_path: Path) -> None:
    boards = {"overview.json": {"uid": "awe-overview", "title": "Admission webhooks", "panels": []},
              "webhook_detail.json": {"uid": "awe-webhook", "title": "Admission webhook", "panels": [{"id": 1}]}}
    chart = _chart_with_dashboards(tmp_path, boards)
    maps = [d for d in template(helm, chart=chart) if d["kind"] == "ConfigMap"]
    assert sorted(m["metadata"]["name"] for m in maps) == [
        "admission-webhook-exporter-dashboard-overview", "admission-webhook-exporter-dashboard-webhook-detail"]
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert m["metadata"]["namespace"] == NAMESPACE
        ((name, text),) = m["data"].items()
        assert json.loads(text) == boards[name]
    assert not [d for d in template(helm, "dashboards.enabled=false", chart=chart) if d["kind"] == "ConfigMap"]
    moved = [d for d in template(helm, "dashboards.namespace=grafana", "dashboards.annotations.grafana_folder=K8s",
                                 chart=chart) if d["kind"] == "ConfigMap"]
    assert {(m["metadata"]["namespace"], m["metadata"]["annotations"]["grafana_folder"]) for m in moved} == \
        {("grafana", "K8s")}
    # A chart without dashboards: nothing, and no error.
    empty = _chart_with_dashboards(tmp_path / "empty", {})
    assert not [d for d in template(helm, chart=empty) if d["kind"] == "ConfigMap"]


def test_optional_objects(helm: Path) -> None:
    assert not {"NetworkPolicy", "PodDisruptionBudget", "Namespace"} & set(kinds(template(helm)))
    docs = template(helm, "networkPolicy.enabled=true", "podDisruptionBudget.enabled=true", "namespace.create=true",
                    namespace="awe")
    namespace = only(docs, "Namespace")
    assert namespace["metadata"]["name"] == "awe"
    assert namespace["metadata"]["labels"]["admission-webhook-exporter.io/exclude"] == "true"
    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert only(template(helm, "podDisruptionBudget.enabled=true", "podDisruptionBudget.minAvailable=1"),
                "PodDisruptionBudget")["spec"] == {
        "selector": pdb["spec"]["selector"], "minAvailable": 1}

    policy = only(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"] == only(docs, "Deployment")["spec"]["selector"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"] == [{"namespaceSelector": {}, "podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "prometheus"}}}]
    dns, apiserver, backends = policy["egress"]
    assert {p["port"] for p in dns["ports"]} == {53} and dns["to"][0]["podSelector"]["matchLabels"] == {
        "k8s-app": "kube-dns"}
    assert apiserver == {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}
    assert backends == {}  # any destination, any port: backends can be anywhere

    narrowed = only(template(helm, "networkPolicy.enabled=true",
                             "networkPolicy.egress.webhookBackends.ports={8443,9443}",
                             "networkPolicy.egress.apiServer.to[0].ipBlock.cidr=10.0.0.1/32",
                             "networkPolicy.egress.dns.enabled=false"), "NetworkPolicy")["spec"]
    apiserver, backends = narrowed["egress"]
    assert apiserver["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert backends == {"ports": [{"port": 8443, "protocol": "TCP"}, {"port": 9443, "protocol": "TCP"}]}


# --------------------------------------------------------------------------------------------- #
# deploy/manifests; values are documented (scripts/generate.sh --check: tests/test_generate.py)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS.glob("*.yaml")
                                                       if p.name != "kustomization.yaml")
    docs = committed_manifests()
    assert {d["kind"] for d in docs} >= {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                         "Service", "ServiceMonitor", "PrometheusRule"}
    assert all(d["metadata"].get("namespace", NAMESPACE) == NAMESPACE for d in docs)


def _value_lines(text: str) -> dict[str, int]:
    """Dotted path of every mapping key in values.yaml -> its line index (keys inside list items included)."""
    stack: list[tuple[int, str]] = []
    found: dict[str, int] = {}
    for i, line in enumerate(text.splitlines()):
        match = re.match(r"^( *)([A-Za-z_][\w.-]*):(\s|$)", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        found.setdefault(".".join(k for _, k in stack), i)
    return found


def _leaf_paths(values: Any, prefix: str = "") -> set[str]:
    if isinstance(values, dict) and values:
        return {p for k, v in values.items() for p in _leaf_paths(v, f"{prefix}{k}.")}
    return {prefix.rstrip(".")}


def test_every_value_is_commented_and_in_the_readme_table() -> None:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    rows = re.findall(r"^\| `([^`]+)` \| (.*?) \| (.+) \|$", (CHART / "README.md").read_text(), flags=re.M)
    documented = {name: default for name, default, _ in rows}
    assert len(documented) == len(rows), "a value is listed twice in README.md"
    lines, line_of = text.splitlines(), _value_lines(text)
    for name, default in documented.items():
        assert name in line_of, f"README.md documents {name}, which values.yaml does not have"
        above = lines[line_of[name] - 1].strip()
        assert above.startswith("#"), f"values.yaml: {name} has no comment line above it"
        value: Any = values
        for part in name.split("."):
            value = value[part]
        if default.startswith("`") and default.endswith("`"):  # "see values.yaml" for the long ones
            assert yaml.safe_load(default.strip("`")) == value, f"README.md default of {name}: {default}"
    for path in _leaf_paths(values):
        assert any(path == d or path.startswith(d + ".") for d in documented), f"{path} is not in README.md"


# --------------------------------------------------------------------------------------------- #
# Dockerfile (docker cannot build here: its structure is what we can check)


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in joined.splitlines()) if line and not line.startswith("#")]


def test_dockerfile_is_multi_stage_pinned_non_root_and_runtime_only() -> None:
    steps = _instructions((REPO / "Dockerfile").read_text())
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", args["PYTHON_IMAGE"])
    froms = [a for op, a in steps if op == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    copies = [a for op, a in final if op in ("COPY", "ADD")]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "the runtime stage copies only the virtualenv"
    (user,) = [a for op, a in final if op == "USER"]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user) and user.split(":")[0] == "65532", user
    assert ("ENTRYPOINT", '["admission-webhook-exporter"]') in final
    assert ("CMD", '["serve"]') in final
    assert ("EXPOSE", str(DEFAULT_PORT)) in final
    runs = " ".join(a for op, a in steps if op == "RUN")
    assert "pip install" in runs and ".whl" in runs
    assert not re.search(r"\[(dev|test)\]|\s-e\s|--editable|requirements-dev", runs)
    # The wheel's own dependencies are runtime ones: the test tools live in extras the image never installs.
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not {re.split(r"[<>=\[ ]", d)[0].lower() for d in project["dependencies"]} & {
        "pytest", "pytest-asyncio", "pytest-timeout", "mypy", "ruff"}
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", ".dockerignore must exclude everything by default"
    assert {line for line in ignore if line.startswith("!")} == {"!pyproject.toml", "!README.md", "!exporter/"}


# --------------------------------------------------------------------------------------------- #
# against the real test kube-apiserver


@pytest.fixture
def cluster(kube_api: Any, tmp_path: Path) -> Iterator[Any]:
    """A dynamic client with the prometheus-operator CRDs installed and the namespace `monitoring` present."""
    dyn = dynamic_client(kube_api, tmp_path)
    install_crds(dyn)
    ensure_namespace(dyn, NAMESPACE)
    yield dynamic_client(kube_api, tmp_path)  # fresh discovery: sees the new kinds at once


def _dry_run_all(dyn: Any, docs: list[dict[str, Any]]) -> None:
    from kubernetes.dynamic.exceptions import DynamicApiError

    for doc in docs:
        try:
            applied = apply(dyn, doc, dry_run=True).to_dict()
        except DynamicApiError as err:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} refused: {err.status} {err.body!r}", pytrace=False)
        assert (applied["kind"], applied["metadata"]["name"]) == (doc["kind"], doc["metadata"]["name"])


@pytest.mark.controlplane
def test_committed_manifests_pass_server_side_dry_run(cluster: Any) -> None:
    from kubernetes.dynamic.exceptions import NotFoundError

    docs = committed_manifests()
    _dry_run_all(cluster, docs)
    deployment = only(docs, "Deployment")
    with pytest.raises(NotFoundError):  # dryRun=All: validated and admitted, never stored
        cluster.get(api_resource(cluster, "apps/v1", "Deployment"), name=deployment["metadata"]["name"],
                    namespace=NAMESPACE)


@pytest.mark.controlplane
def test_every_optional_object_passes_server_side_dry_run(helm: Path, cluster: Any, tmp_path: Path) -> None:
    chart = _chart_with_dashboards(tmp_path, {"overview.json": {"uid": "awe", "title": "t", "panels": []}})
    docs = template(helm, "networkPolicy.enabled=true", "podDisruptionBudget.enabled=true", "namespace.create=true",
                    "networkPolicy.egress.apiServer.to[0].ipBlock.cidr=127.0.0.1/32",
                    "networkPolicy.egress.webhookBackends.ports={8443}", "prometheusRule.additionalRuleLabels.a=b",
                    chart=chart)
    assert {"NetworkPolicy", "PodDisruptionBudget", "Namespace", "ConfigMap"} <= set(kinds(docs))
    _dry_run_all(cluster, docs)


@pytest.mark.controlplane
def test_pod_template_is_admitted_by_pod_security_restricted(cluster: Any) -> None:
    from kubernetes.dynamic.exceptions import ForbiddenError

    namespace = f"awe-pss-{uid()}"
    ensure_namespace(cluster, namespace, {"pod-security.kubernetes.io/enforce": "restricted"})
    template_ = only(committed_manifests(), "Deployment")["spec"]["template"]
    pods = api_resource(cluster, "v1", "Pod")

    def pod(spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "spec": spec,
                "metadata": {"name": f"exporter-{uid()}", "namespace": namespace, "labels": template_["metadata"][
                    "labels"]}}

    cluster.create(pods, body=pod(template_["spec"]), namespace=namespace, dry_run="All")
    # The control: the same pod without its security contexts is refused, so the check above had teeth.
    bare = json.loads(json.dumps(template_["spec"]))
    bare.pop("securityContext")
    bare["containers"][0].pop("securityContext")
    with pytest.raises(ForbiddenError, match="violates PodSecurity"):
        cluster.create(pods, body=pod(bare), namespace=namespace, dry_run="All")


def _token_kubeconfig(cp: ControlPlane, token: str, path: Path) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "awe", "cluster": {"server": cp.server_url, "certificate-authority": str(cp.ca_path)}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "awe", "user": "sa"}}],
    }))
    path.chmod(0o600)
    return path


@pytest.mark.controlplane
async def test_exporter_runs_as_the_chart_service_account_with_only_its_clusterrole(
        control_plane: ControlPlane, kube_api: Any, servers: Servers, tmp_path: Path) -> None:
    from kubernetes import client

    docs = committed_manifests()
    account, role, binding = (only(docs, k) for k in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding"))
    dyn = await asyncio.to_thread(dynamic_client, kube_api, tmp_path)
    await asyncio.to_thread(ensure_namespace, dyn, NAMESPACE)
    for doc in (account, role, binding):  # for real: the exporter is going to use them
        await asyncio.to_thread(apply, dyn, doc, dry_run=False)
    core, admission = client.CoreV1Api(kube_api), client.AdmissionregistrationV1Api(kube_api)
    user = f"system:serviceaccount:{NAMESPACE}:{account['metadata']['name']}"

    # The ServiceAccount may do exactly what the ClusterRole says (and nothing like reading Secrets).
    authz = client.AuthorizationV1Api(kube_api)

    async def allowed(verb: str, group: str, resource: str) -> bool:
        review = await asyncio.to_thread(authz.create_subject_access_review, {"spec": {
            "user": user, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}",
                                     "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource}}})
        return bool(review.status.allowed)

    for rule in role["rules"]:
        for resource in rule["resources"]:
            for verb in ("list", "watch"):
                assert await allowed(verb, rule["apiGroups"][0], resource), (verb, resource)
            assert not await allowed("get", rule["apiGroups"][0], resource), resource
    assert not await allowed("list", "", "secrets")
    assert not await allowed("create", "admissionregistration.k8s.io", "validatingwebhookconfigurations")

    # A bound token of that ServiceAccount (no token controller runs here; TokenRequest needs none).
    request = await asyncio.to_thread(core.create_namespaced_service_account_token, account["metadata"]["name"],
                                      NAMESPACE, {"spec": {"expirationSeconds": 3600}})
    kubeconfig = _token_kubeconfig(control_plane, request.status.token, tmp_path / "kubeconfig-sa")

    backend_ns = f"awe-deploy-{uid()}"
    await asyncio.to_thread(core.create_namespace, {"metadata": {"name": backend_ns}})
    ca = CertificateAuthority.create()
    backend = await servers.backend(ca.issue(["127.0.0.1"]))
    name = f"deploy-{uid()}"
    nowhere = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nowhere"}}}
    configuration = f.configuration(
        name, f.webhook("url.deploy.example.com", f.url_client(backend.port, ca.ca_bundle), policy="Ignore",
                        **nowhere),
        f.webhook("svc.deploy.example.com", f.service_client(backend_ns, "hook", ca.ca_bundle), policy="Ignore",
                  **nowhere))
    discovery = Discovery(KubeApi(load_credentials(str(kubeconfig))))
    exporter = Exporter(interval=2.0, discovery=discovery)

    def value(metric: str, **labels: str) -> float | None:
        return exporter.registry.get_sample_value(metric, labels)

    try:
        await exporter.start()
        await asyncio.wait_for(discovery.wait_synced(), 10)
        await asyncio.to_thread(admission.create_validating_webhook_configuration, configuration)
        url_endpoint = {"configuration": name, "name": "url.deploy.example.com", "type": "validating",
                        "endpoint": f"127.0.0.1:{backend.port}"}
        await eventually(lambda: value("admission_webhook_probe_success", **url_endpoint) == 1, 10,
                          "the new webhook configuration discovered and probed")
        await eventually(lambda: all(value("admission_webhook_exporter_watch_up", resource=r) == 1 for r in WATCHED),
                          10, "every watch up as the chart's ServiceAccount")
        assert {w.key.name for w in discovery.inventory.webhooks if w.key.configuration == name} == {
            "url.deploy.example.com", "svc.deploy.example.com"}
        assert discovery.last_error == "", discovery.last_error
    finally:
        await exporter.close()
        await asyncio.to_thread(admission.delete_validating_webhook_configuration, name)
        rbac = client.RbacAuthorizationV1Api(kube_api)
        await asyncio.to_thread(rbac.delete_cluster_role_binding, binding["metadata"]["name"])
        await asyncio.to_thread(rbac.delete_cluster_role, role["metadata"]["name"])


def test_webhook_client_config_mounts_the_apiservers_kubeconfigfile(helm: Path) -> None:
    """Opt-in: the Secret holding the apiserver's AdmissionConfiguration kubeConfigFile becomes
    --webhook-client-config; unset, nothing is mounted."""
    default = only(template(helm), "Deployment")["spec"]["template"]["spec"]
    assert not [a for a in default["containers"][0]["args"] if a.startswith("--webhook-client-config")]
    assert [v["name"] for v in default["volumes"]] == ["tmp"]
    pod = only(template(helm, "exporter.webhookClientConfig.secretName=apiserver-webhook-clients"),
               "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--webhook-client-config=/etc/admission-webhook-exporter/webhook-client-config/kubeconfig" in \
        container["args"]
    assert {"name": "webhook-client-config", "mountPath": "/etc/admission-webhook-exporter/webhook-client-config",
            "readOnly": True} in container["volumeMounts"]
    secret = {"secretName": "apiserver-webhook-clients", "defaultMode": 0o440}
    assert {"name": "webhook-client-config", "secret": secret} in pod["volumes"]
