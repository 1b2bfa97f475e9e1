"""The runbooks' commands that change a webhook configuration, run as written against a real kube-apiserver.

An operator copies these during an outage, so they must work the first time. The commands are read from the
runbook files (fenced ``bash`` blocks and inline code), never retyped here; only the placeholders (``KIND``,
``CONFIG``, ``NAME``) are replaced. Every command that writes a configuration must be one this test runs: a
new one fails `test_every_configuration_changing_command_is_exercised` until it is covered.

Each break-glass section is run both ways an operator may take, for both configuration kinds: back up,
switch the webhook to Ignore, restore; and back up, delete the configuration, restore. The restored
configuration must equal the original (webhooks, labels, annotations). The backup that kept
``resourceVersion`` failed both ways (409 Conflict after the patch; ``resourceVersion should not be set``
after the delete).

kubectl: ``$AWE_KUBECTL``, else the cache's ``bin/kubectl`` (built by the node installer), else ``kubectl``
on PATH. Missing, the tests skip, or fail when ``AWE_REQUIRE_KUBECTL=1`` (CI), like the control plane's.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.pki import CertificateAuthority
from tests import factories as f

ROOT = Path(__file__).resolve().parent.parent
RUNBOOKS = sorted((ROOT / "docs" / "runbooks").glob("*.md"))
REQUIRE_ENV = "AWE_REQUIRE_KUBECTL"
KINDS = {"validating": "validatingwebhookconfiguration", "mutating": "mutatingwebhookconfiguration"}
SERVER_SET = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields", "selfLink")
KUBECTL_TIMEOUT_S = 60
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

FENCE = re.compile(r"^(?P<indent>[ \t]*)```bash[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
INLINE = re.compile(r"`(kubectl [^`]+)`")
# A command that changes a webhook configuration (or writes the backup that restores one).
WRITES = re.compile(r"kubectl (?:patch|delete|apply|replace|create|edit|label|annotate|set)\b[^\n]*"
                    r"(?:\bKIND CONFIG\b|CONFIG\.backup\.yaml)|> *CONFIG\.backup\.yaml")


@dataclass(frozen=True)
class Command:
    runbook: str
    text: str  # the shell text as the runbook has it, placeholders included
    role: str  # what this test runs it as; "" when it does not know it


def _role(text: str) -> str:
    if re.search(r"> *CONFIG\.backup\.yaml", text):
        return "backup"
    if "-f CONFIG.backup.yaml" in text:
        return "restore"
    if re.fullmatch(r"kubectl delete KIND CONFIG", text.strip()):
        return "delete"
    if text.startswith("kubectl patch KIND CONFIG") and '"failurePolicy":"Ignore"' in text:
        return "ignore"
    if text.startswith("kubectl patch KIND CONFIG") and '"caBundle"' in text:
        return "ca_bundle"
    return ""


def configuration_commands(runbook: Path) -> list[Command]:
    """Every command in the runbook that writes a webhook configuration, from code blocks and inline code."""
    text = runbook.read_text()
    found = []
    for m in FENCE.finditer(text):
        body = "\n".join(line.removeprefix(m["indent"]) for line in m["body"].splitlines()).strip()
        if WRITES.search(body):
            found.append(Command(runbook.name, body, _role(body)))
    prose = FENCE.sub("", text)
    found += [Command(runbook.name, c, _role(c)) for c in INLINE.findall(prose) if WRITES.search(c)]
    return found


def steps(runbook: Path) -> dict[str, str]:
    """The command of each role; the same command may be repeated (in prose), two different ones may not."""
    by_role: dict[str, set[str]] = {}
    for c in configuration_commands(runbook):
        by_role.setdefault(c.role, set()).add(c.text)
    assert all(len(v) == 1 for v in by_role.values()), f"{runbook.name}: one command per step expected: {by_role}"
    return {role: next(iter(texts)) for role, texts in by_role.items()}


BREAK_GLASS = [p for p in RUNBOOKS if "## Break glass" in p.read_text()]


def test_every_configuration_changing_command_is_exercised() -> None:
    unknown = [c for p in RUNBOOKS for c in configuration_commands(p) if not c.role]
    assert not unknown, f"runbook commands that change a configuration and that no test runs: {unknown}"
    assert len(BREAK_GLASS) >= 6
    for runbook in BREAK_GLASS:
        assert {"backup", "ignore", "delete", "restore"} <= steps(runbook).keys(), runbook.name


# -- Running them ----------------------------------------------------------------------------------------------
def find_kubectl() -> Path:
    cache = Path(os.environ.get("AWE_CACHE", Path.home() / ".cache" / "admission-webhook-exporter"))
    for candidate in (os.environ.get("AWE_KUBECTL"), cache / "bin" / "kubectl", shutil.which("kubectl")):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    reason = f"kubectl not found ($AWE_KUBECTL, {cache / 'bin' / 'kubectl'}, PATH)"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} but {REQUIRE_ENV}=1", pytrace=False)
    pytest.skip(reason)


class Shell:
    """bash in a private folder, with the control plane's admin kubeconfig and only our kubectl on PATH first."""

    def __init__(self, kubectl: Path, kubeconfig: Path, cwd: Path) -> None:
        self.cwd = cwd
        bin_dir = cwd / "bin"
        bin_dir.mkdir()
        (bin_dir / "kubectl").symlink_to(kubectl)
        proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
        self.env = {k: v for k, v in os.environ.items() if k.lower() not in proxies}
        self.env.update(KUBECONFIG=str(kubeconfig), HOME=str(cwd), PATH=f"{bin_dir}:{os.environ['PATH']}")

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.cwd, env=self.env, text=True,
                              capture_output=True, timeout=KUBECTL_TIMEOUT_S, check=False)

    def ok(self, script: str) -> str:
        done = self.run(script)
        assert done.returncode == 0, f"{script}\n--- exit {done.returncode}\n{done.stderr}"
        return done.stdout

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        done = self.run(f"kubectl get {kind} {name} -o json")
        if done.returncode != 0:
            assert "NotFound" in done.stderr, done.stderr
            return None
        obj: dict[str, Any] = json.loads(done.stdout)
        return obj


def substitute(text: str, **values: str) -> str:
    for placeholder, value in values.items():
        text = re.sub(rf"\b{placeholder}\b", value, text)
    return text


def essentials(obj: dict[str, Any] | None) -> dict[str, Any]:
    """What a restore must bring back: the webhooks as stored, the labels, and the annotations but kubectl's
    last-applied-configuration (which the runbooks leave out on purpose, and say why)."""
    assert obj is not None, "the configuration is not there"
    meta = obj["metadata"]
    annotations = {k: v for k, v in meta.get("annotations", {}).items() if k != LAST_APPLIED}
    return {"webhooks": obj["webhooks"], "labels": meta.get("labels", {}), "annotations": annotations}


def policies(obj: dict[str, Any] | None) -> dict[str, str]:
    assert obj is not None
    return {h["name"]: h["failurePolicy"] for h in obj["webhooks"]}


@pytest.fixture
def shell(control_plane: Any, tmp_path: Path) -> Shell:
    control_plane.ensure_running()
    return Shell(find_kubectl(), Path(control_plane.kubeconfig_path), tmp_path)


@pytest.fixture
def configuration(shell: Shell, request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    """A Fail configuration of two webhooks that intercept nothing (no namespace carries the label they
    select), applied the way `kubectl apply` of a chart's manifest would, then its caBundles injected the way
    cert-manager's cainjector does: (kind, name, the webhook the runbook names)."""
    kind = KINDS[request.param]
    config = f"runbook-{uuid.uuid4().hex[:8]}"
    nowhere = {"namespaceSelector": {"matchLabels": {"admission-webhook-exporter.io/runbook-test": config}}}
    names = ("guard.runbook.example.com", "sibling.runbook.example.com")
    hooks = [f.webhook(n, {"service": {"namespace": "webhooks", "name": "policy", "path": "/v"}}, **nowhere)
             for n in names]
    obj = f.configuration(config, *hooks, kind="ValidatingWebhookConfiguration" if request.param == "validating"
                          else "MutatingWebhookConfiguration")
    obj["metadata"].update(labels={"app.kubernetes.io/name": "policy"},
                           annotations={"cert-manager.io/inject-ca-from": "webhooks/policy-serving"})
    (shell.cwd / "original.yaml").write_text(yaml.safe_dump(obj))
    shell.ok("kubectl apply -f original.yaml")
    bundle = CertificateAuthority.create("runbook CA").ca_bundle
    injected = {"webhooks": [{"name": n, "clientConfig": {"caBundle": bundle}} for n in names]}
    shell.ok(f"kubectl patch {kind} {config} --type=strategic -p '{json.dumps(injected)}'")
    try:
        yield kind, config, "guard.runbook.example.com"
    finally:
        shell.run(f"kubectl delete {kind} {config} --ignore-not-found")


@pytest.mark.controlplane
@pytest.mark.parametrize("configuration", sorted(KINDS), indirect=True)
@pytest.mark.parametrize("runbook", BREAK_GLASS, ids=lambda p: p.stem)
def test_break_glass_then_restore_after_a_patch_and_after_a_delete(runbook: Path, shell: Shell,
                                                                  configuration: tuple[str, str, str]) -> None:
    kind, config, name = configuration
    step = {role: substitute(text, KIND=kind, CONFIG=config, NAME=name) for role, text in steps(runbook).items()}
    original = shell.get(kind, config)
    backup = shell.cwd / f"{config}.backup.yaml"

    # Patch to Ignore, then restore.
    shell.ok(step["backup"])
    kept = yaml.safe_load(backup.read_text())
    assert not set(kept["metadata"]) & set(SERVER_SET), f"server-set fields kept: {kept['metadata']}"
    assert LAST_APPLIED not in kept["metadata"]["annotations"]
    assert kept["webhooks"] == original["webhooks"] if original else False
    shell.ok(step["ignore"])
    assert policies(shell.get(kind, config)) == {name: "Ignore", "sibling.runbook.example.com": "Fail"}
    shell.ok(step["restore"])
    restored = shell.get(kind, config)
    assert essentials(restored) == essentials(original)
    # What a later `kubectl apply` of the original manifest would see: no last-applied, so nothing is deleted.
    assert restored is not None and LAST_APPLIED not in restored["metadata"]["annotations"]

    # Delete, then restore.
    shell.ok(step["backup"])
    shell.ok(step["delete"])
    assert shell.get(kind, config) is None
    shell.ok(step["restore"])
    assert essentials(shell.get(kind, config)) == essentials(original)

    # The chart's next `kubectl apply` keeps the injected caBundle (a restore that rewrote last-applied with the
    # copy's fields would make it delete the caBundle, which the manifest does not list).
    shell.ok("kubectl apply -f original.yaml")
    assert essentials(shell.get(kind, config)) == essentials(original)


@pytest.mark.controlplane
@pytest.mark.parametrize("configuration", ["validating"], indirect=True)
def test_ca_bundle_patch_changes_only_the_named_webhooks_ca(shell: Shell,
                                                           configuration: tuple[str, str, str]) -> None:
    kind, config, name = configuration
    [runbook] = [p for p in RUNBOOKS if "ca_bundle" in steps(p)]
    before = shell.get(kind, config)
    assert before is not None
    rotated = CertificateAuthority.create("rotated CA")
    (shell.cwd / "ca.pem").write_bytes(rotated.cert_pem)
    shell.ok(substitute(steps(runbook)["ca_bundle"], KIND=kind, CONFIG=config, NAME=name))
    after = shell.get(kind, config)
    assert after is not None
    hooks = {h["name"]: h for h in after["webhooks"]}
    assert base64.b64decode(hooks[name]["clientConfig"]["caBundle"]) == rotated.cert_pem
    old = {h["name"]: h for h in before["webhooks"]}
    assert hooks[name]["clientConfig"]["service"] == old[name]["clientConfig"]["service"]
    assert hooks["sibling.runbook.example.com"] == old["sibling.runbook.example.com"]
