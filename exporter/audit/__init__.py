"""Deadlock-risk audit: pure rules over the inventory that flag webhook configurations able to wedge a cluster.

Probes say a backend is down now; the audit says, ahead of any outage, what a down backend would take with
it, for the requests the control plane itself must get through to start and heal: IPAddress and ServiceCIDR
allocation, node and lease heartbeats, kube-system workloads, the webhook backend's own pods.

- `matching`: what a webhook intercepts, decided the way the kube-apiserver does (rules, scope, selectors,
  matchConditions as CEL).
- `rules`: the findings, their registry, cycles between webhooks and the timeout budget; `audit()` runs them.
- `render`: the `Finding` record, the text and JSON reports, the YAML fix snippets.

Every rule returns frozen `Finding`s with a stable id (documented in docs/audit.md), a severity, a one-line
why and the exact snippet that removes the finding. The same functions back `admission-webhook-exporter
audit`, the `admission_webhook_risk_info` metric, and the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, Metric

from ..model import Inventory
from ..targets import WebhookPlan
from .matching import Request, intercepts, resource_of, rule_matches, selector_matches
from .render import SEVERITIES, Finding, Severity, to_json, to_text
from .rules import (
    BOOTSTRAP,
    CYCLE,
    FAIL_OPEN,
    KUBE_SYSTEM,
    LONG_TIMEOUT,
    LONG_TIMEOUT_SECONDS,
    MATCH_CONDITION,
    OWN_BACKEND,
    PORT_MISSING,
    REQUEST_BUDGET_SECONDS,
    RULE_IDS,
    SERVICE_MISSING,
    SIDE_EFFECTS,
    SINGLE_ENDPOINT,
    TIMEOUT_BUDGET,
    VIRTUAL_RESOURCE,
    at_or_above,
    audit,
    cycles,
)

__all__ = [
    "BOOTSTRAP", "CYCLE", "FAIL_OPEN", "KUBE_SYSTEM", "LONG_TIMEOUT", "LONG_TIMEOUT_SECONDS", "MATCH_CONDITION",
    "OWN_BACKEND", "PORT_MISSING", "REQUEST_BUDGET_SECONDS", "RULE_IDS", "SERVICE_MISSING", "SEVERITIES",
    "SIDE_EFFECTS", "SINGLE_ENDPOINT", "TIMEOUT_BUDGET", "VIRTUAL_RESOURCE", "Finding", "Request", "Severity",
    "at_or_above", "audit", "cycles", "intercepts", "resource_of", "risk_family", "risk_metrics", "rule_matches",
    "selector_matches", "to_json", "to_text",
]


# -- The metric --------------------------------------------------------------------------------------------
class AuditedState(Protocol):
    """What the metric reads: the exporter's current inventory and plans (ExporterState has both)."""

    @property
    def inventory(self) -> Inventory: ...

    @property
    def plans(self) -> Sequence[WebhookPlan]: ...


RISK_LABELS = ["configuration", "name", "type", "risk", "severity"]


def risk_family(findings: Iterable[Finding]) -> GaugeMetricFamily:
    family = GaugeMetricFamily("admission_webhook_risk_info",
                               "1 for each risk the configuration audit finds in a webhook (docs/audit.md).",
                               labels=RISK_LABELS)
    for f in findings:
        family.add_metric([f.webhook.configuration, f.webhook.name, f.webhook.type, f.id, f.severity], 1)
    return family


def risk_metrics(state: AuditedState) -> Callable[[], Iterable[Metric]]:
    """A collector source: the audit of the current inventory, recomputed only when the inventory changes.

    Scrapes run in a worker thread while discovery swaps the inventory on the event loop; the cache holds one
    immutable tuple, keyed by the identity of the inventory and plans it was computed from, so a scrape reads
    either the old or the new audit, never a mix.
    """
    cache: list[tuple[Inventory, Sequence[WebhookPlan], tuple[Finding, ...]]] = []

    def collect() -> Iterable[Metric]:
        inventory, plans = state.inventory, state.plans
        entry = cache[0] if cache else None
        if entry is None or entry[0] is not inventory or entry[1] is not plans:
            entry = (inventory, plans, audit(inventory, plans))
            cache[:] = [entry]
        return [risk_family(entry[2])]

    return collect
