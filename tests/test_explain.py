"""`explain`: the error strings of real incidents, as the apiserver and kubectl print them, and what they mean;
then a real kube-apiserver's own error, explained with the webhook's live verdict and repaired by the
break-glass command the explanation prints."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import load_inventory, main
from exporter.explain import Backend, ca_bundle, explain, locate, parse_error
from exporter.model import WebhookKey
from exporter.pki import CertificateAuthority
from tests import factories as f
from tests.servers import free_port
from tests.test_audit import run_cli

FIXTURES = Path(__file__).parent / "fixtures" / "audit"
KYVERNO_NO_ENDPOINTS = (
    'Internal error occurred: failed calling webhook "validate.kyverno.svc-fail": failed to call webhook: Post '
    '"https://kyverno-svc.kyverno.svc:443/validate/fail?timeout=10s": no endpoints available for service '
    '"kyverno-svc"')

# (error text, expected fields). Fields: kind, webhook, service, namespace, port, path, timeout, reason, cause.
INCIDENTS: list[tuple[str, dict[str, Any]]] = [
    (KYVERNO_NO_ENDPOINTS,
     {"kind": "transport_failure", "webhook": "validate.kyverno.svc-fail", "service": "kyverno-svc",
      "namespace": "kyverno", "port": 443, "path": "/validate/fail", "timeout": "10s", "reason": "no_endpoints",
      "cause": 'no endpoints available for service "kyverno-svc"'}),
    ('Error from server (InternalError): error when creating "deploy.yaml": Internal error occurred: failed calling '
     'webhook "mutate.kyverno.svc-fail": failed to call webhook: Post "https://kyverno-svc.kyverno.svc:443/mutate/'
     'fail?timeout=10s": dial tcp 10.96.12.4:443: connect: connection refused',
     {"kind": "transport_failure", "webhook": "mutate.kyverno.svc-fail", "service": "kyverno-svc",
      "namespace": "kyverno", "port": 443, "path": "/mutate/fail", "reason": "connection_refused",
      "cause": "dial tcp 10.96.12.4:443: connect: connection refused"}),
    ('Internal error occurred: failed calling webhook "validation.gatekeeper.sh": failed to call webhook: Post '
     '"https://gatekeeper-webhook-service.gatekeeper-system.svc:443/v1/admit?timeout=3s": context deadline exceeded',
     {"kind": "transport_failure", "webhook": "validation.gatekeeper.sh", "service": "gatekeeper-webhook-service",
      "namespace": "gatekeeper-system", "path": "/v1/admit", "timeout": "3s", "reason": "timeout",
      "cause": "context deadline exceeded"}),
    ('Error from server (InternalError): Internal error occurred: failed calling webhook "webhook.cert-manager.io": '
     'failed to call webhook: Post "https://cert-manager-webhook.cert-manager.svc:443/validate?timeout=30s": tls: '
     'failed to verify certificate: x509: certificate signed by unknown authority',
     {"kind": "transport_failure", "webhook": "webhook.cert-manager.io", "service": "cert-manager-webhook",
      "namespace": "cert-manager", "timeout": "30s", "reason": "x509_unknown_authority"}),
    ('Internal error occurred: failed calling webhook "webhook.cert-manager.io": failed to call webhook: Post '
     '"https://cert-manager-webhook.cert-manager.svc:443/mutate?timeout=10s": x509: certificate signed by unknown '
     'authority (possibly because of "crypto/rsa: verification error" while trying to verify candidate authority '
     'certificate "cert-manager-webhook-ca")',
     {"kind": "transport_failure", "service": "cert-manager-webhook", "path": "/mutate",
      "reason": "x509_unknown_authority"}),
    ('Internal error occurred: failed calling webhook "vpod.kb.io": failed to call webhook: Post '
     '"https://webhook-service.system.svc:443/validate--v1-pod?timeout=10s": tls: failed to verify certificate: '
     'x509: certificate has expired or is not yet valid: current time 2024-03-01T10:00:00Z is after '
     '2024-02-28T00:00:00Z',
     {"kind": "transport_failure", "webhook": "vpod.kb.io", "service": "webhook-service", "namespace": "system",
      "path": "/validate--v1-pod", "reason": "x509_expired"}),
    ('Internal error occurred: failed calling webhook "vpod.kb.io": failed to call webhook: Post '
     '"https://webhook-service.system.svc:443/validate--v1-pod?timeout=10s": tls: failed to verify certificate: '
     'x509: certificate has expired or is not yet valid: current time 2024-03-01T10:00:00Z is before '
     '2024-03-01T10:05:00Z',
     {"reason": "x509_not_yet_valid"}),
    ('Internal error occurred: failed calling webhook "validate.apps.example.com": failed to call webhook: Post '
     '"https://policy.apps.svc:443/validate?timeout=10s": tls: failed to verify certificate: x509: certificate is '
     'valid for policy.default.svc, not policy.apps.svc',
     {"service": "policy", "namespace": "apps", "reason": "x509_hostname_mismatch"}),
    ('Error from server (Forbidden): error when creating "pod.yaml": admission webhook "vpod.kb.io" denied the '
     'request: spec.containers[0].image: Invalid value: "nginx:latest": the latest tag is not allowed',
     {"kind": "denial", "webhook": "vpod.kb.io", "service": "", "reason": "", "break_glass": (),
      "cause": 'spec.containers[0].image: Invalid value: "nginx:latest": the latest tag is not allowed'}),
    ('Internal error occurred: failed calling webhook "namespace.sidecar-injector.istio.io": failed to call webhook: '
     'Post "https://istiod.istio-system.svc:443/inject?timeout=10s": write tcp 10.0.0.12:48526->10.0.0.40:8132: '
     'write: broken pipe',
     {"kind": "transport_failure", "service": "istiod", "namespace": "istio-system", "reason": "unreachable"}),
    ('Internal error occurred: failed calling webhook "validate.nginx.ingress.kubernetes.io": failed to call '
     'webhook: Post "https://ingress-nginx-controller-admission.ingress-nginx.svc:443/networking/v1/ingresses?'
     'timeout=10s": proxy error from 127.0.0.1:6443 while dialing 10.4.1.12:8443, code 503: 503 Service Unavailable',
     {"service": "ingress-nginx-controller-admission", "path": "/networking/v1/ingresses", "reason": "unreachable"}),
    # Before Kubernetes 1.19 the apiserver did not quote the URL nor say "failed to call webhook".
    ('Internal error occurred: failed calling webhook "validate.nginx.ingress.kubernetes.io": Post '
     'https://ingress-nginx-controller-admission.ingress-nginx.svc:443/networking/v1beta1/ingresses?timeout=10s: '
     'dial tcp 10.96.33.12:443: i/o timeout',
     {"service": "ingress-nginx-controller-admission", "namespace": "ingress-nginx", "reason": "timeout",
      "cause": "dial tcp 10.96.33.12:443: i/o timeout"}),
    ('Internal error occurred: failed calling webhook "opa.example.com": failed to call webhook: Post '
     '"https://opa.opa.svc:443/?timeout=10s": service "opa" not found',
     {"service": "opa", "namespace": "opa", "path": "/", "reason": "service_not_found"}),
    ('Internal error occurred: failed calling webhook "hook.example.com": failed to call webhook: Post '
     '"https://hooks.example.com:8443/check?timeout=5s": dial tcp: lookup hooks.example.com on 10.0.0.2:53: no '
     'such host',
     {"service": "", "port": 8443, "path": "/check", "reason": "dns", "timeout": "5s",
      "url": "https://hooks.example.com:8443/check"}),  # the apiserver's ?timeout= is not the configured URL
    ('Error from server (BadRequest): admission webhook "audit.example.com" does not support dry run',
     {"kind": "configuration", "webhook": "audit.example.com", "reason": ""}),
    ("The connection to the server localhost:8080 was refused - did you specify the right host or port?",
     {"kind": "unknown", "webhook": "", "reason": "", "confirm": (), "break_glass": ()}),
]


@pytest.mark.parametrize(("text", "expected"), INCIDENTS, ids=[e.get("reason") or e.get("kind", "") for _, e in
                                                                INCIDENTS])
def test_incident_errors_are_explained(text: str, expected: dict[str, Any]) -> None:
    explanation = explain(text)
    assert {k: getattr(explanation, k) for k in expected} == expected
    assert explanation.meaning and explanation.likely_causes
    if explanation.kind == "transport_failure":
        assert explanation.break_glass and explanation.confirm and explanation.fix
    assert "?timeout=" not in explanation.url


def test_cert_manager_ca_rotation_is_the_first_suspect() -> None:
    e = explain(INCIDENTS[4][0])
    assert "crypto/rsa: verification error" in e.likely_causes[0] and "new key" in e.likely_causes[0]
    assert ("openssl verify -CAfile /tmp/webhook-ca.pem -verify_hostname cert-manager-webhook.cert-manager.svc "
            "/tmp/webhook-served.pem") in e.confirm


def test_without_a_cluster_commands_locate_the_configuration_first() -> None:
    e = explain(KYVERNO_NO_ENDPOINTS)
    assert e.confirm[0] == (
        "kubectl get validatingwebhookconfigurations,mutatingwebhookconfigurations -o jsonpath='{range .items[*]}"
        "{.kind}/{.metadata.name}{\" \"}{.webhooks[*].name}{\"\\n\"}{end}' | grep -E ' validate\\.kyverno\\.svc-fail"
        "( |$)'")
    assert "kubectl -n kyverno get endpointslices -l kubernetes.io/service-name=kyverno-svc -o wide" in e.confirm


def test_with_an_inventory_commands_name_the_configuration() -> None:
    inventory = load_inventory([str(FIXTURES / "policy-engine-all-resources.yaml")])
    e = explain(KYVERNO_NO_ENDPOINTS, inventory)
    assert [(k.configuration, k.type) for k in e.configurations] == [
        ("kyverno-resource-validating-webhook-cfg", "validating")]
    assert e.confirm[0] == "kubectl get validatingwebhookconfiguration kyverno-resource-validating-webhook-cfg -o yaml"
    assert e.break_glass[1] == (
        "kubectl patch validatingwebhookconfiguration kyverno-resource-validating-webhook-cfg --type=strategic -p "
        "'{\"webhooks\":[{\"name\":\"validate.kyverno.svc-fail\",\"failurePolicy\":\"Ignore\"}]}'")
    assert parse_error(KYVERNO_NO_ENDPOINTS).diagnosis == "no_endpoints"


def test_cli_reads_stdin_and_adds_the_probe_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    port = asyncio.run(free_port())
    manifests = tmp_path / "hooks.yaml"
    hook = f.webhook("local.example.com", f.url_client(port, ""))
    manifests.write_text(yaml.safe_dump(f.configuration("local", hook)))
    text = ('Internal error occurred: failed calling webhook "local.example.com": failed to call webhook: Post '
            f'"https://127.0.0.1:{port}/validate?timeout=5s": dial tcp 127.0.0.1:{port}: connect: connection refused')
    monkeypatch.setattr("sys.stdin", io.StringIO(text + "\n"))
    assert main(["explain", "--manifests", str(manifests), "--output", "json"]) == 1  # one error found
    doc = json.loads(capsys.readouterr().out)
    assert doc["count"] == 1
    (out,) = doc["errors"]
    assert (out["kind"], out["reason"], out["url"], out["timeout"]) == (
        "transport_failure", "connection_refused", f"https://127.0.0.1:{port}/validate", "5s")
    (verdict,) = out["verdicts"]
    assert (verdict["name"], verdict["verdict"], verdict["reason"]) == ("local.example.com", "down",
                                                                        "connection_refused")
    assert main(["explain", text]) == 1
    shown = capsys.readouterr().out
    assert shown.startswith('Transport failure calling webhook "local.example.com" (reason connection_refused)\n')
    assert "\nBreak glass (failurePolicy Fail" in shown and "Probe verdict now" not in shown
    monkeypatch.setattr("sys.stdin", io.StringIO("  \n"))
    assert main(["explain"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# -- Against a real kube-apiserver -----------------------------------------------------------------------------
async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


def shell(command: str, kubeconfig: Path) -> str:
    """A printed command, run as an operator would paste it."""
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], check=True, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    return done.stdout


def run_break_glass(command: str, kubeconfig: Path, admission: Any, name: str) -> None:
    """Run the patch as printed, with kubectl when there is one (else the same patch through the client)."""
    if shutil.which("kubectl"):
        shell(command, kubeconfig)
        return
    body = json.loads(command.split(" -p ", 1)[1].strip("'"))
    admission.patch_validating_webhook_configuration(name, body,
                                                     _content_type="application/strategic-merge-patch+json")


@pytest.mark.controlplane
async def test_the_apiservers_own_error_explained_live_and_repaired(kube_api: Any, control_plane: Any,
                                                                    tmp_path: Path) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core, admission = client.CoreV1Api(kube_api), client.AdmissionregistrationV1Api(kube_api)
    suffix = uuid.uuid4().hex[:8]
    namespace, name = f"explain-{suffix}", f"explain-{suffix}"
    webhook = f"cm.{name}.example.com"
    await call(core.create_namespace, {"metadata": {"name": namespace}})
    dead = await free_port()
    ca = CertificateAuthority.create()
    hook = f.webhook(webhook, f.url_client(dead, ca.ca_bundle), policy="Fail", timeout=3,
                     namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": namespace}})
    await call(admission.create_validating_webhook_configuration, f.configuration(name, hook))
    try:
        message = ""
        for _ in range(50):  # the apiserver's webhook cache may lag the create by a moment
            try:
                await call(core.create_namespaced_config_map, namespace, {"metadata": {"name": "probe"}})
                await call(core.delete_namespaced_config_map, "probe", namespace)
            except ApiException as err:
                message = json.loads(err.body)["message"]
                break
            await asyncio.sleep(0.1)
        assert f'failed calling webhook "{webhook}"' in message

        kubeconfig = control_plane.kubeconfig_path
        code, stdout, stderr = await run_cli("explain", message, "--kubeconfig", str(kubeconfig), "--output", "json")
        assert code == 1, stderr  # one error
        (out,) = json.loads(stdout)["errors"]
        assert (out["kind"], out["webhook"], out["reason"]) == ("transport_failure", webhook, "connection_refused")
        assert out["configurations"] == [{"configuration": name, "name": webhook, "type": "validating"}]
        (verdict,) = out["verdicts"]
        assert (verdict["verdict"], verdict["reason"]) == ("down", "connection_refused")

        command = out["break_glass"][1]
        assert command == (f"kubectl patch validatingwebhookconfiguration {name} --type=strategic -p "
                           f"'{{\"webhooks\":[{{\"name\":\"{webhook}\",\"failurePolicy\":\"Ignore\"}}]}}'")
        if shutil.which("kubectl"):  # the read-only commands it prints work as printed, too
            known = Backend(webhook, configurations=(WebhookKey(name, webhook, "validating"),))
            located = await asyncio.to_thread(shell, locate(Backend(webhook)), kubeconfig)
            assert located == f"ValidatingWebhookConfiguration/{name} {webhook}\n"
            for backend in (known, Backend(webhook)):
                await asyncio.to_thread(shell, ca_bundle(backend, str(tmp_path / "ca.pem")), kubeconfig)
                assert (tmp_path / "ca.pem").read_bytes() == ca.cert_pem
        await asyncio.to_thread(run_break_glass, command, kubeconfig, admission, name)
        stored = await call(admission.read_validating_webhook_configuration, name)
        assert [w.failure_policy for w in stored.webhooks] == ["Ignore"]
        for _ in range(50):  # with Ignore the dead backend no longer blocks the write
            try:
                await call(core.create_namespaced_config_map, namespace, {"metadata": {"name": "after"}})
                break
            except ApiException:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the write is still refused after the break-glass patch")
    finally:
        await call(admission.delete_validating_webhook_configuration, name)
        await call(core.delete_namespace, namespace)
