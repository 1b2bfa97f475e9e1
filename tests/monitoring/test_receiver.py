"""The receiver program the alert receiver Pod runs, run here on loopback as the Pod runs it (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.controlplane.harness import free_port
from tests.monitoring.receiver import SCRIPT

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# What Alertmanager 0.25 posts to a webhook_config (its "version 4" payload), trimmed to what the tests read.
PAYLOAD = {"version": "4", "status": "firing", "receiver": "awe-test-receiver", "groupKey": "{}:{}",
           "alerts": [{"status": "firing", "labels": {"alertname": "AdmissionWebhookNoReadyEndpoints",
                                                      "severity": "critical"},
                       "annotations": {"runbook_url": "https://example.invalid/runbook.md"},
                       "startsAt": "2026-12-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z"}]}


@pytest.fixture
def receiver_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with _NO_PROXY.open(f"{url}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except (OSError, urllib.error.URLError):
                assert time.monotonic() < deadline, "receiver did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with _NO_PROXY.open(request, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_records_notifications_in_order_and_refuses_what_is_not_one(receiver_url: str) -> None:
    assert post(f"{receiver_url}/", json.dumps(PAYLOAD).encode()) == 200
    assert post(f"{receiver_url}/", json.dumps({**PAYLOAD, "status": "resolved"}).encode()) == 200
    assert post(f"{receiver_url}/", b"not json") == 400
    with _NO_PROXY.open(f"{receiver_url}/notifications", timeout=5) as r:
        received = json.loads(r.read())
    assert [n["body"]["status"] for n in received] == ["firing", "resolved"]
    assert received[0]["body"]["alerts"][0]["labels"]["alertname"] == "AdmissionWebhookNoReadyEndpoints"
    assert received[0]["received_at"] <= received[1]["received_at"] <= time.time()
