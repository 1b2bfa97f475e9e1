"""The one place metric families are made: a prometheus_client custom collector over plain data, no I/O.

A scrape reads its inputs once (`Scrape`: the current snapshot, the latest results, the probe counts, the
watch status) and formats every family from that one read, so one response never mixes two inventories.
Each family is listed once below with its help text; identity labels are added in one place
(`_webhook_labels`). `docs/metrics.md` documents every family and a test checks the two agree.

Two renderings of the same families. `collect()` yields prometheus_client families (the OpenMetrics and
protobuf encoders, the tests); `text()` is the classic text format, byte for byte what
`exposition.render(collect())` gives, kept ready ahead of the scrape: formatting every sample at each scrape
costs tens of milliseconds per 10,000 series, more while the prober shares the GIL. So the webhook families
are rendered once per plans (`prepare`, when an inventory is adopted), the risk family once per findings, and
each target's probe lines whenever its result is stored (`result_changed`); a scrape joins strings. It still
checks each target's lines against the result it read (one identity test per target), so the text never
depends on having been told: a missed or racing notice costs that one target a render during the scrape.
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
from .exposition import escape_value, header, label_set, number, render_text
from .model import Webhook, WebhookKey
from .probe import ProbeResult
from .reasons import Reason
from .scheduler import ProbeCounts
from .state import Snapshot
from .targets import TargetKey, WebhookPlan
from .webconfig import WebConfigStatus

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
    web_config: WebConfigStatus | None = None  # None unless serve has a --web.config.file


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
        # The text rendering's caches: per plans (webhook families, each target's probe lines), per findings.
        # `_text` is written only where results are stored (the event loop), so it is told of every result;
        # a scrape of plans that were never prepared keeps their text in `_unprepared`, and checks it.
        self._text: PlansText | None = None
        self._unprepared: PlansText | None = None
        self._risk_text: tuple[tuple[Finding, ...] | None, dict[bool, bytes]] = (None, {})

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
        if scrape.web_config is not None:
            yield from web_config_families(scrape.web_config)

    # -- the text rendering ----------------------------------------------------------------------------------
    def prepare(self, plans: tuple[WebhookPlan, ...], results: Mapping[TargetKey, ProbeResult]) -> None:
        """Render new plans' text now, so no scrape pays, and keep it current from `result_changed` on.

        Call it where results are stored (the event loop), as the plans are adopted: no result may be stored
        between reading `results` and the end of this call, or its target's lines would miss it.
        """
        self._text = PlansText(plans, results, self._text)

    def result_changed(self, key: TargetKey, result: ProbeResult) -> None:
        """A target's new result: its probe lines rendered now, off the scrape (called where results are stored)."""
        text = self._text
        if text is not None:
            text.update(key, result)

    def text(self, *, openmetrics: bool = False) -> bytes:
        """`exposition.render(collect())` (without OpenMetrics' `# EOF`), joined from the text kept ready."""
        scrape = self._read()
        snapshot = scrape.snapshot
        text = self._text
        if text is not None and text.plans is snapshot.plans:
            probes = text.probes(openmetrics=openmetrics)  # prepared, and told of every result since: current
        else:  # plans never prepared: their text is kept too, but checked against the results at each scrape
            text = self._unprepared
            if text is None or text.plans is not snapshot.plans:
                text = PlansText(snapshot.plans, scrape.results, text)
                self._unprepared = text
            probes = text.probes(scrape.results, openmetrics=openmetrics)
        findings, risk = self._risk_text
        if findings is not snapshot.findings:
            risk = {om: render_text([risk_family(snapshot.findings)], openmetrics=om).encode() for om in (False, True)}
            self._risk_text = (snapshot.findings, risk)
        parts = [*text.webhooks(openmetrics=openmetrics), *probes,
                 render_text(self_families(snapshot, scrape.probes), openmetrics=openmetrics).encode(),
                 risk[openmetrics]]
        if scrape.watches is not None:
            parts.append(render_text(watch_families(scrape.watches), openmetrics=openmetrics).encode())
        if scrape.canary is not None:  # one sample per webhook, its verdicts change as the canary goes round
            parts.append(render_text(canary_families(snapshot, scrape.canary), openmetrics=openmetrics).encode())
        if scrape.web_config is not None:
            parts.append(render_text(web_config_families(scrape.web_config), openmetrics=openmetrics).encode())
        return b"".join(parts)


# The webhook families, as (name, help): one place for both renderings.
INFO = ("admission_webhook_info", "Static properties of an admission webhook; always 1.")
TIMEOUT = ("admission_webhook_timeout_seconds",
           "The webhook's timeoutSeconds: the apiserver gives up on a call after this.")
READY = ("admission_webhook_endpoints_ready", "Ready endpoints behind a service-backed webhook at the resolved port.")
CA_NOT_AFTER = ("admission_webhook_ca_bundle_not_after_timestamp_seconds",
                "Earliest notAfter of the certificates in the webhook's caBundle.")
WEBHOOK_FAMILIES = (INFO, TIMEOUT, READY, CA_NOT_AFTER)


def webhook_families(plans: tuple[WebhookPlan, ...]) -> Iterator[Metric]:
    info = GaugeMetricFamily(*INFO, labels=INFO_LABELS)
    timeout, ready, ca = (GaugeMetricFamily(*f, labels=WEBHOOK_LABELS) for f in (TIMEOUT, READY, CA_NOT_AFTER))
    for p in plans:
        labels = _webhook_labels(p.key)
        info.add_metric(_info_labels(p.webhook), 1)
        timeout.add_metric(labels, p.webhook.timeout_seconds)
        if p.endpoints_ready is not None:
            ready.add_metric(labels, p.endpoints_ready)
        if p.ca_not_after is not None:
            ca.add_metric(labels, p.ca_not_after)
    yield from (info, timeout, ready, ca)


# The probe families, as (name, help): one place for both renderings.
SUCCESS = ("admission_webhook_probe_success", "1 if the last probe of the endpoint succeeded, else 0.")
FAILURE = ("admission_webhook_probe_failure_info",
           "1 for the reason the last probe failed, named after the apiserver's error.")
DURATION = ("admission_webhook_probe_duration_seconds", "Wall time of the last probe, end to end.")
FINISHED = ("admission_webhook_probe_timestamp_seconds", "When the last probe finished.")
NOT_AFTER = ("admission_webhook_tls_certificate_not_after_timestamp_seconds",
             "notAfter of the certificate the endpoint served, verified or not.")
PROBE_FAMILIES = (SUCCESS, FAILURE, DURATION, FINISHED, NOT_AFTER)


def probe_families(plans: tuple[WebhookPlan, ...], results: Mapping[TargetKey, ProbeResult]) -> Iterator[Metric]:
    success, duration, finished, not_after = (GaugeMetricFamily(*f, labels=ENDPOINT_LABELS)
                                              for f in (SUCCESS, DURATION, FINISHED, NOT_AFTER))
    failure = GaugeMetricFamily(*FAILURE, labels=[*ENDPOINT_LABELS, "reason"])
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


# -- the text kept ready -------------------------------------------------------------------------------------
# A webhook's or a target's samples in each of its families (in WEBHOOK_FAMILIES or PROBE_FAMILIES order),
# encoded, b"" where it has none.
Lines = tuple[bytes, ...]
NO_LINES: Lines = (b"",) * len(PROBE_FAMILIES)
# The families' HELP and TYPE lines in each format, by `openmetrics`.
WEBHOOK_HEADERS = {om: tuple(header(name, doc, "gauge", openmetrics=om).encode() for name, doc in WEBHOOK_FAMILIES)
                   for om in (False, True)}
PROBE_HEADERS = {om: tuple(header(name, doc, "gauge", openmetrics=om).encode() for name, doc in PROBE_FAMILIES)
                 for om in (False, True)}


def webhook_lines(p: WebhookPlan, labels: str) -> Lines:
    """What `webhook_families` renders for one plan; `labels` is its rendered webhook label set."""
    ready, ca = p.endpoints_ready, p.ca_not_after
    return (f"{INFO[0]}{{{label_set(INFO_LABELS, _info_labels(p.webhook))}}} 1.0\n".encode(),
            f"{TIMEOUT[0]}{{{labels}}} {number(p.webhook.timeout_seconds)}\n".encode(),
            b"" if ready is None else f"{READY[0]}{{{labels}}} {number(ready)}\n".encode(),
            b"" if ca is None else f"{CA_NOT_AFTER[0]}{{{labels}}} {number(ca)}\n".encode())


def probe_lines(labels: str, result: ProbeResult) -> Lines:
    """What `probe_families` renders for one target's result; `labels` is its rendered label set."""
    reason, not_after = result.reason, result.cert_not_after
    return (f"{SUCCESS[0]}{{{labels}}} {'1.0' if result.success else '0.0'}\n".encode(),
            b"" if reason is None else f'{FAILURE[0]}{{{labels},reason="{escape_value(reason.value)}"}} 1.0\n'.encode(),
            f"{DURATION[0]}{{{labels}}} {number(result.duration_seconds)}\n".encode(),
            f"{FINISHED[0]}{{{labels}}} {number(result.finished_at)}\n".encode(),
            b"" if not_after is None else f"{NOT_AFTER[0]}{{{labels}}} {number(not_after)}\n".encode())


def verdict_lines(p: WebhookPlan, labels: str) -> Lines:
    """What `probe_families` renders for a plan with nothing to dial: success 0 and the verdict's reason."""
    assert p.verdict is not None
    labels = f'{labels},endpoint=""'
    return (f"{SUCCESS[0]}{{{labels}}} 0.0\n".encode(),
            f'{FAILURE[0]}{{{labels},reason="{escape_value(p.verdict.reason.value)}"}} 1.0\n'.encode(),
            b"", b"", b"")


@dataclass(frozen=True)
class _WebhookText:
    """One plan's webhook lines, and its label set; reused by the next plans while the webhook is the same object."""

    webhook: Webhook  # held, so its id() is not reused while this entry lives
    endpoints_ready: int | None
    ca_not_after: float | None
    labels: str
    lines: Lines

    def fits(self, p: WebhookPlan) -> bool:
        return self.webhook is p.webhook and self.endpoints_ready == p.endpoints_ready and \
            self.ca_not_after == p.ca_not_after


class PlansText:
    """The text of one set of plans: the webhook families whole, and per target its probe lines.

    Built from the previous plans' text where it still holds (discovery reuses the parsed `Webhook` of an
    unchanged object, and a target whose result is the same keeps its lines), so adopting an inventory after
    one EndpointSlice changed renders that webhook's lines, not every webhook's.
    Written by one thread (the event loop: `update`), read by scrapes on others: `slots` never changes length
    and each slot is replaced whole, so a reader sees a target's old lines or its new ones, never a mix.
    """

    def __init__(self, plans: tuple[WebhookPlan, ...], results: Mapping[TargetKey, ProbeResult],
                 previous: PlansText | None = None) -> None:
        self.plans = plans
        self._keys: list[TargetKey | None] = []  # per slot: its target, None for a plan's verdict
        self._labels: list[str] = []  # per slot: its rendered label set
        self._index: dict[TargetKey, int] = {}
        self._slots: list[tuple[ProbeResult | None, Lines]] = []  # the result the lines were rendered from
        self._webhooks: dict[int, _WebhookText] = {}  # by id() of the Webhook
        known = previous._webhooks if previous is not None else {}
        webhook_lines_: list[Lines] = []
        for p in plans:
            entry = known.get(id(p.webhook))
            if entry is None or not entry.fits(p):
                labels = label_set(WEBHOOK_LABELS, _webhook_labels(p.key))
                entry = _WebhookText(p.webhook, p.endpoints_ready, p.ca_not_after, labels, webhook_lines(p, labels))
            self._webhooks[id(p.webhook)] = entry
            webhook_lines_.append(entry.lines)
            if p.verdict is not None:
                self._add(None, "", (None, verdict_lines(p, entry.labels)))
                continue
            for target in p.targets:
                result = results.get(target.key)
                old = previous._slot(target.key) if previous is not None else None
                if old is not None and old[1] is result:  # the same key: the same labels
                    labels, slot = old[0], (result, old[2])
                else:
                    labels = f'{entry.labels},endpoint="{escape_value(target.key.endpoint)}"'
                    slot = (result, NO_LINES if result is None else probe_lines(labels, result))
                self._index[target.key] = len(self._keys)
                self._add(target.key, labels, slot)
        # Each webhook family's samples, joined (the headers differ by format).
        self._webhook_samples = [b"".join([lines[f] for lines in webhook_lines_]) for f in range(len(WEBHOOK_FAMILIES))]

    def _add(self, key: TargetKey | None, labels: str, slot: tuple[ProbeResult | None, Lines]) -> None:
        self._keys.append(key)
        self._labels.append(labels)
        self._slots.append(slot)

    def _slot(self, key: TargetKey) -> tuple[str, ProbeResult | None, Lines] | None:
        i = self._index.get(key)
        return None if i is None else (self._labels[i], *self._slots[i])

    def update(self, key: TargetKey, result: ProbeResult) -> None:
        i = self._index.get(key)
        if i is not None:
            self._slots[i] = (result, probe_lines(self._labels[i], result))

    def webhooks(self, *, openmetrics: bool) -> list[bytes]:
        """The webhook families."""
        return [part for pair in zip(WEBHOOK_HEADERS[openmetrics], self._webhook_samples, strict=True) for part in pair]

    def probes(self, results: Mapping[TargetKey, ProbeResult] | None = None, *, openmetrics: bool) -> list[bytes]:
        """The probe families from the lines kept; with `results` (text that is not told of each result), each
        target's lines are first checked against its result there, and rendered again where they differ."""
        current: list[Lines] = [lines for _, lines in self._slots]
        if results is not None:
            for i, (key, (source, _)) in enumerate(zip(self._keys, self._slots, strict=True)):
                if key is not None and (result := results.get(key)) is not source:
                    current[i] = NO_LINES if result is None else probe_lines(self._labels[i], result)
        out: list[bytes] = []
        for f, family_header in enumerate(PROBE_HEADERS[openmetrics]):
            out.append(family_header)
            out.extend([lines[f] for lines in current])
        return out


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


def web_config_families(status: WebConfigStatus) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "admission_webhook_exporter_web_config_last_reload_successful",
        "1 when the last change of the --web.config.file (or a file it names) loaded; 0 while the last good "
        "configuration is kept because a change did not load", value=1 if status.last_reload_successful else 0)
    yield GaugeMetricFamily(
        "admission_webhook_exporter_web_config_last_reload_success_timestamp_seconds",
        "When the web configuration in force was loaded", value=status.last_success_s)
