"""The text kept ready (`ExporterCollector.text`) is byte for byte the rendering of the families (`collect`),
whatever happened since it was prepared: results told or not told, plans adopted with or without `prepare`,
findings published, watches reported. No network: the results are made here."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from exporter.audit import Finding
from exporter.canary import OUTCOMES, CanaryResult, CanaryStatus, NotCanaried, Skipped
from exporter.collector import ExporterCollector, Scrape
from exporter.discovery import WatchStatus
from exporter.exposition import EOF, render
from exporter.inventory import ParseCache, SourcedObject, build_inventory
from exporter.model import WebhookKey
from exporter.probe import ProbeResult
from exporter.reasons import Reason
from exporter.scheduler import ProbeCounts
from exporter.state import ExporterState
from exporter.targets import TargetKey, WebhookPlan
from tests import factories as f
from tests.helpers import inventory_of

CA = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="  # decodes to PEM with no certificate: an invalid caBundle


def objects(extra_endpoint: bool = False) -> list[dict[str, object]]:
    endpoints = [("10.1.2.3", True), ("10.1.2.4", True), *([("10.1.2.5", True)] if extra_endpoint else [])]
    return [
        f.configuration("vcfg",
                        f.webhook("url.example.com", f.url_client(8443, "")),
                        f.webhook("svc.example.com", f.service_client("ns", "svc", "")),
                        f.webhook("none.example.com", f.service_client("ns", "gone", "")),
                        f.webhook("badca.example.com", f.url_client(9443, CA))),
        # a label value that needs escaping: a backslash and a quote in the url's path
        f.configuration("mcfg", f.webhook("m.example.com", f.url_client(7443, "", path='/a\\b"c')),
                        kind="MutatingWebhookConfiguration"),
        f.service("ns", "svc", [{"name": "https", "port": 443}]),
        f.endpoint_slice("ns", "svc", [{"name": "https", "port": 8443}], endpoints),
    ]


def result(success: bool, at: float, *, reason: Reason | None = None, not_after: float | None = None) -> ProbeResult:
    return ProbeResult(success=success, reason=reason, detail="", duration_seconds=at / 1e9, finished_at=at,
                       cert_not_after=not_after)


class Reads:
    """What the collector reads, changed by the test between scrapes."""

    def __init__(self) -> None:
        self.state = ExporterState()
        self.results: dict[TargetKey, ProbeResult] = {}
        self.watches: WatchStatus | None = None
        self.canary: CanaryStatus | None = None
        self.probes = ProbeCounts(by_result={"success": 3, "failure": 1}, failures={"timeout": 1})

    def __call__(self) -> Scrape:
        return Scrape(snapshot=self.state.snapshot, results=dict(self.results), probes=self.probes,
                      watches=self.watches, canary=self.canary)


def same(collector: ExporterCollector) -> str:
    text = collector.text()
    assert text == render(collector.collect())
    assert collector.text(openmetrics=True) + EOF.encode() == render(collector.collect(), openmetrics=True)
    return text.decode()


def test_text_kept_ready_is_the_rendering_of_the_families() -> None:
    """`told` is prepared with each inventory and told of each result, as the exporter wires it; `untold` never
    is (its text is rendered at a scrape and checked against the results at the next ones)."""
    reads = Reads()
    told, untold = ExporterCollector(reads), ExporterCollector(reads)

    def both() -> str:
        text = same(told)
        assert same(untold) == text
        return text

    assert both()  # empty: HELP and TYPE of every family, and the self families

    snapshot = reads.state.adopt(inventory_of(*objects()))
    told.prepare(snapshot.plans, reads.results)
    keys = [t.key for p in snapshot.plans for t in p.targets]
    assert len(keys) == 4  # url, two endpoints of svc, the escaped url; none and badca carry verdicts
    text = both()
    assert 'reason="service_not_found"' in text and 'reason="invalid_config"' in text
    assert 'url="https://127.0.0.1:7443/a\\\\b\\"c"' in text

    def store(key: TargetKey, r: ProbeResult) -> None:
        reads.results[key] = r
        told.result_changed(key, r)  # what ResultStore(on_put=...) does

    for i, key in enumerate(keys):
        store(key, result(i % 2 == 0, 1_700_000_000.5 + i, reason=None if i % 2 == 0 else Reason.TIMEOUT,
                          not_after=None if i == 1 else 1.8e9))
        both()
    store(keys[0], result(False, 1_700_000_100.0, reason=Reason.X509_EXPIRED, not_after=1.6e9))
    store(keys[2], result(True, math.inf))
    assert 'reason="x509_expired"' in both()
    told.result_changed(TargetKey(WebhookKey("other", "x", "validating"), "1.2.3.4:1"),
                        result(True, 1.0))  # a target these plans do not have: ignored
    both()

    # A new inventory adopted, then a result for its new endpoint; then the old inventory again.
    snapshot = reads.state.adopt(inventory_of(*objects(extra_endpoint=True)))
    told.prepare(snapshot.plans, reads.results)
    added = next(t.key for p in snapshot.plans for t in p.targets if t.key.endpoint == "10.1.2.5:8443")
    assert "10.1.2.5:8443" not in both()  # not probed yet: no sample
    store(added, result(True, 1_700_000_200.0))
    assert "10.1.2.5:8443" in both()
    snapshot = reads.state.adopt(inventory_of(*objects()))
    del reads.results[added]  # the scheduler retains only current targets' results
    told.prepare(snapshot.plans, reads.results)
    assert "10.1.2.5:8443" not in both()

    # An inventory adopted without prepare: the text is rendered at the scrape, and checked at the next.
    snapshot = reads.state.adopt(inventory_of(*objects(extra_endpoint=True)))
    reads.results[added] = result(True, 1_700_000_300.0)
    assert "10.1.2.5:8443" in both()
    reads.results[added] = result(False, 1_700_000_400.0, reason=Reason.CONNECTION_REFUSED)
    assert 'endpoint="10.1.2.5:8443",reason="connection_refused"' in both()

    # Findings published into the snapshot, and the watches reported.
    hook = snapshot.plans[1].key
    finding = Finding(id="fail_policy_single_endpoint", severity="warning", webhook=hook, why="one", fix="")
    reads.state.publish_findings(snapshot, (finding,))
    assert 'risk="fail_policy_single_endpoint"' in both()
    reads.state.publish_findings(dataclasses.replace(snapshot, generation=snapshot.generation + 1), ())
    assert "fail_policy_single_endpoint" not in both()
    reads.watches = WatchStatus(up={"services": True, "endpointslices": False}, restarts={"services": 2},
                                last_event={"services": 1_700_000_000.25}, requests={("list", "services"): 3})
    assert 'admission_webhook_exporter_watch_up{resource="endpointslices"} 0.0' in both()

    # The canary's verdicts (opt-in): rendered at each scrape, for the snapshot's webhooks only.
    url_hook, svc_hook = snapshot.plans[0].key, snapshot.plans[1].key
    reads.canary = CanaryStatus(
        namespace="canary",
        results={url_hook: CanaryResult(outcome="failed", reason=Reason.TIMEOUT.value, detail="", status=500,
                                        resource="configmaps", duration_seconds=0.25, finished_at=1_700_000_500.0),
                 WebhookKey("gone", "x", "validating"): CanaryResult(
                     outcome="admitted", reason="", detail="", status=201, resource="configmaps",
                     duration_seconds=0.1, finished_at=1_700_000_500.0)},
        skipped=(Skipped(svc_hook, NotCanaried.SIDE_EFFECTS, "sideEffects Unknown"),),
        requests={o: i for i, o in enumerate(OUTCOMES)})
    text = both()
    assert f'admission_webhook_canary_failure_info{{configuration="{url_hook.configuration}"' in text
    assert 'reason="side_effects"' in text and 'configuration="gone"' not in text


def test_text_of_new_plans_reuses_what_still_holds_and_stays_exact() -> None:
    """As discovery adopts: the same raw dicts parsed through one ParseCache keep their `Webhook` objects."""
    raw = objects()
    cache = ParseCache()
    reads = Reads()
    collector = ExporterCollector(reads)

    def adopt(objs: list[dict[str, object]]) -> tuple[WebhookPlan, ...]:
        snapshot = reads.state.adopt(build_inventory([SourcedObject("api", o) for o in objs], now=1.0, cache=cache))
        collector.prepare(snapshot.plans, reads.results)
        return snapshot.plans

    plans = adopt(raw)
    for i, key in enumerate(t.key for p in plans for t in p.targets):
        reads.results[key] = result(True, 1_700_000_000.0 + i)
        collector.result_changed(key, reads.results[key])
    before = same(collector)
    kept = collector._text
    assert kept is not None
    url_lines = kept._slot(plans[0].targets[0].key)

    # One EndpointSlice changes: a third ready endpoint for svc; every other object is the same dict.
    raw[-1] = objects(extra_endpoint=True)[-1]
    plans = adopt(raw)
    after = same(collector)
    # endpoints_ready of svc and the target count changed, and nothing else (the new endpoint is not probed yet)
    ready = 'admission_webhook_endpoints_ready{configuration="vcfg",name="svc.example.com",type="validating"}'
    assert before.replace(f"{ready} 2.0", f"{ready} 3.0") \
        .replace("admission_webhook_exporter_targets 4.0", "admission_webhook_exporter_targets 5.0") == after
    now = collector._text
    assert now is not None and now is not kept
    kept_lines = now._slot(plans[0].targets[0].key)
    assert url_lines is not None and kept_lines is not None
    assert kept_lines[2] is url_lines[2]  # an unchanged target's lines were kept, not rendered again


PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
                     "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;"
                     "q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")  # what Prometheus 3 sends


async def test_metrics_endpoint_serves_each_format_from_the_text_kept_ready() -> None:
    """Over HTTP: Prometheus's Accept header gets OpenMetrics, a plain client the text format; both are what
    prometheus_client renders from the same registry (nothing is dialled: the plans carry verdicts)."""
    import aiohttp
    from prometheus_client.exposition import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
    from prometheus_client.parser import text_string_to_metric_families

    from exporter.app import Exporter

    exporter = Exporter(interval=3600)
    try:
        exporter.adopt(inventory_of(f.configuration("c", f.webhook("a.example.com", f.service_client("ns", "x", "")),
                                                    f.webhook("b.example.com", f.url_client(1, CA)))))
        port = await exporter.serve("127.0.0.1", 0)
        async with aiohttp.ClientSession() as session:
            for accept, content_type, parse, theirs in [
                (PROMETHEUS_ACCEPT, "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=allow-utf-8",
                 openmetrics_families, openmetrics_latest),
                ("", "text/plain; version=0.0.4; charset=utf-8", text_string_to_metric_families, generate_latest),
            ]:
                async with session.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept}) as response:
                    assert response.headers["Content-Type"] == content_type
                    body = await response.text()

                def samples(text: str, parse: Any = parse) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
                    return {(s.name, frozenset(s.labels.items())): s.value for fam in parse(text) for s in fam.samples}

                assert samples(body) == samples(theirs(exporter.registry).decode())
                assert 'reason="service_not_found"' in body and 'reason="invalid_config"' in body
    finally:
        await exporter.close()
