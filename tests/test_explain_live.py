"""`explain` on what the real v1.34 kube-apiserver of tests/controlplane prints, never retyped: the ServiceIP
allocator's deadlock while a Fail webhook on `ipaddresses` is down (and the break glass that ends it, run as
printed), and the apiserver's words for backends that speak plain HTTP, require a client certificate, answer
with another AdmissionReview version or reset the connection, and its log line for an Ignore webhook.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import ssl
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest

from exporter.backend import LoopbackServer, read_request, respond, server_context
from exporter.pki import CertificateAuthority
from exporter.probe import probe
from tests import factories as f
from tests.conftest import StartBlockingTLS
from tests.helpers import only_plan
from tests.servers import free_port, plain_http
from tests.test_audit import run_cli
from tests.test_explain import call, shell

pytestmark = pytest.mark.controlplane
IPADDRESSES = [{"apiGroups": ["networking.k8s.io"], "apiVersions": ["v1"], "operations": ["CREATE"],
                "resources": ["ipaddresses"], "scope": "*"}]


async def refused(fn: Any, *args: Any) -> str:
    """The apiserver's message for a write its webhooks refuse, waiting for its webhook cache to catch up."""
    from kubernetes.client.exceptions import ApiException

    for _ in range(100):
        try:
            await call(fn, *args)
        except ApiException as err:
            message: str = json.loads(err.body)["message"]
            return message
        await asyncio.sleep(0.1)
    pytest.fail(f"{fn.__name__} was never refused")


def explained(stdout: str) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = json.loads(stdout)["errors"]
    return errors


async def test_the_ipaddress_deadlock_is_explained_and_its_break_glass_works(kube_api: Any, control_plane: Any,
                                                                            tmp_path: Path) -> None:
    """Before: "Not recognised" for the Service error everyone sees."""
    from kubernetes import client

    core, admission = client.CoreV1Api(kube_api), client.AdmissionregistrationV1Api(kube_api)
    name = f"ipam-{uuid.uuid4().hex[:8]}"
    webhook = f"{name}.example.com"
    hook = f.webhook(webhook, f.url_client(await free_port(), CertificateAuthority.create().ca_bundle), timeout=3,
                     rules=IPADDRESSES)
    await call(admission.create_validating_webhook_configuration, f.configuration(name, hook))
    created: list[str] = []
    try:
        plain = {"metadata": {"name": f"{name}-a"}, "spec": {"ports": [{"port": 80}]}}
        full = await refused(core.create_namespaced_service, "default", plain)
        assert full == "Internal error occurred: failed to allocate a serviceIP: range is full"
        fixed = {"metadata": {"name": f"{name}-b"}, "spec": {"ports": [{"port": 80}], "clusterIP": "10.0.0.77"}}
        ip_message = await refused(core.create_namespaced_service, "default", fixed)
        assert ip_message.startswith(f'Service "{name}-b" is invalid: spec.clusterIPs: Invalid value: ["10.0.0.77"]: '
                                     f'failed to allocate IP 10.0.0.77: Internal error occurred: failed calling '
                                     f'webhook "{webhook}"')

        kubeconfig = str(control_plane.kubeconfig_path)
        code, out, err = await run_cli("explain", "--kubeconfig", kubeconfig, "--output", "json",
                                       full + "\n" + ip_message)
        assert code == 2, err
        deadlock, allocation = explained(out)
        assert (deadlock["kind"], deadlock["reason"]) == ("allocation_failure", "")
        assert {k["name"] for k in deadlock["configurations"]} == {webhook}  # named from the live cluster
        assert (allocation["webhook"], allocation["reason"], allocation["allocating"]) == (
            webhook, "connection_refused", "10.0.0.77")

        if not shutil.which("kubectl"):
            return
        listed = await asyncio.to_thread(shell, deadlock["confirm"][0].split("  # ")[0], control_plane.kubeconfig_path)
        assert f"{webhook} " in listed

        # Without a cluster to read, the break glass finds the configuration itself ($ref): pasted into one
        # shell as printed, it switches the webhook to Ignore; the restore it names puts it back.
        code, out, err = await run_cli("explain", "--output", "json", ip_message)
        (alone,) = explained(out)
        assert alone["break_glass"][0].startswith("ref=$(kubectl get "), alone["break_glass"]
        session = "\n".join(c for c in alone["break_glass"] if not c.startswith("#"))
        await asyncio.to_thread(shell, f"cd {tmp_path}\n{session}", control_plane.kubeconfig_path)
        stored = await call(admission.read_validating_webhook_configuration, name)
        assert [w.failure_policy for w in stored.webhooks] == ["Ignore"]
        await asyncio.to_thread(shell, f"cd {tmp_path} && kubectl replace --force -f webhook-configuration.backup.yaml",
                                control_plane.kubeconfig_path)
        stored = await call(admission.read_validating_webhook_configuration, name)
        assert [w.failure_policy for w in stored.webhooks] == ["Fail"]

        glass = [c for c in deadlock["break_glass"] if not c.startswith("#")]
        for command in glass:
            await asyncio.to_thread(shell, f"cd {tmp_path} && {command}", control_plane.kubeconfig_path)
        for _ in range(100):  # with the webhook on Ignore, the allocator gets its IPAddress again
            try:
                await call(core.create_namespaced_service, "default", plain)
                created.append(plain["metadata"]["name"])
                break
            except client.exceptions.ApiException:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the Service is still refused after the break glass")
        restore = next(c for c in deadlock["break_glass"] if "kubectl replace --force" in c)
        restore = re.search(r"(kubectl replace --force -f \S+)", restore)[1]  # type: ignore[index]
        await asyncio.to_thread(shell, f"cd {tmp_path} && {restore}", control_plane.kubeconfig_path)
        stored = await call(admission.read_validating_webhook_configuration, name)
        assert [w.failure_policy for w in stored.webhooks] == ["Fail"]
    finally:
        await call(admission.delete_validating_webhook_configuration, name)
        for svc in created:
            await call(core.delete_namespaced_service, svc, "default")


# -- Backends the apiserver words its own way ------------------------------------------------------------------
async def resetting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the ClientHello, then reset the connection (SO_LINGER 0: RST, not FIN)."""
    await reader.read(100)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def answering(head: dict[str, str]) -> Any:
    """An AdmissionReview answer with this apiVersion and kind (or none), whatever version was sent."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        assert request is not None
        uid = json.loads(request.body)["request"]["uid"]
        await respond(writer, 200, json.dumps({**head, "response": {"uid": uid, "allowed": True}}).encode())

    return answer


@pytest.mark.parametrize(("backend", "diagnosis", "reason", "probe_reason"), [
    ("plain_http", "plain_http", "tls_handshake", "tls_handshake"),
    ("client_cert", "client_auth_required", "client_auth_required", "client_auth_required"),
    ("v1beta1", "review_mismatch", "http_error", None),
    ("no_kind", "review_mismatch", "http_error", None),
    ("reset", "connection_reset", "tls_handshake", "tls_handshake"),
])
async def test_the_apiservers_words_are_explained_as_the_probe_reports_them(
        kube_api: Any, blocking_tls: StartBlockingTLS, backend: str, diagnosis: str, reason: str,
        probe_reason: str | None) -> None:
    from kubernetes import client

    from exporter.explain import DIAGNOSES, explain

    ca = CertificateAuthority.create()
    serving = ca.issue(["127.0.0.1"])
    loopback: LoopbackServer | None = None
    if backend == "client_cert":  # OpenSSL's server side: it sends `certificate required`, as Go's does
        ctx = server_context(serving, client_ca=CertificateAuthority.create("clients"))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        port = blocking_tls(ctx).port
    else:
        handler, tls = {
            "plain_http": (plain_http, None), "reset": (resetting, None),
            "v1beta1": (answering({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}), serving),
            "no_kind": (answering({}), serving)}[backend]
        loopback = await LoopbackServer(handler, serving=tls).start()
        port = loopback.port

    core, admission = client.CoreV1Api(kube_api), client.AdmissionregistrationV1Api(kube_api)
    suffix = uuid.uuid4().hex[:8]
    namespace, name = f"words-{suffix}", f"words-{suffix}"
    hook = f.webhook(f"{backend.replace('_', '-')}.{suffix}.example.com", f.url_client(port, ca.ca_bundle),
                     timeout=5, namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": namespace}})
    config = f.configuration(name, hook)
    await call(core.create_namespace, {"metadata": {"name": namespace}})
    await call(admission.create_validating_webhook_configuration, config)
    try:
        message = await refused(core.create_namespaced_config_map, namespace, {"metadata": {"name": "x"}})
        for _ in range(20):  # Go's client sometimes loses the race with the server's close ("use of closed network
            if backend != "client_cert" or "remote error" in message:  # connection"): ask again for the alert
                break
            message = await refused(core.create_namespaced_config_map, namespace, {"metadata": {"name": "x"}})
        e = explain(message)
        assert (e.kind, e.webhook) == ("transport_failure", hook["name"]), message
        assert (e.reason, e.meaning) == (reason, DIAGNOSES[diagnosis].meaning), message
        (target,) = only_plan(config).targets
        result = await probe(target)
        if probe_reason is not None:
            assert result.reason is not None and result.reason.value == probe_reason, result.detail
        if backend in ("plain_http", "client_cert"):  # the probe words it as the apiserver does
            assert result.detail.split(": the backend requires")[0] in message, (message, result.detail)
        if backend == "v1beta1":  # client-go's words (test_reasons knows them): not "expected webhook response of"
            assert message.endswith("converting (v1beta1.AdmissionReview) to (v1.AdmissionReview): unknown "
                                    "conversion"), message
    finally:
        await call(admission.delete_validating_webhook_configuration, name)
        await call(core.delete_namespace, namespace)
        if loopback is not None:
            await loopback.stop()


async def test_the_fail_open_log_line_is_explained_as_ignore(kube_api: Any, control_plane: Any) -> None:
    from kubernetes import client

    from exporter.explain import explain

    core, admission = client.CoreV1Api(kube_api), client.AdmissionregistrationV1Api(kube_api)
    suffix = uuid.uuid4().hex[:8]
    namespace, name, webhook = f"open-{suffix}", f"open-{suffix}", f"open.{suffix}.example.com"
    hook = f.webhook(webhook, f.url_client(await free_port(), ""), policy="Ignore", timeout=2,
                     namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": namespace}})
    await call(core.create_namespace, {"metadata": {"name": namespace}})
    await call(admission.create_validating_webhook_configuration, f.configuration(name, hook))
    try:
        line = ""
        for i in range(100):
            await call(core.create_namespaced_config_map, namespace, {"metadata": {"name": f"x{i}"}})
            found = [ln for ln in control_plane.apiserver_log_path.read_text().splitlines()
                     if f"failing open {webhook}" in ln]
            if found:
                line = found[-1]
                break
            await asyncio.sleep(0.1)
        assert line, "the apiserver never logged the fail-open call"
        e = explain(line)
        assert (e.webhook, e.failure_policy, e.reason, e.break_glass) == (webhook, "Ignore", "connection_refused", ())
    finally:
        await call(admission.delete_validating_webhook_configuration, name)
        await call(core.delete_namespace, namespace)
