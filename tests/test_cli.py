"""The command line as an operator meets it: real processes, real backends, real HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from exporter.backend import Behaviour
from exporter.cli import main
from exporter.pki import CertificateAuthority
from tests import factories as f
from tests.cli import listening, ok_and_bad_webhook, run, write
from tests.conftest import Servers
from tests.servers import free_port, never_speak


async def test_check_exit_status_follows_fail_policy(tmp_path: Path, servers: Servers, ca: CertificateAuthority,
                                                     loopback_cert) -> None:
    ok = await servers.backend(loopback_cert)
    dead = await free_port()
    ignore_only = write(tmp_path / "ignore.yaml", f.configuration(
        "cfg", f.webhook("ok.example.com", f.url_client(ok.port, ca.ca_bundle)),
        f.webhook("dead.example.com", f.url_client(dead, ca.ca_bundle), policy="Ignore")))
    code, out, err = await run("check", "--manifests", str(ignore_only))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["WEBHOOK", "TYPE", "POLICY", "ENDPOINTS", "VERDICT", "REASON", "SERVED", "CERT",
                                "DAYS", "CABUNDLE", "DAYS", "LATENCY/TIMEOUT"]
    assert re.match(r"cfg/dead\.example\.com\s+validating\s+Ignore\s+-\s+down\s+connection_refused", lines[1])
    assert re.match(r"cfg/ok\.example\.com\s+validating\s+Fail\s+-\s+ok\s+-\s+365\s+365\s+0\.\d+s/5s", lines[2])

    fail = write(tmp_path / "fail.yaml", f.configuration(
        "cfg", f.webhook("dead.example.com", f.url_client(dead, ca.ca_bundle), policy="Fail")))
    code, out, _ = await run("check", "--manifests", str(fail), "--output", "json")
    assert code == 1
    (hook,) = json.loads(out)["webhooks"]
    assert (hook["name"], hook["verdict"], hook["reason"], hook["failure_policy"]) == \
        ("dead.example.com", "down", "connection_refused", "Fail")
    assert hook["endpoints"][0]["detail"] == f"dial tcp 127.0.0.1:{dead}: connect: connection refused"


async def test_bad_object_is_skipped_and_the_rest_probed(tmp_path: Path, servers: Servers,
                                                         ca: CertificateAuthority, loopback_cert) -> None:
    ok = await servers.backend(loopback_cert)
    path = write(tmp_path / "m.yaml", ok_and_bad_webhook(ok.port, ca.ca_bundle))
    code, out, err = await run("check", "--manifests", str(path))
    assert code == 1  # what was skipped was not checked: the gate fails
    assert "ok.example.com" in out and "bad.example.com" not in out
    assert err.splitlines()[0] == (f"skipped webhook 'bad.example.com' of ValidatingWebhookConfiguration cfg in "
                                   f"{path}: timeoutSeconds 99 is outside 1-30")


def test_usage_errors_are_one_line_exit_2(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cases = [
        (["serve", "--manifests", str(tmp_path), "--probe-interval", "0"],
         "argument --probe-interval: expected a number of seconds from 1 to 86400, got '0'"),
        (["check", "--kubeconfig", str(tmp_path / "none")], f"kubeconfig {tmp_path / 'none'}: no such file"),
        (["check", "--manifests", str(tmp_path), "--context", "prod"],
         "--manifests and --kubeconfig/--context are alternatives: pick one source"),
        (["check", "--manifests", str(tmp_path / "nope")], f"{tmp_path / 'nope'}: no such file or directory"),
        (["serve", "--manifests", str(tmp_path), "--listen-address", "nonsense"],
         "--listen-address 'nonsense': expected [host]:port"),
        (["frobnicate"], "argument command: invalid choice: 'frobnicate'"),
    ]
    (tmp_path / "broken.yaml").write_text("a: [")
    cases.append((["check", "--manifests", str(tmp_path / "broken.yaml")], None))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err.startswith("admission-webhook-exporter: error: ")
        if message is not None:
            assert message in err, err


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The exposition as {(name, labels): value}, parsed by prometheus_client's own parser."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(session: aiohttp.ClientSession, port: int, path: str = "/metrics") -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=5)) as r:
        return r.status, await r.text()


async def test_serve_exposes_verdicts_keeps_serving_while_backends_hang_and_stops_on_sigterm(
        tmp_path: Path, servers: Servers, ca: CertificateAuthority, loopback_cert) -> None:
    ok = await servers.backend(loopback_cert)
    slow = await servers.backend(loopback_cert, Behaviour(delay_seconds=30))
    mute = await servers.raw(never_speak)
    path = write(tmp_path / "m.yaml", f.configuration(
        "cfg", f.webhook("ok.example.com", f.url_client(ok.port, ca.ca_bundle)),
        f.webhook("slow.example.com", f.url_client(slow.port, ca.ca_bundle), timeout=3),
        f.webhook("mute.example.com", f.url_client(mute.port, ca.ca_bundle), timeout=3)))
    async with listening("serve", "--manifests", str(path), "--listen-address", "127.0.0.1:0", "--probe-interval",
                         "1", line_within=10) as (proc, line):
        assert proc.stderr is not None
        m = re.search(r"event=listening address=127\.0\.0\.1:(\d+)", line)
        assert m, line
        port = int(m.group(1))
        drain = asyncio.create_task(proc.stderr.read())
        async with aiohttp.ClientSession() as session:
            status, _ = await scrape(session, port, "/healthz")
            assert status == 200
            # While the two hanging backends hold their probes, scrapes answer at once.
            started = time.monotonic()
            status, text = await scrape(session, port)
            assert status == 200 and time.monotonic() - started < 1
            deadline = time.monotonic() + 10
            while (await scrape(session, port, "/readyz"))[0] != 200:
                assert time.monotonic() < deadline, "never ready"
                await asyncio.sleep(0.2)
            _, text = await scrape(session, port)
        got = samples(text)

        def sample(metric: str, port_: int, name: str, **extra: str) -> float | None:
            return got.get((metric, frozenset({"configuration": "cfg", "name": name, "type": "validating",
                                               "endpoint": f"127.0.0.1:{port_}", **extra}.items())))

        assert sample("admission_webhook_probe_success", ok.port, "ok.example.com") == 1
        for port_, name in ((slow.port, "slow.example.com"), (mute.port, "mute.example.com")):
            assert sample("admission_webhook_probe_success", port_, name) == 0
            assert sample("admission_webhook_probe_failure_info", port_, name, reason="timeout") == 1
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 6) == 0
        assert time.monotonic() - started < 5
        log = (await drain).decode()
        assert "event=stopping" in log and "Traceback" not in log


async def test_demo_runs_on_a_fresh_machine() -> None:
    code, out, err = await run("demo", "--listen-address", "127.0.0.1:0", "--duration", "1", limit=60)
    assert code == 0, err
    verdicts = {m.group(1): (m.group(2), m.group(3))
                for m in re.finditer(r"^demo-\w+/(\S+)\s+\S+\s+\S+\s+\S+\s+(\S+)\s+(\S+)", out, re.M)}
    assert verdicts == {
        "defaults.demo.example.com": ("ok", "-"),
        "ca-drift.demo.example.com": ("down", "x509_unknown_authority"),
        "down.demo.example.com": ("down", "connection_refused"),
        "expiring-cert.demo.example.com": ("ok", "-"),
        "healthy.demo.example.com": ("ok", "-"),
        "no-endpoints.demo.example.com": ("down", "no_endpoints"),
        "service.demo.example.com": ("ok", "-"),
        "slow.demo.example.com": ("down", "timeout"),
    }
    assert "Metrics:       http://127.0.0.1:" in out


def test_the_canary_interval_default_is_the_canarys() -> None:
    """The parser states the canary's default itself, so `--help` does not load the canary (and aiohttp)."""
    from exporter import canary, cli

    assert cli.CANARY_DEFAULT_INTERVAL == canary.DEFAULT_INTERVAL
