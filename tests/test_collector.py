"""The exposition, sample by sample, from real probes of real backends."""

from __future__ import annotations

import datetime as dt
import re

from prometheus_client import generate_latest

from exporter.app import Exporter
from exporter.backend import Behaviour
from exporter.pki import CertificateAuthority
from exporter.reasons import Reason
from tests import factories as f
from tests.conftest import Servers
from tests.helpers import inventory_of


async def test_metrics_for_healthy_failing_and_endpointless_webhooks(servers: Servers, ca: CertificateAuthority,
                                                                     loopback_cert) -> None:
    healthy = await servers.backend(loopback_cert)
    expiring = ca.issue(["127.0.0.1"], valid_until=dt.datetime.now(dt.UTC) + dt.timedelta(days=3))
    soon = await servers.backend(expiring, Behaviour(status=503))
    inventory = inventory_of(
        f.configuration("vcfg", f.webhook("ok.example.com", f.url_client(healthy.port, ca.ca_bundle)),
                        f.webhook("soon.example.com", f.url_client(soon.port, ca.ca_bundle), policy="Ignore",
                                  timeout=None),
                        f.webhook("empty.example.com", f.service_client("ns", "svc", ca.ca_bundle))),
        f.service("ns", "svc", [{"name": "https", "port": 443}]),
        f.endpoint_slice("ns", "svc", [{"name": "https", "port": 8443}], [("10.1.2.3", False)]),
        f.configuration("mcfg", f.webhook("m.example.com", {"url": "https://x", "caBundle": "!!"}),
                        kind="MutatingWebhookConfiguration"),
    )
    exporter = Exporter(interval=3600)
    try:
        exporter.adopt(inventory)
        await exporter.scheduler.wait_first_round()
        reg = exporter.registry

        def value(metric: str, /, **labels: str) -> float | None:
            return reg.get_sample_value(metric, labels)

        ok = {"configuration": "vcfg", "name": "ok.example.com", "type": "validating"}
        soon_l = {"configuration": "vcfg", "name": "soon.example.com", "type": "validating"}
        empty = {"configuration": "vcfg", "name": "empty.example.com", "type": "validating"}
        mut = {"configuration": "mcfg", "name": "m.example.com", "type": "admit"}
        ok_ep = {**ok, "endpoint": f"127.0.0.1:{healthy.port}"}
        soon_ep = {**soon_l, "endpoint": f"127.0.0.1:{soon.port}"}

        assert value("admission_webhook_info", **ok, failure_policy="Fail", side_effects="None",
                     match_policy="Equivalent", backend="url", service_namespace="", service_name="",
                     url=f"https://127.0.0.1:{healthy.port}/validate") == 1
        assert value("admission_webhook_info", **empty, failure_policy="Fail", side_effects="None",
                     match_policy="Equivalent", backend="service", service_namespace="ns", service_name="svc",
                     url="") == 1
        assert value("admission_webhook_timeout_seconds", **ok) == 5
        assert value("admission_webhook_timeout_seconds", **soon_l) == 10
        assert value("admission_webhook_endpoints_ready", **empty) == 0
        assert value("admission_webhook_endpoints_ready", **ok) is None  # url webhooks have no endpoint count
        assert value("admission_webhook_ca_bundle_not_after_timestamp_seconds", **ok) == \
            ca.cert.not_valid_after_utc.timestamp()
        assert value("admission_webhook_ca_bundle_not_after_timestamp_seconds", **mut) is None

        assert value("admission_webhook_probe_success", **ok_ep) == 1
        assert value("admission_webhook_probe_success", **soon_ep) == 0
        assert value("admission_webhook_probe_failure_info", **soon_ep, reason="http_error") == 1
        assert value("admission_webhook_probe_failure_info", **ok_ep, reason="http_error") is None
        assert value("admission_webhook_tls_certificate_not_after_timestamp_seconds", **soon_ep) == \
            expiring.cert.not_valid_after_utc.timestamp()
        assert 0 < value("admission_webhook_probe_duration_seconds", **ok_ep) < 5  # type: ignore[operator]
        assert value("admission_webhook_probe_success", **empty, endpoint="") == 0
        assert value("admission_webhook_probe_failure_info", **empty, endpoint="", reason="no_endpoints") == 1
        assert value("admission_webhook_probe_failure_info", **mut, endpoint="", reason="invalid_config") == 1

        assert value("admission_webhook_exporter_probes_total", result="success") == 1
        assert value("admission_webhook_exporter_probes_total", result="failure") == 1
        assert value("admission_webhook_exporter_probe_failures_total", reason="http_error") == 1
        for reason in Reason:  # pre-created at 0 so rate() works from the first scrape
            assert value("admission_webhook_exporter_probe_failures_total", reason=reason.value) is not None
        assert value("admission_webhook_exporter_targets") == 2
        assert value("admission_webhook_exporter_inventory_invalid_objects") == 0
        assert value("admission_webhook_exporter_inventory_last_load_timestamp_seconds") == 1_700_000_000.0

        text = generate_latest(reg).decode()
        assert "_created" not in text
        assert re.search(r'^admission_webhook_exporter_build_info\{python_version="[\d.]+",version="0\.1\.0"\} 1\.0$',
                         text, re.M)
    finally:
        await exporter.close()


async def test_deleted_webhook_series_disappear(servers: Servers, ca: CertificateAuthority, loopback_cert) -> None:
    backend = await servers.backend(loopback_cert)
    cfg = f.configuration("c", f.webhook("gone.example.com", f.url_client(backend.port, ca.ca_bundle)))
    exporter = Exporter(interval=3600)
    try:
        exporter.adopt(inventory_of(cfg))
        await exporter.scheduler.wait_first_round()
        assert "gone.example.com" in generate_latest(exporter.registry).decode()
        exporter.adopt(inventory_of())
        assert "gone.example.com" not in generate_latest(exporter.registry).decode()
        assert exporter.results.snapshot() == {}
    finally:
        await exporter.close()
