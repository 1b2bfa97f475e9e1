"""Deadlock-risk audit: pure rules over the inventory that flag webhook configurations able to wedge a cluster.

Probes say a backend is down now; the audit says, ahead of any outage, what a down backend would take with
it, for the requests the control plane itself must get through to start and heal: IPAddress and ServiceCIDR
allocation, node and lease heartbeats, kube-system workloads, the webhook backend's own pods; and, where the
caller says in which namespace the exporter runs, the exporter's own pods.

- `matching`: what a webhook intercepts, decided the way the kube-apiserver does (rules, scope, selectors,
  matchConditions as CEL).
- `rules`: the findings, their registry, cycles between webhooks and the timeout budget; `audit()` runs them.
- `render`: the `Finding` record, the text and JSON reports, the YAML fix snippets.

Every rule returns frozen `Finding`s with a stable id (documented in docs/audit.md), a severity, a one-line
why and the exact snippet that removes the finding. The same functions back `admission-webhook-exporter
audit`, the `admission_webhook_risk_info` metric, and the tests.
"""

from __future__ import annotations

from .matching import Request, intercepts, resource_of, rule_matches, selector_matches
from .render import SEVERITIES, Finding, Severity, to_json, to_text
from .rules import (
    BOOTSTRAP,
    CYCLE,
    FAIL_OPEN,
    FIREWALL_PORT,
    GATES_EXPORTER,
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
    "BOOTSTRAP", "CYCLE", "FAIL_OPEN", "FIREWALL_PORT", "GATES_EXPORTER", "KUBE_SYSTEM", "LONG_TIMEOUT",
    "LONG_TIMEOUT_SECONDS", "MATCH_CONDITION", "OWN_BACKEND", "PORT_MISSING", "REQUEST_BUDGET_SECONDS", "RULE_IDS",
    "SERVICE_MISSING", "SEVERITIES", "SIDE_EFFECTS", "SINGLE_ENDPOINT", "TIMEOUT_BUDGET", "VIRTUAL_RESOURCE",
    "Finding", "Request", "Severity", "at_or_above", "audit", "cycles", "intercepts", "resource_of",
    "rule_matches", "selector_matches", "to_json", "to_text",
]
