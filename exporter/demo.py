"""`admission-webhook-exporter demo`: real webhook backends on loopback, each with a different fault.

No cluster needed: it makes a CA and certificates with `cryptography`, starts TLS backends on 127.0.0.1,
writes matching webhook configurations (and a Service + EndpointSlice for the service-backed ones) to a
folder, and returns that folder for the exporter to serve.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .backend import HEALTHY, Behaviour, WebhookBackend
from .pki import CertificateAuthority

DEMO_NAMESPACE = "demo-webhooks"


@dataclass
class Demo:
    folder: Path
    backends: list[WebhookBackend] = field(default_factory=list)

    async def stop(self) -> None:
        for backend in self.backends:
            await backend.stop()


def _webhook(name: str, client: dict[str, Any], *, policy: str = "Fail", timeout: int = 5,
             side_effects: str = "None") -> dict[str, Any]:
    return {
        "name": name,
        "clientConfig": client,
        "failurePolicy": policy,
        "sideEffects": side_effects,
        "timeoutSeconds": timeout,
        "admissionReviewVersions": ["v1"],
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                   "resources": ["configmaps"], "scope": "Namespaced"}],
        "namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]},
    }


def _service_objects(name: str, port: int, ready: bool) -> list[dict[str, Any]]:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": DEMO_NAMESPACE},
           "spec": {"ports": [{"name": "https", "port": 443, "targetPort": "webhook"}]}}
    # Offline manifests are not validated by an apiserver, so the demo may point a slice at loopback.
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": f"{name}-abc12", "namespace": DEMO_NAMESPACE,
                        "labels": {"kubernetes.io/service-name": name}},
           "addressType": "IPv4", "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
           "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}}]}
    return [svc, eps]


async def start_demo(folder: Path) -> Demo:
    now = dt.datetime.now(dt.UTC)
    ca = CertificateAuthority.create("demo webhook CA")
    other_ca = CertificateAuthority.create("rotated-away CA")  # signs the drifted backend
    demo = Demo(folder=folder)

    async def backend(names: list[str], *, signer: CertificateAuthority = ca, behaviour: Behaviour = HEALTHY,
                      valid_until: dt.datetime | None = None) -> WebhookBackend:
        serving = signer.issue(names, valid_until=valid_until)
        b = await WebhookBackend(serving, behaviour=behaviour).start()
        demo.backends.append(b)
        return b

    def url(b: WebhookBackend, path: str) -> dict[str, Any]:
        return {"url": f"https://127.0.0.1:{b.port}{path}", "caBundle": ca.ca_bundle}

    healthy = await backend(["127.0.0.1"])
    expiring = await backend(["127.0.0.1"], valid_until=now + dt.timedelta(days=5))
    drifted = await backend(["127.0.0.1"], signer=other_ca)
    slow = await backend(["127.0.0.1"], behaviour=Behaviour(delay_seconds=4))
    svc_backend = await backend([f"policy-svc.{DEMO_NAMESPACE}.svc"])
    # A port that was just free and has nothing listening: the "backend is gone" case.
    gone = await backend(["127.0.0.1"])
    gone_port = gone.port
    await gone.stop()
    demo.backends.remove(gone)

    svc_ref = {"service": {"namespace": DEMO_NAMESPACE, "name": "policy-svc", "port": 443, "path": "/validate"},
               "caBundle": ca.ca_bundle}
    empty_ref = {"service": {"namespace": DEMO_NAMESPACE, "name": "scaled-to-zero", "port": 443},
                 "caBundle": ca.ca_bundle}
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "demo-policies"},
        "webhooks": [
            _webhook("healthy.demo.example.com", url(healthy, "/validate")),
            _webhook("expiring-cert.demo.example.com", url(expiring, "/validate")),
            _webhook("ca-drift.demo.example.com", url(drifted, "/validate")),
            _webhook("slow.demo.example.com", url(slow, "/validate"), timeout=2),
            _webhook("down.demo.example.com", {"url": f"https://127.0.0.1:{gone_port}/validate",
                                               "caBundle": ca.ca_bundle}),
            _webhook("service.demo.example.com", svc_ref),
            _webhook("no-endpoints.demo.example.com", empty_ref, policy="Ignore"),
        ],
    }
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "demo-defaults"},
        "webhooks": [_webhook("defaults.demo.example.com", url(healthy, "/mutate"), policy="Ignore")],
    }
    objects = [validating, mutating,
               *_service_objects("policy-svc", svc_backend.port, True),
               *_service_objects("scaled-to-zero", 1, False)]
    (folder / "demo-webhooks.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return demo
