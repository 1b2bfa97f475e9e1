"""Webhook-level verdicts for people: the `check` table and its JSON form, and the pipeline gate that `check`
and `audit` share. Pure functions."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from .model import InvalidObject, Inventory
from .reasons import Reason

if TYPE_CHECKING:  # annotations only: `audit` reports without loading the prober (ssl, asyncio)
    from .probe import ProbeResult
    from .targets import TargetKey, WebhookPlan


@dataclass(frozen=True)
class EndpointStatus:
    endpoint: str
    success: bool
    reason: str
    detail: str
    duration_seconds: float | None
    served_cert_days_left: float | None  # the leaf certificate this endpoint served


@dataclass(frozen=True)
class WebhookStatus:
    configuration: str
    name: str
    type: str
    failure_policy: str
    backend: str
    timeout_seconds: int
    endpoints_ready: int | None
    # "ok" | "degraded" (some endpoints fail) | "down" (none answers) | "unknown" | "unverified" (every endpoint
    # wants a client certificate the exporter was not given: client_auth_required, not an outage)
    verdict: str
    reason: str
    served_cert_days_left: float | None  # earliest of the leaf certificates the endpoints served
    ca_bundle_days_left: float | None  # earliest CA certificate in the webhook's caBundle
    max_latency_seconds: float | None
    endpoints: tuple[EndpointStatus, ...]

    @property
    def unhealthy(self) -> bool:
        return self.verdict in ("down", "degraded")


def _days(ts: float | None, now: float) -> float | None:
    return None if ts is None else round((ts - now) / 86400, 1)


def summarize(plans: Sequence[WebhookPlan], results: Mapping[TargetKey, ProbeResult],
              now: float | None = None) -> list[WebhookStatus]:
    now = time.time() if now is None else now
    statuses = []
    for p in plans:
        hook = p.webhook
        endpoints = []
        served: list[float] = []
        for t in p.targets:
            r = results.get(t.key)
            if r is None:
                continue
            if r.cert_not_after is not None:
                served.append(r.cert_not_after)
            endpoints.append(EndpointStatus(t.key.endpoint, r.success, r.reason.value if r.reason else "", r.detail,
                                            round(r.duration_seconds, 4), _days(r.cert_not_after, now)))
        if p.verdict is not None:
            verdict, reason = "down", p.verdict.reason.value
            endpoints.append(EndpointStatus("", False, reason, p.verdict.detail, None, None))
        elif not endpoints:
            verdict, reason = "unknown", ""
        else:
            unverified = [e for e in endpoints if e.reason == Reason.CLIENT_AUTH_REQUIRED.value]
            failed = [e for e in endpoints if not e.success and e not in unverified]
            judged = len(endpoints) - len(unverified)
            verdict = ("down" if len(failed) == judged else "degraded") if failed else (
                "unverified" if not judged else "ok")
            reason = failed[0].reason if failed else (unverified[0].reason if unverified else "")
        latencies = [e.duration_seconds for e in endpoints if e.duration_seconds is not None]
        statuses.append(WebhookStatus(
            configuration=hook.key.configuration, name=hook.key.name, type=hook.key.type,
            failure_policy=hook.failure_policy, backend=hook.backend, timeout_seconds=hook.timeout_seconds,
            endpoints_ready=p.endpoints_ready, verdict=verdict, reason=reason,
            served_cert_days_left=_days(min(served), now) if served else None,
            ca_bundle_days_left=_days(p.ca_not_after, now),
            max_latency_seconds=max(latencies) if latencies else None, endpoints=tuple(endpoints)))
    return statuses


def to_json(statuses: Sequence[WebhookStatus], gate: Gate | None = None) -> str:
    doc: dict[str, object] = {"webhooks": [asdict(s) for s in statuses]}
    if gate is not None:
        doc.update(gate.to_dict())
    return json.dumps(doc, indent=2)


def _days_cell(days: float | None) -> str:
    return "-" if days is None else f"{days:g}"


def to_table(statuses: Sequence[WebhookStatus]) -> str:
    header = ("WEBHOOK", "TYPE", "POLICY", "ENDPOINTS", "VERDICT", "REASON", "SERVED CERT DAYS", "CABUNDLE DAYS",
              "LATENCY/TIMEOUT")
    rows = [header]
    for s in statuses:
        rows.append((
            f"{s.configuration}/{s.name}", s.type, s.failure_policy,
            "-" if s.endpoints_ready is None else str(s.endpoints_ready),
            s.verdict, s.reason or "-",
            _days_cell(s.served_cert_days_left), _days_cell(s.ca_bundle_days_left),
            ("-" if s.max_latency_seconds is None else f"{s.max_latency_seconds:.3f}s") + f"/{s.timeout_seconds}s",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    details = [f"  {s.configuration}/{s.name} {e.endpoint or '-'}: {e.detail}"
               for s in statuses for e in s.endpoints if e.detail]
    if details:
        lines += ["", "Details:", *details]
    return "\n".join(lines)


# -- The pipeline gate -----------------------------------------------------------------------------------------
def skip_messages(invalid: Sequence[InvalidObject]) -> list[str]:
    """One line per thing skipped, naming the webhook when only a webhook of a configuration was."""
    lines = []
    for bad in invalid:
        what = f"{bad.kind or 'document'} {bad.name}".rstrip()
        if not bad.webhooks:
            lines.append(f"skipped {what} in {bad.source}: {bad.reason}")
        lines += [f"skipped {w.label} of {what} in {bad.source}: {w.reason}" for w in bad.webhooks]
    return lines


@dataclass(frozen=True)
class Gate:
    """Why a `check` or `audit` run fails as a pipeline gate (exit 1); it passes when there is no failure.

    A gate that checked nothing must not pass: an empty inventory fails unless the caller allows it, and a
    skipped object always fails, since what it holds was not checked.
    """

    failures: tuple[str, ...]
    skipped: tuple[InvalidObject, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, object]:
        return {"skipped": [asdict(bad) for bad in self.skipped],
                "gate": {"passed": self.passed, "failures": list(self.failures)}}


def inventory_failures(inventory: Inventory, *, source: str, allow_empty: bool) -> list[str]:
    """What makes the inventory itself fail the gate. `source` names where it came from, for the message."""
    failures = []
    if not inventory.webhooks and not allow_empty:
        failures.append(f"nothing to check: no usable webhook in {source} "
                        "(pass --allow-empty when that is expected)")
    if skipped := len(inventory.invalid):
        failures.append(f"{skipped} object{'s' if skipped != 1 else ''} skipped as malformed, in whole or in part: "
                        "what was skipped was not checked")
    return failures


def check_failures(statuses: Sequence[WebhookStatus]) -> list[str]:
    """`check` fails on every unhealthy `failurePolicy: Fail` webhook: the apiserver refuses its requests."""
    return [f"{s.configuration}/{s.name} ({s.type}): failurePolicy Fail and {s.verdict} ({s.reason})"
            for s in statuses if s.failure_policy == "Fail" and s.unhealthy]
