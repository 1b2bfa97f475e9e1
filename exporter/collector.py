"""A prometheus_client custom collector: formats the latest state, does no I/O.

Each family is listed once below with its help text; identity labels are added in one place
(`_webhook_labels`). `docs/metrics.md` documents every family and a test checks the two agree.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .model import Webhook, WebhookKey
from .reasons import Reason
from .state import ExporterState
from .targets import TargetKey

WEBHOOK_LABELS = ["configuration", "name", "type"]
ENDPOINT_LABELS = [*WEBHOOK_LABELS, "endpoint"]
INFO_LABELS = [*WEBHOOK_LABELS, "failure_policy", "side_effects", "match_policy", "backend",
               "service_namespace", "service_name", "url"]


def _webhook_labels(key: WebhookKey) -> list[str]:
    return [key.configuration, key.name, key.type]


def _endpoint_labels(key: TargetKey) -> list[str]:
    return [*_webhook_labels(key.webhook), key.endpoint]


def _info_labels(hook: Webhook) -> list[str]:
    svc = hook.service
    return [*_webhook_labels(hook.key), hook.failure_policy, hook.side_effects, hook.match_policy, hook.backend,
            svc.namespace if svc else "", svc.name if svc else "", hook.url or ""]


class WebhookCollector(Collector):
    def __init__(self, state: ExporterState, *, extra: Iterable[Callable[[], Iterable[Metric]]] = ()) -> None:
        self._state = state
        self._extra = list(extra)
        # The webhook families depend only on the plans, which are replaced whole on every inventory change:
        # built once per plans object, not once per scrape.
        self._static: tuple[object, list[Metric]] = (None, [])

    def add_source(self, source: Callable[[], Iterable[Metric]]) -> None:
        """More families from another part of the exporter (e.g. discovery's watch health)."""
        self._extra.append(source)

    def collect(self) -> Iterator[Metric]:
        plans = self._state.plans
        if self._static[0] is not plans:
            self._static = (plans, list(self._webhook_families()))
        yield from self._static[1]
        yield from self._probe_families()
        yield from self._self_families()
        for source in self._extra:
            yield from source()

    def _webhook_families(self) -> Iterator[Metric]:
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
        for p in self._state.plans:
            labels = _webhook_labels(p.key)
            info.add_metric(_info_labels(p.webhook), 1)
            timeout.add_metric(labels, p.webhook.timeout_seconds)
            if p.endpoints_ready is not None:
                ready.add_metric(labels, p.endpoints_ready)
            if p.ca_not_after is not None:
                ca.add_metric(labels, p.ca_not_after)
        yield from (info, timeout, ready, ca)

    def _probe_families(self) -> Iterator[Metric]:
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
        results = self._state.results.snapshot()
        for p in self._state.plans:
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

    def _self_families(self) -> Iterator[Metric]:
        build = GaugeMetricFamily("admission_webhook_exporter_build_info", "Build information; always 1.",
                                  labels=["version", "python_version"])
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        stats = self._state.stats
        probes = CounterMetricFamily("admission_webhook_exporter_probes", "Probes run since start, by result.",
                                     labels=["result"])
        for result, count in sorted(stats.by_result.items()):
            probes.add_metric([result], count)
        yield probes
        failures = CounterMetricFamily("admission_webhook_exporter_probe_failures",
                                       "Failed probes since start, by reason.", labels=["reason"])
        for reason in Reason:
            failures.add_metric([reason.value], stats.failures[reason.value])
        yield failures
        yield GaugeMetricFamily("admission_webhook_exporter_targets", "Endpoints currently scheduled for probing.",
                                value=sum(len(p.targets) for p in self._state.plans))
        inventory = self._state.inventory
        yield GaugeMetricFamily("admission_webhook_exporter_inventory_last_load_timestamp_seconds",
                                "When the inventory last changed.", value=inventory.loaded_at)
        yield GaugeMetricFamily("admission_webhook_exporter_inventory_invalid_objects",
                                "Objects skipped as malformed in the current inventory.",
                                value=len(inventory.invalid))
