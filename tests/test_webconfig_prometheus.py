"""A real Prometheus scrapes `admission-webhook-exporter serve --web.config.file` (a real process, its real flags)
over TLS: with the credentials the web configuration asks for, the target is up; without them it is `up 0`.

The exporter requires a client certificate from its client CA (RequireAndVerifyClientCert) and, on top of it,
a bearer token or a basic-auth password, the way a ServiceMonitor's `tlsConfig` plus `authorization` (or
`basicAuth`) scrapes it. One Prometheus (tests/e2e/prometheus.py), one job per way of scraping, every second:

| job | presents | expected |
|---|---|---|
| admission-webhook-exporter | client certificate + bearer token (from a file, as the operator writes it) | up 1 |
| basic-auth | client certificate + user and password | up 1 |
| no-client-certificate | bearer token only | up 0 (TLS refused) |
| intruder-certificate | a certificate from another CA + bearer token | up 0 (TLS refused) |
| no-credentials | client certificate only | up 0 (401) |
| wrong-token | client certificate + a wrong token | up 0 (401) |
| plain-http | nothing, over HTTP | up 0 |

The kubelet's view, /healthz on --health-listen-address, answers without any of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.controlplane.harness import _spawn as spawn
from tests.controlplane.harness import free_port
from tests.e2e import prometheus as e2e_prometheus
from tests.e2e.prometheus import EXPORTER_JOB, Prometheus
from tests.webtls import PASSWORD, TOKEN, Pki, bcrypt_hash, files, write_config, write_pem

make_prometheus = e2e_prometheus.make_prometheus
REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
SCRAPED_WITHIN_S = 30.0  # every job scraped at least once; scrapes run every second
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


@pytest.fixture
def exporter_process(tmp_path: Path, pki: Pki) -> Iterator[tuple[int, int]]:
    """`serve --web.config.file` as its own process on free ports; (metrics port, health port)."""
    files(tmp_path, pki)
    config = write_config(tmp_path, "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
                                    "  client_auth_type: RequireAndVerifyClientCert\n"
                                    "  client_ca_file: client-ca.crt\n"
                                    f"basic_auth_users:\n  prometheus: {bcrypt_hash()}\n"
                                    "bearer_token_files: [token]\n")
    (tmp_path / "manifests").mkdir()
    port, health = free_port(), free_port()
    argv = [sys.executable, "-m", "exporter", "serve", "--manifests", str(tmp_path / "manifests"),
            "--listen-address", f"127.0.0.1:{port}", "--health-listen-address", f"127.0.0.1:{health}",
            "--web.config.file", str(config)]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = str(REPO)
    log_path = tmp_path / "exporter.log"
    with open(log_path, "ab") as log:
        process = spawn(argv, log, env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"the exporter exited:\n{log_path.read_text()}"
            try:
                with _NO_PROXY.open(f"http://127.0.0.1:{health}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"exporter not serving:\n{log_path.read_text()}"
            time.sleep(0.1)
        yield port, health
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def test_prometheus_scrapes_with_the_right_credentials_only(tmp_path: Path, pki: Pki,
                                                            exporter_process: tuple[int, int],
                                                            make_prometheus: Callable[..., Prometheus]) -> None:
    port, _ = exporter_process
    creds = tmp_path / "prometheus"
    creds.mkdir()
    server_ca = write_pem(creds, "exporter-ca.crt", pki.server_ca.cert_pem)
    client_cert, client_key = write_pem(creds, "tls.crt", pki.client.cert_pem), write_pem(
        creds, "tls.key", pki.client.key_pem)
    intruder_cert, intruder_key = write_pem(creds, "intruder.crt", pki.intruder.cert_pem), write_pem(
        creds, "intruder.key", pki.intruder.key_pem)
    (creds / "token").write_text(TOKEN)
    (creds / "wrong-token").write_text("not-the-token-0123456789abcdef")
    (creds / "password").write_text(PASSWORD)
    target = {"static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}

    def tls(cert: Path | None = client_cert, key: Path | None = client_key) -> dict[str, Any]:
        config: dict[str, Any] = {"ca_file": str(server_ca), "server_name": "localhost"}
        if cert is not None and key is not None:
            config.update(cert_file=str(cert), key_file=str(key))
        return {"scheme": "https", "tls_config": config}

    def token(name: str = "token") -> dict[str, Any]:
        return {"authorization": {"type": "Bearer", "credentials_file": str(creds / name)}}

    jobs: dict[str, tuple[dict[str, Any], int]] = {
        "basic-auth": ({**tls(), "basic_auth": {"username": "prometheus", "password_file": str(creds / "password")}},
                       1),
        "no-client-certificate": ({**tls(None, None), **token()}, 0),
        "intruder-certificate": ({**tls(intruder_cert, intruder_key), **token()}, 0),
        "no-credentials": (tls(), 0),
        "wrong-token": ({**tls(), **token("wrong-token")}, 0),
        "plain-http": ({}, 0),
    }
    prom = make_prometheus(exporter_port=port, rule_files=[], exporter_scrape={**tls(), **token()},
                           extra_scrape_configs=[{"job_name": job, **scrape, **target}
                                                 for job, (scrape, _) in jobs.items()])
    expected = {EXPORTER_JOB: 1, **{job: up for job, (_, up) in jobs.items()}}

    def every_job_scraped() -> dict[str, dict[str, Any]] | None:
        targets = {t["labels"]["job"]: t for t in prom.targets()}
        done = set(targets) >= set(expected) and all(targets[j]["health"] != "unknown" for j in expected)
        return targets if done else None

    targets = prom.wait_for(every_job_scraped, timeout_s=SCRAPED_WITHIN_S, what="every job scraped once",
                            every_s=0.2)
    up = {job: int(float(r["value"][1])) for r in prom.query("up") for job in [r["metric"]["job"]]}
    assert up == expected, {j: targets[j].get("lastError") for j in expected}
    errors = {job: targets[job]["lastError"] for job in expected}
    # Refused during the handshake: no HTTP status at all (Prometheus says EOF or connection reset).
    for job in ("no-client-certificate", "intruder-certificate", "plain-http"):
        assert errors[job] and "HTTP status" not in errors[job], errors[job]
    assert "401 Unauthorized" in errors["no-credentials"] and "401 Unauthorized" in errors["wrong-token"]
    assert errors[EXPORTER_JOB] == "" and errors["basic-auth"] == ""
    # What Prometheus stored from the authenticated scrape is the exporter's own /metrics.
    assert prom.query('admission_webhook_exporter_web_config_last_reload_successful{job="basic-auth"}')
