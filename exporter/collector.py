"""The one place metric families are made: a prometheus_client custom collector over plain data, no I/O.

A scrape reads its inputs once (`Scrape`: the current snapshot, the latest results, the probe counts, the
watch status) and formats every family from that one read, so one response never mixes two inventories.
Each family is listed once below with its help text; identity labels are added in one place
(`_webhook_labels`). `docs/metrics.md` documents every family and a test checks the two agree.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .audit import Finding
from .canary import OUTCOMES, CanaryStatus
from .discovery import WATCHED, WatchStatus
from .model import Webhook, WebhookKey
from .probe import ProbeResult
from .reasons import Reason
from .scheduler import ProbeCounts
from .state import Snapshot
from .targets import TargetKey, WebhookPlan

WEBHOOK_LABELS = ["configuration", "name", "type"]
ENDPOINT_LABELS = [*WEBHOOK_LABELS, "endpoint"]
INFO_LABELS = [*WEBHOOK_LABELS, "failure_policy", "side_effects", "match_policy", "backend",
               "service_namespace", "service_name", "url"]
RISK_LABELS = [*WEBHOOK_LABELS, "risk", "severity"]


@dataclass(frozen=True)
class Scrape:
    """Everything one scrape formats, read once. `watches` is None when no live discovery feeds the exporter."""

    snapshot: Snapshot
    results: Mapping[TargetKey, ProbeResult]
    probes: ProbeCounts
    watches: WatchStatus | None = None
    canary: CanaryStatus | None = None  # None unless the canary is enabled


def _webhook_labels(key: WebhookKey) -> list[str]:
    return [key.configuration, key.name, key.type]


def _endpoint_labels(key: TargetKey) -> list[str]:
    return [*_webhook_labels(key.webhook), key.endpoint]


def _info_labels(hook: Webhook) -> list[str]:
    svc = hook.service
    return [*_webhook_labels(hook.key), hook.failure_policy, hook.side_effects, hook.match_policy, hook.backend,
            svc.namespace if svc else "", svc.name if svc else "", hook.url or ""]


class ExporterCollector(Collector):
    def __init__(self, read: Callable[[], Scrape]) -> None:
        self._read = read
        # The webhook and risk families depend only on the snapshot, which is replaced whole: built once per
        # snapshot, not once per scrape. A tuple assignment is atomic, so concurrent scrapes need no lock.
        self._cached: tuple[Snapshot | None, list[Metric], list[Metric]] = (None, [], [])

    def collect(self) -> Iterator[Metric]:
        scrape = self._read()
        snapshot = scrape.snapshot
        cached = self._cached
        if cached[0] is not snapshot:
            cached = (snapshot, list(webhook_families(snapshot.plans)), [risk_family(snapshot.findings)])
            self._cached = cached
        yield from cached[1]
        yield from probe_families(snapshot.plans, scrape.results)
        yield from self_families(snapshot, scrape.probes)
        yield from cached[2]
        if scrape.watches is not None:
            yield from watch_families(scrape.watches)
        if scrape.canary is not None:
            yield from canary_families(snapshot, scrape.canary)


def webhook_families(plans: tuple[WebhookPlan, ...]) -> Iterator[Metric]:
    info = GaugeMetricFamily("admission_webhook_info", "Static properties of an admission webhook; always 1.",
                             labels=INFO_LABELS)
    timeout = GaugeMetricFamily("admission_webhook_timeout_seconds",
                                "The webhook's timeoutSeconds: the apiserver gives up on a call after this.",
                                labels=WEBHOOK_LABELS)
    ready = GaugeMetricFamily("admission_webhook_endpoints_ready",
                              "Ready endpoints behind a service-backed webhook at the resolved port.",
                              labels=WEBHOOK_LABELS)
    ca = GaugeMetricFamily("admission_webhook_ca_bundle_not_after_timestamp_seconds",
                           "Earliest notAfter of the certificates in the webhook's caBundle.",
                           labels=WEBHOOK_LABELS)
    for p in plans:
        labels = _webhook_labels(p.key)
        info.add_metric(_info_labels(p.webhook), 1)
        timeout.add_metric(labels, p.webhook.timeout_seconds)
        if p.endpoints_ready is not None:
            ready.add_metric(labels, p.endpoints_ready)
        if p.ca_not_after is not None:
            ca.add_metric(labels, p.ca_not_after)
    yield from (info, timeout, ready, ca)


def probe_families(plans: tuple[WebhookPlan, ...], results: Mapping[TargetKey, ProbeResult]) -> Iterator[Metric]:
    success = GaugeMetricFamily("admission_webhook_probe_success",
                                "1 if the last probe of the endpoint succeeded, else 0.", labels=ENDPOINT_LABELS)
    failure = GaugeMetricFamily("admission_webhook_probe_failure_info",
                                "1 for the reason the last probe failed, named after the apiserver's error.",
                                labels=[*ENDPOINT_LABELS, "reason"])
    duration = GaugeMetricFamily("admission_webhook_probe_duration_seconds",
                                 "Wall time of the last probe, end to end.", labels=ENDPOINT_LABELS)
    finished = GaugeMetricFamily("admission_webhook_probe_timestamp_seconds",
                                 "When the last probe finished.", labels=ENDPOINT_LABELS)
    not_after = GaugeMetricFamily("admission_webhook_tls_certificate_not_after_timestamp_seconds",
                                  "notAfter of the certificate the endpoint served, verified or not.",
                                  labels=ENDPOINT_LABELS)
    for p in plans:
        if p.verdict is not None:
            labels = [*_webhook_labels(p.key), ""]
            success.add_metric(labels, 0)
            failure.add_metric([*labels, p.verdict.reason.value], 1)
            continue
        for target in p.targets:
            result = results.get(target.key)
            if result is None:
                continue  # not probed yet: no sample rather than a false verdict
            labels = _endpoint_labels(target.key)
            success.add_metric(labels, 1 if result.success else 0)
            if result.reason is not None:
                failure.add_metric([*labels, result.reason.value], 1)
            duration.add_metric(labels, result.duration_seconds)
            finished.add_metric(labels, result.finished_at)
            if result.cert_not_after is not None:
                not_after.add_metric(labels, result.cert_not_after)
    yield from (success, failure, duration, finished, not_after)


def self_families(snapshot: Snapshot, probes: ProbeCounts) -> Iterator[Metric]:
    build = GaugeMetricFamily("admission_webhook_exporter_build_info", "Build information; always 1.",
                              labels=["version", "python_version"])
    build.add_metric([__version__, platform.python_version()], 1)
    yield build
    by_result = CounterMetricFamily("admission_webhook_exporter_probes", "Probes run since start, by result.",
                                    labels=["result"])
    for result, count in sorted(probes.by_result.items()):
        by_result.add_metric([result], count)
    yield by_result
    failures = CounterMetricFamily("admission_webhook_exporter_probe_failures",
                                   "Failed probes since start, by reason.", labels=["reason"])
    for reason in Reason:  # every reason, 0 included, so rate() works from the first scrape
        failures.add_metric([reason.value], probes.failures.get(reason.value, 0))
    yield failures
    yield GaugeMetricFamily("admission_webhook_exporter_targets", "Endpoints currently scheduled for probing.",
                            value=snapshot.target_count)
    yield GaugeMetricFamily("admission_webhook_exporter_inventory_last_load_timestamp_seconds",
                            "When the inventory last changed.", value=snapshot.inventory.loaded_at)
    yield GaugeMetricFamily("admission_webhook_exporter_inventory_invalid_objects",
                            "Objects skipped as malformed in the current inventory.",
                            value=len(snapshot.inventory.invalid))


def risk_family(findings: tuple[Finding, ...]) -> Metric:
    family = GaugeMetricFamily("admission_webhook_risk_info",
                               "1 for each risk the configuration audit finds in a webhook (docs/audit.md).",
                               labels=RISK_LABELS)
    for f in findings:
        family.add_metric([*_webhook_labels(f.webhook), f.id, f.severity], 1)
    return family


def watch_families(watches: WatchStatus) -> Iterator[Metric]:
    up = GaugeMetricFamily("admission_webhook_exporter_watch_up",
                           "1 while every watch of the resource is established, 0 while one is failing.",
                           labels=["resource"])
    for plural, ok in sorted(watches.up.items()):
        up.add_metric([plural], 1 if ok else 0)
    restarts = CounterMetricFamily("admission_webhook_exporter_watch_restarts",
                                   "Watches restarted after an error, a dead connection or 410 Gone.",
                                   labels=["resource"])
    last = GaugeMetricFamily("admission_webhook_exporter_watch_last_event_timestamp_seconds",
                             "When the resource's watches last delivered an event or bookmark.", labels=["resource"])
    for r in WATCHED:
        restarts.add_metric([r.plural], watches.restarts.get(r.plural, 0))
        if r.plural in watches.last_event:
            last.add_metric([r.plural], watches.last_event[r.plural])
    requests = CounterMetricFamily("admission_webhook_exporter_api_requests",
                                   "Requests the exporter made to the Kubernetes API, by verb and resource.",
                                   labels=["verb", "resource"])
    for (verb, plural), count in sorted(watches.requests.items()):
        requests.add_metric([verb, plural], count)
    yield from (up, restarts, last, requests)


def canary_families(snapshot: Snapshot, canary: CanaryStatus) -> Iterator[Metric]:
    """The canary's verdicts beside the probe's, for the snapshot's webhooks only (the canary re-plans after it)."""
    keys = {w.key for w in snapshot.inventory.webhooks}
    success = GaugeMetricFamily("admission_webhook_canary_success",
                                "1 if the apiserver called the webhook for the last dry-run canary (admitted or "
                                "denied), 0 if calling it failed; absent while the answer says neither.",
                                labels=WEBHOOK_LABELS)
    failure = GaugeMetricFamily("admission_webhook_canary_failure_info",
                                "1 for the reason the apiserver could not call the webhook for the last canary.",
                                labels=[*WEBHOOK_LABELS, "reason"])
    inconclusive = GaugeMetricFamily("admission_webhook_canary_inconclusive_info",
                                     "1 for why the last canary's answer says nothing about the webhook (RBAC, "
                                     "validation, quota, another webhook first).", labels=[*WEBHOOK_LABELS, "reason"])
    duration = GaugeMetricFamily("admission_webhook_canary_duration_seconds",
                                 "Round trip of the last dry-run canary request through the apiserver.",
                                 labels=WEBHOOK_LABELS)
    finished = GaugeMetricFamily("admission_webhook_canary_timestamp_seconds", "When the last canary finished.",
                                 labels=WEBHOOK_LABELS)
    skipped = GaugeMetricFamily("admission_webhook_not_canaried_info",
                                "1 for why the canary cannot reach the webhook through the apiserver.",
                                labels=[*WEBHOOK_LABELS, "reason"])
    for key, result in sorted(canary.results.items()):
        if key not in keys:
            continue
        labels = _webhook_labels(key)
        if result.success is not None:
            success.add_metric(labels, 1 if result.success else 0)
        if result.outcome == "failed":
            failure.add_metric([*labels, result.reason], 1)
        elif result.outcome == "inconclusive":
            inconclusive.add_metric([*labels, result.reason], 1)
        duration.add_metric(labels, result.duration_seconds)
        finished.add_metric(labels, result.finished_at)
    for s in canary.skipped:
        if s.key in keys:
            skipped.add_metric([*_webhook_labels(s.key), s.reason.value], 1)
    yield from (success, failure, inconclusive, duration, finished, skipped)
    requests = CounterMetricFamily("admission_webhook_exporter_canary_requests",
                                   "Dry-run canary requests sent to the apiserver since start, by outcome.",
                                   labels=["outcome"])
    for outcome in OUTCOMES:
        requests.add_metric([outcome], canary.requests.get(outcome, 0))
    yield requests
