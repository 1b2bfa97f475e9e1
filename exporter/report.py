"""Webhook-level verdicts for people: the `check` table and its JSON form. Pure functions."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from .probe import ProbeResult
from .targets import TargetKey, WebhookPlan


@dataclass(frozen=True)
class EndpointStatus:
    endpoint: str
    success: bool
    reason: str
    detail: str
    duration_seconds: float | None
    cert_days_left: float | None


@dataclass(frozen=True)
class WebhookStatus:
    configuration: str
    name: str
    type: str
    failure_policy: str
    backend: str
    timeout_seconds: int
    endpoints_ready: int | None
    verdict: str  # "ok" | "degraded" (some endpoints fail) | "down" (none answers) | "unknown"
    reason: str
    cert_days_left: float | None  # earliest of the served certificates and the caBundle
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
        expiries = [p.ca_not_after] if p.ca_not_after is not None else []
        for t in p.targets:
            r = results.get(t.key)
            if r is None:
                continue
            if r.cert_not_after is not None:
                expiries.append(r.cert_not_after)
            endpoints.append(EndpointStatus(t.key.endpoint, r.success, r.reason.value if r.reason else "", r.detail,
                                            round(r.duration_seconds, 4), _days(r.cert_not_after, now)))
        if p.verdict is not None:
            verdict, reason = "down", p.verdict.reason.value
            endpoints.append(EndpointStatus("", False, reason, p.verdict.detail, None, None))
        elif not endpoints:
            verdict, reason = "unknown", ""
        else:
            failed = [e for e in endpoints if not e.success]
            verdict = "ok" if not failed else ("down" if len(failed) == len(endpoints) else "degraded")
            reason = failed[0].reason if failed else ""
        latencies = [e.duration_seconds for e in endpoints if e.duration_seconds is not None]
        statuses.append(WebhookStatus(
            configuration=hook.key.configuration, name=hook.key.name, type=hook.key.type,
            failure_policy=hook.failure_policy, backend=hook.backend, timeout_seconds=hook.timeout_seconds,
            endpoints_ready=p.endpoints_ready, verdict=verdict, reason=reason,
            cert_days_left=_days(min(expiries), now) if expiries else None,
            max_latency_seconds=max(latencies) if latencies else None, endpoints=tuple(endpoints)))
    return statuses


def to_json(statuses: Sequence[WebhookStatus]) -> str:
    return json.dumps({"webhooks": [asdict(s) for s in statuses]}, indent=2)


def to_table(statuses: Sequence[WebhookStatus]) -> str:
    header = ("WEBHOOK", "TYPE", "POLICY", "ENDPOINTS", "VERDICT", "REASON", "CERT DAYS", "LATENCY/TIMEOUT")
    rows = [header]
    for s in statuses:
        rows.append((
            f"{s.configuration}/{s.name}", s.type, s.failure_policy,
            "-" if s.endpoints_ready is None else str(s.endpoints_ready),
            s.verdict, s.reason or "-",
            "-" if s.cert_days_left is None else f"{s.cert_days_left:g}",
            ("-" if s.max_latency_seconds is None else f"{s.max_latency_seconds:.3f}s") + f"/{s.timeout_seconds}s",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    details = [f"  {s.configuration}/{s.name} {e.endpoint or '-'}: {e.detail}"
               for s in statuses for e in s.endpoints if e.detail]
    if details:
        lines += ["", "Details:", *details]
    return "\n".join(lines)
