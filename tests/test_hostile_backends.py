"""Hostile backends: each gives exactly one verdict, the probe ends within its deadline, memory stays bounded,
and the other targets keep their schedule meanwhile.

Backends are real servers on 127.0.0.1 (`tests.hostile`), probed by the real prober.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from exporter.pki import CertificateAuthority, ServingCertificate
from exporter.probe import MAX_BODY_BYTES, ProbeResult, probe
from exporter.reasons import Reason
from exporter.results import ResultStore
from exporter.scheduler import ProbeScheduler
from exporter.targets import Target
from tests import factories as f
from tests import hostile
from tests.conftest import Servers
from tests.helpers import ManualClock, eventually, only_plan, plans_of
from tests.servers import Handler, never_speak, plain_http

MEMORY_BOUND = 20 * hostile.MiB  # per probe: a hostile peer must not make us hold much more than a response
DEADLINE_MARGIN = 0.5  # seconds past timeoutSeconds a probe may take to be torn down


@dataclass(frozen=True)
class Hostile:
    """One misbehaving backend and the single verdict the probe must reach against it."""

    handler: Handler | None  # None: a well-behaved WebhookBackend serving `cert`
    cert: str  # "none" (raw TCP), "leaf", "chain50" or "huge"
    reason: Reason | None
    detail: str  # exactly


TIMEOUT = 2  # the hostile webhooks' timeoutSeconds
BIG = 100 * hostile.MiB

HOSTILE: dict[str, Hostile] = {
    "accepts, never speaks": Hostile(never_speak, "none", Reason.TIMEOUT,
                                     f"context deadline exceeded (no answer within {TIMEOUT}s)"),
    "TLS, then one byte per second": Hostile(hostile.trickle(1.0), "leaf", Reason.TIMEOUT,
                                             f"context deadline exceeded (no answer within {TIMEOUT}s)"),
    "100 MB body, Content-Length": Hostile(hostile.huge_body("content-length", BIG), "leaf", Reason.HTTP_ERROR,
                                           f"response body of {BIG} bytes, larger than {MAX_BODY_BYTES}"),
    "100 MB body, chunked": Hostile(hostile.huge_body("chunked", BIG), "leaf", Reason.HTTP_ERROR,
                                    f"response body larger than {MAX_BODY_BYTES} bytes"),
    "100 MB body, until close": Hostile(hostile.huge_body("close", BIG), "leaf", Reason.HTTP_ERROR,
                                        f"response body larger than {MAX_BODY_BYTES} bytes"),
    "reset mid-handshake": Hostile(hostile.reset_mid_handshake, "none", Reason.TLS_HANDSHAKE,
                                   "read: connection reset by peer"),
    # Go verifies a chain of any depth (no limit short of 100 signature checks), and so does OpenSSL (100):
    # the apiserver would call this webhook successfully, so must we.
    "50-certificate chain": Hostile(None, "chain50", None, ""),
    # Go refuses a Certificate message over 256 KiB, OpenSSL over 100 KiB: both fail the handshake.
    "1 MB certificate": Hostile(None, "huge", Reason.TLS_HANDSHAKE, "tls: EXCESSIVE_MESSAGE_SIZE"),
    "plain HTTP": Hostile(plain_http, "none", Reason.TLS_HANDSHAKE,
                          "http: server gave HTTP response to HTTPS client"),  # Go's words for it
    "closes after the headers": Hostile(hostile.close_after_headers, "leaf", Reason.HTTP_ERROR,
                                        "connection closed before a full response: 0 bytes read on a total of "
                                        "1000 expected bytes"),
}


@pytest.fixture(scope="module")
def certs(ca: CertificateAuthority, loopback_cert: ServingCertificate) -> dict[str, ServingCertificate]:
    return {"leaf": loopback_cert, "chain50": hostile.long_chain(ca, ["127.0.0.1"], length=50),
            "huge": hostile.huge_certificate(ca, ["127.0.0.1"], size=hostile.MiB)}


async def start_hostile(servers: Servers, case: Hostile, certs: dict[str, ServingCertificate]) -> int:
    serving = None if case.cert == "none" else certs[case.cert]
    if case.handler is None:
        assert serving is not None
        return (await servers.backend(serving)).port
    return (await servers.raw(case.handler, serving=serving)).port


def hook_for(name: str, port: int, ca: CertificateAuthority) -> dict[str, Any]:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f.webhook(f"{slug}.example.com", f.url_client(port, ca.ca_bundle), timeout=TIMEOUT)


def assert_verdict(case: Hostile, result: ProbeResult) -> None:
    assert result.reason is case.reason, (result.reason, result.detail)
    assert result.success is (case.reason is None)
    assert result.detail == case.detail


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_backend_gets_one_verdict_within_deadline_and_bounded_memory(
        name: str, servers: Servers, ca: CertificateAuthority, certs: dict[str, ServingCertificate]) -> None:
    case = HOSTILE[name]
    port = await start_hostile(servers, case, certs)
    (target,) = only_plan(f.configuration("hostile", hook_for(name, port, ca))).targets
    started = time.monotonic()
    result, memory = await hostile.measure_memory(probe(target))
    elapsed = time.monotonic() - started
    assert_verdict(case, result)
    assert elapsed < TIMEOUT + DEADLINE_MARGIN, f"{name}: probe took {elapsed:.2f}s"
    if case.reason is Reason.TIMEOUT:
        assert elapsed >= TIMEOUT
    assert memory.peak_traced < MEMORY_BOUND, f"{name}: Python heap peak {memory.peak_traced / hostile.MiB:.1f} MiB"
    assert memory.rss_growth < MEMORY_BOUND, f"{name}: RSS grew {memory.rss_growth / hostile.MiB:.1f} MiB"



HANG_TIMEOUT = 30  # the hanging backends' timeoutSeconds here (the API's maximum): far longer than the rounds take
ROUND_LIMIT = 30.0  # seconds of real time one round may take on a loaded machine: a bound, not a measure


async def test_healthy_target_keeps_its_schedule_while_hostile_probes_hang(
        servers: Servers, ca: CertificateAuthority, certs: dict[str, ServingCertificate]) -> None:
    """Every hostile backend at once, and one healthy one, on a scheduler whose clock only the test moves.

    Each interval the test lets pass, the healthy target is probed again, exactly on schedule in the
    scheduler's time, while the backends that never answer are still holding their probes open: nothing a
    hostile probe does delays another target's turn. The other hostile cases meanwhile reach their verdicts.
    A property, not a timing: a loaded machine slows every step alike and cannot make it fail.
    """
    interval, rounds = 0.5, 5
    healthy = await servers.backend(certs["leaf"])
    hooks = [f.webhook("healthy.example.com", f.url_client(healthy.port, ca.ca_bundle), timeout=TIMEOUT)]
    expected: dict[str, Hostile] = {}
    for name, case in HOSTILE.items():
        hook = hook_for(name, await start_hostile(servers, case, certs), ca)
        if case.reason is Reason.TIMEOUT:
            hook["timeoutSeconds"] = HANG_TIMEOUT
        hooks.append(hook)
        expected[hook["name"]] = case
    hanging = {n for n, case in expected.items() if case.reason is Reason.TIMEOUT}
    plans = plans_of(f.configuration("mixed", *hooks))
    assert hanging and all(p.targets for p in plans), "every backend probed, some of them never answering"
    clock, started, in_flight = ManualClock(), Counter[str](), set[str]()

    async def recording(target: Target) -> ProbeResult:
        name = target.key.webhook.name
        started[name] += 1
        in_flight.add(name)
        try:
            return await probe(target)
        finally:
            in_flight.discard(name)

    results = ResultStore()
    scheduler = ProbeScheduler(results=results, probe_fn=recording, interval=interval, jitter=0.0,
                               clock=clock.now, sleep=clock.sleep)
    healthy_key = next(t.key for p in plans if p.key.name == "healthy.example.com" for t in p.targets)
    rss0 = hostile.rss_bytes()
    scheduler.update(plans)
    try:
        await eventually(lambda: healthy_key in scheduler.due(), ROUND_LIMIT, "healthy probe 1 done")
        first = scheduler.due()[healthy_key]  # its slot: within one interval after the first, spread with the rest
        assert interval <= first < 2 * interval
        for k in range(1, rounds + 1):
            slot = first + (k - 1) * interval
            await eventually(lambda slot=slot: scheduler.due().get(healthy_key) == slot, ROUND_LIMIT,  # type: ignore[misc]
                             f"healthy probe {k} done")
            assert started["healthy.example.com"] == k
            assert hanging <= in_flight, f"round {k}: a hanging probe ended early: {hanging - in_flight}"
            clock.advance(slot - clock.now())
        quick = [p for p in plans if p.key.name not in hanging]
        await eventually(lambda: all(results.get(t.key) is not None for p in quick for t in p.targets), ROUND_LIMIT,
                         "every answering backend judged")
        snapshot = results.snapshot()
        assert all(started[n] == 1 and n in in_flight for n in hanging), "each hanging probe still in its first try"
    finally:
        await scheduler.close()
    assert not in_flight, "closing the scheduler cancels the probes in flight"
    assert snapshot[healthy_key].success
    for plan in quick:
        if plan.key.name != "healthy.example.com":
            (target,) = plan.targets
            assert_verdict(expected[plan.key.name], snapshot[target.key])
            assert snapshot[target.key].duration_seconds < TIMEOUT + DEADLINE_MARGIN
    assert hostile.rss_bytes() - rss0 < 2 * MEMORY_BOUND
