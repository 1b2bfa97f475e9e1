"""Builders for Kubernetes objects as they appear in manifests (plain dicts), kept close to real YAML."""

from __future__ import annotations

from typing import Any


def webhook(name: str, client: dict[str, Any], *, policy: str = "Fail", timeout: int | None = 5,
            side_effects: str = "None", rules: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    hook: dict[str, Any] = {
        "name": name,
        "clientConfig": client,
        "failurePolicy": policy,
        "sideEffects": side_effects,
        "admissionReviewVersions": ["v1"],
        "rules": rules if rules is not None else [
            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}],
    }
    if timeout is not None:
        hook["timeoutSeconds"] = timeout
    hook.update(extra)
    return hook


def configuration(name: str, *hooks: dict[str, Any], kind: str = "ValidatingWebhookConfiguration") -> dict[str, Any]:
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": name},
            "webhooks": list(hooks)}


def url_client(port: int, ca_bundle: str, *, host: str = "127.0.0.1", path: str = "/validate") -> dict[str, Any]:
    return {"url": f"https://{host}:{port}{path}", "caBundle": ca_bundle}


def service_client(namespace: str, name: str, ca_bundle: str, *, port: int = 443, path: str = "/validate"
                   ) -> dict[str, Any]:
    return {"service": {"namespace": namespace, "name": name, "port": port, "path": path}, "caBundle": ca_bundle}


def service(namespace: str, name: str, ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": namespace, "name": name},
            "spec": {"ports": ports, **spec}}


def endpoint_slice(namespace: str, service_name: str, ports: list[dict[str, Any]],
                   endpoints: list[tuple[str, bool | None]], *, name: str | None = None,
                   address_type: str = "IPv4") -> dict[str, Any]:
    eps = []
    for address, ready in endpoints:
        ep: dict[str, Any] = {"addresses": [address]}
        if ready is not None:
            ep["conditions"] = {"ready": ready}
        eps.append(ep)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": namespace, "name": name or f"{service_name}-x1",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": address_type, "ports": ports, "endpoints": eps}
