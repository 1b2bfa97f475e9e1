"""The objects the node tests create: a webhook backend as a real Deployment, its Service, and the webhook
configuration that calls it, with TLS made by the test (exporter/pki.py).

The backend runs the Debian python base image (tests/image/build.sh) with ``webhook_server.py`` mounted from
a ConfigMap, and its certificate from a Secret: no image of its own, nothing pulled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.pki import CertificateAuthority

SERVER_SCRIPT = Path(__file__).resolve().parent / "webhook_server.py"
BACKEND_PORT = 8443
SERVICE_PORT = 443


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}


@dataclass(frozen=True)
class Backend:
    """A webhook backend: Deployment ``name`` (``replicas`` Pods labelled ``app=<name>``) behind Service ``name``
    in ``namespace``, serving a certificate for ``<name>.<namespace>.svc`` signed by ``ca``."""

    name: str
    namespace: str
    image: str
    ca: CertificateAuthority
    replicas: int = 2

    @property
    def selector(self) -> dict[str, str]:
        return {"app": self.name}

    @property
    def label_selector(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.selector.items())

    @property
    def server_name(self) -> str:
        return f"{self.name}.{self.namespace}.svc"

    def objects(self) -> list[dict[str, Any]]:
        serving = self.ca.issue([self.server_name, f"{self.server_name}.cluster.local"])
        meta = {"name": self.name, "namespace": self.namespace}
        ns = self.namespace
        pod = {
            "metadata": {"labels": self.selector},
            "spec": {
                "terminationGracePeriodSeconds": 2,
                "automountServiceAccountToken": False,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "server", "image": self.image, "imagePullPolicy": "Never",
                    "command": ["python3", "/app/webhook_server.py", "--cert", "/tls/tls.crt", "--key", "/tls/tls.key",
                                "--port", str(BACKEND_PORT)],
                    "ports": [{"name": "https", "containerPort": BACKEND_PORT}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "https", "scheme": "HTTPS"},
                                       "periodSeconds": 1, "failureThreshold": 1},
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
                    "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [{"name": "app", "mountPath": "/app", "readOnly": True},
                                     {"name": "tls", "mountPath": "/tls", "readOnly": True}],
                }],
                "volumes": [{"name": "app", "configMap": {"name": f"{self.name}-server"}},
                            {"name": "tls", "secret": {"secretName": f"{self.name}-tls"}}],
            },
        }
        return [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{self.name}-tls", "namespace": ns},
             "type": "kubernetes.io/tls",
             "stringData": {"tls.crt": serving.cert_pem.decode(), "tls.key": serving.key_pem.decode()}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{self.name}-server", "namespace": ns},
             "data": {"webhook_server.py": SERVER_SCRIPT.read_text()}},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
             "spec": {"replicas": self.replicas, "selector": {"matchLabels": self.selector}, "template": pod}},
            {"apiVersion": "v1", "kind": "Service", "metadata": meta,
             "spec": {"selector": self.selector,
                      "ports": [{"name": "https", "port": SERVICE_PORT, "targetPort": "https"}]}},
        ]


def webhook_configuration(name: str, webhook: str, backend: Backend, *, failure_policy: str = "Fail",
                          resources: tuple[str, ...] = ("pods",), namespace_selector: dict[str, Any] | None = None,
                          timeout_s: int = 5) -> dict[str, Any]:
    """A ValidatingWebhookConfiguration with one webhook calling ``backend`` for CREATE of ``resources``
    (core group) in every namespace its ``namespace_selector`` lets through (all by default)."""
    hook: dict[str, Any] = {
        "name": webhook,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": failure_policy,
        "timeoutSeconds": timeout_s,
        "clientConfig": {"caBundle": backend.ca.ca_bundle,
                         "service": {"name": backend.name, "namespace": backend.namespace, "port": SERVICE_PORT,
                                     "path": "/validate"}},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": list(resources),
                   "scope": "Namespaced"}],
    }
    if namespace_selector is not None:
        hook["namespaceSelector"] = namespace_selector
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name}, "webhooks": [hook]}


def as_list(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``kind: List`` for one ``kubectl apply -f -``."""
    return {"apiVersion": "v1", "kind": "List", "items": objects}
