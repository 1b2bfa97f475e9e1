"""From the inventory to what to probe: a pure function, no I/O.

A `service` webhook is resolved the way the apiserver and kube-proxy would route it: the Service port the
webhook names, its targetPort (numeric or named) found through the EndpointSlices of that Service, every
ready endpoint once. The TLS server name is `<service>.<namespace>.svc`, as the apiserver sends it. A `url`
webhook is probed as written. When nothing can be dialled the plan carries the verdict instead.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from . import reasons
from .certs import CertificateError, decode_ca_bundle, earliest_not_after, load_pem_certificates
from .model import EndpointPort, Inventory, Service, ServicePort, Webhook, WebhookKey
from .reasons import Reason


@dataclass(frozen=True, order=True)
class TargetKey:
    webhook: WebhookKey
    endpoint: str


@dataclass(frozen=True)
class ReviewSpec:
    """What the harmless dry-run AdmissionReview asks about: taken from the webhook's first rule."""

    version: str  # admission.k8s.io version the webhook accepts: "v1" or "v1beta1"
    group: str
    api_version: str
    resource: str
    sub_resource: str
    operation: str
    namespaced: bool


@dataclass(frozen=True)
class Target:
    """One endpoint of one webhook, with everything a probe needs and nothing it must look up."""

    key: TargetKey
    host: str  # what to dial: an IP, or the url's host
    port: int
    server_name: str  # SNI and the name the served certificate must be valid for
    path: str
    ca_pem: bytes | None  # None: the webhook has no caBundle, so the apiserver uses the system roots
    timeout_seconds: float
    review: ReviewSpec | None  # None: stop after the handshake (sideEffects not None/NoneOnDryRun)
    # The host[:port] the apiserver calls: its Host header, and the name its kubeConfigFile is looked up by
    # (`<service>.<namespace>.svc:<service port>`, or the URL's host[:port] as written).
    authority: str = ""


@dataclass(frozen=True)
class StaticVerdict:
    reason: Reason
    detail: str


@dataclass(frozen=True)
class WebhookPlan:
    webhook: Webhook
    targets: tuple[Target, ...]
    verdict: StaticVerdict | None  # set when there is nothing to dial
    endpoints_ready: int | None  # service webhooks whose Service is known
    ca_not_after: float | None

    @property
    def key(self) -> WebhookKey:
        return self.webhook.key


def format_endpoint(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def review_spec(webhook: Webhook) -> ReviewSpec | None:
    if not webhook.dry_run_safe:
        return None
    version = "v1" if "v1" in webhook.admission_review_versions else webhook.admission_review_versions[0]
    group, api_version, resource, sub, operation, namespaced = "", "v1", "configmaps", "", "CREATE", True
    for rule in webhook.rules:
        ops = [o for o in rule.operations if o != "*"]
        operation = "CREATE" if "*" in rule.operations or "CREATE" in ops or not ops else ops[0]
        if operation == "CONNECT":
            operation = "CREATE"
        groups = [g for g in rule.api_groups if g != "*"]
        versions = [v for v in rule.api_versions if v != "*"]
        resources = [r for r in rule.resources if not r.startswith("*")]
        if resources:
            group = groups[0] if groups else ""
            api_version = versions[0] if versions else "v1"
            resource, _, sub = resources[0].partition("/")
            namespaced = rule.scope != "Cluster"
        break
    return ReviewSpec(version=version, group=group, api_version=api_version, resource=resource,
                      sub_resource=sub, operation=operation, namespaced=namespaced)


def _ca(webhook: Webhook) -> tuple[bytes | None, float | None, StaticVerdict | None]:
    if not webhook.ca_bundle:
        return None, None, None
    try:
        pem = decode_ca_bundle(webhook.ca_bundle)
        certs = load_pem_certificates(pem)
    except CertificateError as err:
        return None, None, StaticVerdict(Reason.INVALID_CONFIG, str(err))
    return pem, earliest_not_after(certs), None


def _service_port(service: Service, port: int) -> ServicePort | None:
    return next((p for p in service.ports if p.port == port and p.protocol == "TCP"), None)


def _plan_url(webhook: Webhook, ca_pem: bytes | None) -> tuple[tuple[Target, ...], StaticVerdict | None]:
    assert webhook.url is not None
    try:
        parts = urlsplit(webhook.url)
        port = parts.port or 443
        host = parts.hostname
    except ValueError as err:
        return (), StaticVerdict(Reason.INVALID_CONFIG, f"url {webhook.url!r} does not parse: {err}")
    if parts.scheme != "https" or not host:
        return (), StaticVerdict(Reason.INVALID_CONFIG, f"url {webhook.url!r} must be https://host[:port]/path")
    target = Target(
        key=TargetKey(webhook.key, format_endpoint(host, port)),
        host=host,
        port=port,
        server_name=host,
        path=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        ca_pem=ca_pem,
        timeout_seconds=float(webhook.timeout_seconds),
        review=review_spec(webhook),
        authority=parts.netloc.rpartition("@")[2],
    )
    return (target,), None


def _plan_service(
    webhook: Webhook, inventory: Inventory, ca_pem: bytes | None
) -> tuple[tuple[Target, ...], StaticVerdict | None, int | None]:
    ref = webhook.service
    assert ref is not None
    service = inventory.services.get((ref.namespace, ref.name))
    if service is None:
        return (), StaticVerdict(Reason.SERVICE_NOT_FOUND, reasons.SERVICE_NOT_FOUND.format(service=ref.name)), None
    path = ref.path or "/"
    review = review_spec(webhook)

    def target(host: str, port: int) -> Target:
        return Target(key=TargetKey(webhook.key, format_endpoint(host, port)), host=host, port=port,
                      server_name=ref.server_name, path=path, ca_pem=ca_pem,
                      timeout_seconds=float(webhook.timeout_seconds), review=review,
                      authority=f"{ref.server_name}:{ref.port}")

    if service.type == "ExternalName":
        if not service.external_name:
            why = f"ExternalName service {ref.name} has no externalName"
            return (), StaticVerdict(Reason.INVALID_CONFIG, why), None
        return (target(service.external_name, ref.port),), None, None
    sport = _service_port(service, ref.port)
    if sport is None:
        return (), StaticVerdict(
            Reason.INVALID_CONFIG, f'no service port {ref.port} found for service "{ref.name}"'
        ), None
    endpoints: dict[tuple[str, int], None] = {}  # ordered set: an address in two slices is probed once
    for eps in inventory.endpoint_slices.get((ref.namespace, ref.name), ()):
        port = _slice_port(eps.ports, sport)
        if port is None:
            continue
        for ep in eps.endpoints:
            if ep.ready:
                for address in ep.addresses[:1]:  # the API: consumers use the first address
                    endpoints[(address, port)] = None
    if not endpoints:
        return (), StaticVerdict(Reason.NO_ENDPOINTS, reasons.NO_ENDPOINTS.format(service=ref.name)), 0
    return tuple(target(h, p) for h, p in endpoints), None, len(endpoints)


def _slice_port(ports: tuple[EndpointPort, ...], sport: ServicePort) -> int | None:
    """The endpoint port for a Service port: slices name their ports after the Service's ports."""
    for p in ports:
        if p.name == sport.name and p.protocol == sport.protocol and p.port is not None:
            return p.port
    if ports:
        return None
    # A slice that lists no ports: only a numeric (or absent) targetPort says where to go.
    if isinstance(sport.target_port, int) and sport.target_port > 0:
        return sport.target_port
    return sport.port if sport.target_port is None else None


def plan_webhook(webhook: Webhook, inventory: Inventory) -> WebhookPlan:
    ca_pem, ca_not_after, ca_problem = _ca(webhook)
    targets: tuple[Target, ...] = ()
    verdict: StaticVerdict | None = None
    ready: int | None = None
    if webhook.service is not None:
        targets, verdict, ready = _plan_service(webhook, inventory, ca_pem)
    else:
        targets, verdict = _plan_url(webhook, ca_pem)
    if ca_problem is not None:  # a caBundle the apiserver cannot load fails every call, endpoints or not
        targets, verdict = (), ca_problem
    return WebhookPlan(webhook=webhook, targets=targets, verdict=verdict, endpoints_ready=ready,
                       ca_not_after=ca_not_after)


def plan(inventory: Inventory) -> tuple[WebhookPlan, ...]:
    return tuple(plan_webhook(w, inventory) for w in inventory.webhooks)
