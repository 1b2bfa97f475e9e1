"""The probe schedule, deterministic: the scheduler runs on a `ManualClock`, real probes of a real loopback
backend run on the event loop, and the test alone decides when an interval has passed."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from exporter.pki import CertificateAuthority, ServingCertificate
from exporter.probe import ProbeResult, probe
from exporter.results import ResultStore
from exporter.scheduler import ProbeScheduler
from exporter.targets import Target, TargetKey, WebhookPlan
from tests import factories as f
from tests.conftest import Servers
from tests.helpers import ManualClock, eventually, plans_of

WITHIN = 20.0  # seconds of real time a loopback probe may take on a loaded machine: a bound, not a measure


@dataclass
class Scheduled:
    scheduler: ProbeScheduler
    clock: ManualClock
    results: ResultStore
    probes: Counter[str]  # probes started, by webhook name


@pytest.fixture
async def scheduled() -> AsyncIterator[Scheduled]:
    """A scheduler on a manual clock, interval 30 s, no jitter, counting the probes it starts."""
    clock, results, probes = ManualClock(), ResultStore(), Counter[str]()

    async def counting(target: Target) -> ProbeResult:
        probes[target.key.webhook.name] += 1
        return await probe(target)

    scheduler = ProbeScheduler(results=results, probe_fn=counting, interval=30.0, jitter=0.0, clock=clock.now,
                               sleep=clock.sleep)
    yield Scheduled(scheduler, clock, results, probes)
    await scheduler.close()


async def backend(servers: Servers, cert: ServingCertificate) -> int:
    return (await servers.backend(cert)).port


def hooks(port: int, ca: CertificateAuthority, *names: str, timeout: int = 5) -> tuple[WebhookPlan, ...]:
    return plans_of(f.configuration("sched", *(f.webhook(n, f.url_client(port, ca.ca_bundle), timeout=timeout)
                                               for n in names)))


def key_of(plans: tuple[WebhookPlan, ...], name: str) -> TargetKey:
    (target,) = next(p for p in plans if p.key.name == name).targets
    return target.key


async def test_probed_at_once_then_one_interval_after_each_probe(
        scheduled: Scheduled, servers: Servers, ca: CertificateAuthority, loopback_cert: ServingCertificate) -> None:
    plans = hooks(await backend(servers, loopback_cert), ca, "a.example.com")
    key, s = key_of(plans, "a.example.com"), scheduled
    s.scheduler.update(plans)
    await eventually(lambda: key in s.scheduler.due(), WITHIN, "the first probe done")
    result = s.results.get(key)
    assert s.probes["a.example.com"] == 1 and result is not None and result.success, result
    assert s.scheduler.first_round_done
    assert s.scheduler.due() == {key: 30.0}
    s.clock.advance(29.999)
    assert s.clock.sleeping == 1, "woken before its interval"  # advance() wakes synchronously: no race
    s.clock.advance(0.001)
    await eventually(lambda: s.scheduler.due().get(key) == 60.0, WITHIN, "the second probe done")
    assert s.probes["a.example.com"] == 2
    assert s.clock.requested == [30.0, 30.0]


async def test_jitter_keeps_every_wait_within_its_bounds(
        servers: Servers, ca: CertificateAuthority, loopback_cert: ServingCertificate) -> None:
    clock, names = ManualClock(), [f"j{i}.example.com" for i in range(4)]
    plans = hooks(await backend(servers, loopback_cert), ca, *names)
    scheduler = ProbeScheduler(results=ResultStore(), interval=10.0, jitter=0.1, clock=clock.now, sleep=clock.sleep)
    try:
        scheduler.update(plans)
        for rounds in (1, 2, 3):
            await eventually(lambda r=rounds: len(clock.requested) == 4 * r, WITHIN, f"round {rounds}")  # type: ignore[misc]
            clock.advance(11.0)  # the longest a jittered wait can be
    finally:
        await scheduler.close()
    assert all(9.0 <= wait <= 11.0 for wait in clock.requested), clock.requested
    assert len(set(clock.requested)) > 1, "jitter spreads targets that started together"


async def test_a_changed_target_is_probed_at_once_the_others_keep_their_schedule(
        scheduled: Scheduled, servers: Servers, ca: CertificateAuthority, loopback_cert: ServingCertificate) -> None:
    s, port = scheduled, await backend(servers, loopback_cert)
    plans = hooks(port, ca, "same.example.com", "changed.example.com")
    same, changed = key_of(plans, "same.example.com"), key_of(plans, "changed.example.com")
    s.scheduler.update(plans)
    await eventually(lambda: len(s.scheduler.due()) == 2, WITHIN, "first round")
    s.clock.advance(10.0)
    edited = hooks(port, ca, "changed.example.com", timeout=7)  # same endpoint, another timeoutSeconds
    assert key_of(edited, "changed.example.com") == changed
    s.scheduler.update((*(p for p in plans if p.key.name == "same.example.com"), *edited))
    await eventually(lambda: s.scheduler.due().get(changed) == 40.0, WITHIN, "the changed target probed at once")
    assert s.probes == {"same.example.com": 1, "changed.example.com": 2}
    assert s.scheduler.due()[same] == 30.0, "the unchanged target keeps its schedule"
    assert s.scheduler.targets[changed].timeout_seconds == 7
