"""End to end: the alert rules of alerts/rules/, evaluated by a real Prometheus, fire on a real failure.

The real kube-apiserver (tests/controlplane), the exporter following it in-process, real TLS backends on
127.0.0.1, and a real Prometheus (tests/e2e/prometheus.py) scraping the exporter and the apiserver every
second with the committed rules loaded, their ``for:`` shortened to 3 s (that is the only change; the
expressions, selectors and labels are the committed ones). The scenario is tests/e2e/scenario.py's.

Asserted through Prometheus' HTTP API (/api/v1/alerts): a Fail webhook with no ready endpoints pages
(AdmissionWebhookNoReadyEndpoints, critical), a serving certificate 3 days from notAfter pages
(AdmissionWebhookCertificateExpiring, critical band only), probe failures follow failurePolicy, the
apiserver's own fail-open counter fires AdmissionWebhookFailingOpen, an audit finding fires
AdmissionWebhookConfigurationRisk (once the exporter exposes the audit), and the healthy webhook has no alert
at all, pending or firing.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import prometheus as e2e_prometheus
from tests.e2e import scenario as e2e_scenario
from tests.e2e.prometheus import RULES_DIR, ApiserverTarget, Prometheus, shorten_rules
from tests.e2e.scenario import Scenario

# The fixtures this module's test uses (tests/conftest.py does not import them for every module).
make_prometheus = e2e_prometheus.make_prometheus
scenario = e2e_scenario.scenario

# exporter/server.py passes shutdown_timeout to TCPSite, which aiohttp >= 3.12 deprecates; not ours to fix here,
# and the warnings-as-errors setting would turn it into a setup error of the end-to-end test.
AIOHTTP_DEPRECATION = "ignore:shutdown_timeout should be set on BaseRunner:DeprecationWarning"
FIRING_WITHIN_S = 45.0  # for: 3s + scrape and evaluation every 1s; measured ~8 s, bounded generously


def test_shortened_rules_change_only_for(tmp_path: Path) -> None:
    """The harness's copy of the rules differs from alerts/rules/ in ``for:`` alone (ranges only on request)."""
    copies = shorten_rules(RULES_DIR.glob("*.yaml"), tmp_path, for_duration="3s")
    assert {p.name for p in copies} == {p.name for p in RULES_DIR.glob("*.yaml")}
    for copy in copies:
        original = yaml.safe_load((RULES_DIR / copy.name).read_text())
        shortened = yaml.safe_load(copy.read_text())
        for group, short in zip(original["groups"], shortened["groups"], strict=True):
            for rule, new in zip(group["rules"], short["rules"], strict=True):
                assert new == ({**rule, "for": "3s"} if "for" in rule else rule)
    [probes] = shorten_rules([RULES_DIR / "probes.yaml"], tmp_path / "ranges", range_window="20s")
    text = probes.read_text()
    assert "[5m]" not in text and "[20s]" in text


def matching(alerts: list[dict[str, Any]], alertname: str, **labels: str) -> list[dict[str, Any]]:
    return [a for a in alerts if a["labels"].get("alertname") == alertname
            and all(a["labels"].get(k) == v for k, v in labels.items())]


@pytest.mark.controlplane
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.filterwarnings(AIOHTTP_DEPRECATION)
async def test_alerts_fire_for_the_broken_webhooks_and_not_for_the_healthy_one(
        make_prometheus: Any, scenario: Scenario, control_plane: Any) -> None:
    started = time.monotonic()
    s = scenario
    prom: Prometheus = await asyncio.to_thread(make_prometheus, exporter_port=s.exporter_port,
                                               apiserver=ApiserverTarget.of(control_plane))
    await asyncio.to_thread(prom.wait_for_targets)
    # Calls through the apiserver, spread over a few scrapes, so its counters have a rate.
    traffic = asyncio.create_task(s.traffic(rounds=15, pause_s=0.4))

    expected = {
        "no ready endpoints (Fail)": ("AdmissionWebhookNoReadyEndpoints",
                                      {**s["no_endpoints"].labels, "severity": "critical"}),
        "certificate expiring in 3 days": ("AdmissionWebhookCertificateExpiring",
                                           {**s["expiring"].labels, "endpoint": s["expiring"].endpoint,
                                            "severity": "critical"}),
        "probe failing (Fail)": ("AdmissionWebhookProbeFailing",
                                 {**s["broken"].labels, "endpoint": s["broken"].endpoint, "severity": "critical"}),
        "probe failing (Ignore)": ("AdmissionWebhookProbeFailing",
                                   {**s["fail_open"].labels, "endpoint": s["fail_open"].endpoint,
                                    "severity": "warning"}),
        "apiserver failing open": ("AdmissionWebhookFailingOpen",
                                   {"name": s["fail_open"].name, "type": "validating", "severity": "warning"}),
    }
    # The configuration audit (exporter/audit/) lands separately: once the exporter reports the risky
    # webhook's finding, its alert must fire too (a warning: configuration risks never page).
    risk = {**s["risky"].labels, "risk": "fail_policy_long_timeout", "severity": "warning"}
    if s.value("admission_webhook_risk_info", **risk) == 1:
        expected["configuration risk"] = ("AdmissionWebhookConfigurationRisk",
                                          {**s["risky"].labels, "risk": "fail_policy_long_timeout",
                                           "risk_severity": "warning", "severity": "warning"})

    def missing() -> dict[str, tuple[str, dict[str, str]]]:
        alerts = prom.alerts()
        return {what: want for what, want in expected.items()
                if not [a for a in matching(alerts, want[0], **want[1]) if a["state"] == "firing"]}

    try:
        deadline = time.monotonic() + FIRING_WITHIN_S
        left = await asyncio.to_thread(missing)
        while left and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            left = await asyncio.to_thread(missing)
        assert not left, f"not firing within {FIRING_WITHIN_S:g}s: {left}\nactive: {await _summary(prom)}"
        fired_after = time.monotonic() - started
        counts = await traffic
    finally:
        traffic.cancel()
        await asyncio.gather(traffic, return_exceptions=True)
    assert counts["allowed"] >= 15 and counts["rejected"] >= 30, counts  # plain allowed; deny and broken refused

    alerts = await asyncio.to_thread(prom.alerts)
    # Exactly the labels a receiver routes on, and annotations rendered for this webhook.
    [endpoints] = matching(alerts, "AdmissionWebhookNoReadyEndpoints", name=s["no_endpoints"].name)
    assert {k: v for k, v in endpoints["labels"].items()} == {
        "alertname": "AdmissionWebhookNoReadyEndpoints", **s["no_endpoints"].labels, "severity": "critical"}
    assert s["no_endpoints"].name in endpoints["annotations"]["description"]
    assert endpoints["annotations"]["runbook_url"].endswith("/AdmissionWebhookNoReadyEndpoints.md")
    [cert] = matching(alerts, "AdmissionWebhookCertificateExpiring", name=s["expiring"].name)
    assert cert["labels"]["severity"] == "critical"  # the bands do not overlap: no warning alongside
    # humanizeDuration of ~3 days minus the seconds the test has run so far
    assert re.search(r"expires in 2d 23h \d+m", cert["annotations"]["description"]), cert["annotations"]
    # One incident, one alert: no_endpoints is left to the endpoints alert, not paged again as a probe failure.
    assert not matching(alerts, "AdmissionWebhookProbeFailing", name=s["no_endpoints"].name)

    # The healthy webhook: its series are there and healthy, and no alert of any state names it, after the
    # others have had time to fire (so "none" is not just "not yet").
    healthy = s["healthy"]
    up = await asyncio.to_thread(prom.query, f'admission_webhook_probe_success{{name="{healthy.name}"}} == 1')
    assert len(up) == 1, up
    requests = await asyncio.to_thread(
        prom.query, f'apiserver_admission_webhook_request_total{{job="apiserver", name="{healthy.name}"}}')
    assert requests, "the apiserver never called the healthy webhook"
    assert not [a for a in alerts if a["labels"].get("name") == healthy.name], \
        [(a["labels"]["alertname"], a["state"]) for a in alerts if a["labels"].get("name") == healthy.name]
    print(f"{sorted(expected)} firing {fired_after:.1f}s after start; {len(alerts)} active alerts; "
          f"traffic {counts}")


async def _summary(prom: Prometheus) -> list[tuple[str, str, str, str]]:
    alerts = await asyncio.to_thread(prom.alerts)
    return sorted((a["labels"]["alertname"], a["labels"].get("name", ""), a["labels"].get("severity", ""),
                   a["state"]) for a in alerts)
