"""The data that flows through the pipeline: frozen dataclasses, no behaviour beyond small derived values.

Everything here is parsed from Kubernetes objects by `exporter.parse`; every later stage (targets, prober,
collector, audit) reads these and nothing else, so live discovery and manifest files feed the same engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# The audit's severities, most severe first (here, the shared vocabulary, so the CLI offers them as choices
# without loading the audit). `latent`: a risk that exists once a namespace its namespaceSelector matches exists
# (none does now, or the manifests do not say): less than what can happen today, more than what is only worth knowing.
Severity = Literal["critical", "warning", "latent", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "latent", "info")

# The apiserver labels its apiserver_admission_webhook_* series with these `type` values.
WebhookType = Literal["validating", "admit"]
VALIDATING: WebhookType = "validating"
MUTATING: WebhookType = "admit"

KIND_TO_TYPE: Mapping[str, WebhookType] = {
    "ValidatingWebhookConfiguration": VALIDATING,
    "MutatingWebhookConfiguration": MUTATING,
}

DEFAULT_TIMEOUT_SECONDS = 10  # admissionregistration.k8s.io/v1 default
DEFAULT_SERVICE_PORT = 443


@dataclass(frozen=True, order=True)
class WebhookKey:
    """Identity of one webhook: the labels every per-webhook series carries."""

    configuration: str
    name: str
    type: WebhookType


@dataclass(frozen=True)
class ServiceReference:
    namespace: str
    name: str
    port: int = DEFAULT_SERVICE_PORT
    path: str | None = None

    @property
    def server_name(self) -> str:
        """The name the apiserver puts in SNI and verifies the served certificate against."""
        return f"{self.name}.{self.namespace}.svc"


@dataclass(frozen=True)
class Rule:
    operations: tuple[str, ...]
    api_groups: tuple[str, ...]
    api_versions: tuple[str, ...]
    resources: tuple[str, ...]
    scope: str = "*"


@dataclass(frozen=True)
class MatchCondition:
    name: str
    expression: str


@dataclass(frozen=True)
class LabelSelectorRequirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSelector:
    """A metav1.LabelSelector; the empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


@dataclass(frozen=True)
class Provenance:
    """Who manages a webhook configuration, as its metadata says (shared by its webhooks): what `explain` reads
    to give advice fitting the tool that injects its caBundle or rewrites it (cert-manager, Gatekeeper, ...)."""

    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()  # without kubectl's last-applied-configuration (a copy of it all)
    owners: tuple[tuple[str, str], ...] = ()  # ownerReferences: (kind, name)


NO_PROVENANCE = Provenance()


@dataclass(frozen=True)
class Webhook:
    key: WebhookKey
    failure_policy: str  # "Fail" | "Ignore"
    side_effects: str  # "None" | "NoneOnDryRun" | "Some" | "Unknown" | "" (unset)
    match_policy: str
    timeout_seconds: int
    admission_review_versions: tuple[str, ...]
    service: ServiceReference | None
    url: str | None
    ca_bundle: str  # as written in the object: base64 of PEM (empty when unset)
    rules: tuple[Rule, ...] = ()
    namespace_selector: LabelSelector = field(default_factory=LabelSelector)
    object_selector: LabelSelector = field(default_factory=LabelSelector)
    match_conditions: tuple[MatchCondition, ...] = ()
    reinvocation_policy: str = ""
    provenance: Provenance = NO_PROVENANCE

    @property
    def backend(self) -> Literal["service", "url"]:
        return "service" if self.service is not None else "url"

    @property
    def dry_run_safe(self) -> bool:
        """Only these webhooks may receive a dryRun AdmissionReview from us (the apiserver's own rule)."""
        return self.side_effects in ("None", "NoneOnDryRun")


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str | None
    protocol: str = "TCP"


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str
    ports: tuple[ServicePort, ...]
    cluster_ip: str = ""
    external_name: str = ""


@dataclass(frozen=True)
class EndpointPort:
    name: str
    port: int | None
    protocol: str = "TCP"


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool  # conditions.ready, with "unset" read as ready as the API documents


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    address_type: str
    ports: tuple[EndpointPort, ...]
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SkippedWebhook:
    """One webhook left out of a configuration whose other webhooks are used."""

    name: str  # "" when the webhook has none
    index: int  # its position in `webhooks`
    reason: str  # the field and the problem, e.g. "timeoutSeconds 99 is outside 1-30"

    @property
    def label(self) -> str:
        """How a message names it: `webhook 'name'`, or `webhooks[2]` when it has no name."""
        return f"webhook {self.name!r}" if self.name else f"webhooks[{self.index}]"


@dataclass(frozen=True)
class InvalidObject:
    """An object that is malformed in whole or in part, and why: reported, never a crash.

    With `webhooks` empty the whole object was skipped. Otherwise only those webhooks of a configuration
    were, and its others are used. Either way it is one object: `admission_webhook_exporter_inventory_invalid_
    objects` counts these, not webhooks.
    """

    source: str  # file path, or "api"
    kind: str
    name: str
    reason: str  # for a partly skipped configuration: each skipped webhook with its reason
    webhooks: tuple[SkippedWebhook, ...] = ()


@dataclass(frozen=True)
class Inventory:
    """Everything the exporter knows about the cluster at one moment. Replaced whole, never mutated."""

    webhooks: tuple[Webhook, ...] = ()
    services: Mapping[tuple[str, str], Service] = field(default_factory=dict)
    # EndpointSlices grouped by (namespace, kubernetes.io/service-name)
    endpoint_slices: Mapping[tuple[str, str], tuple[EndpointSlice, ...]] = field(default_factory=dict)
    namespaces: Mapping[str, Namespace] = field(default_factory=dict)
    invalid: tuple[InvalidObject, ...] = ()
    loaded_at: float = 0.0


RawObject = Mapping[str, Any]
