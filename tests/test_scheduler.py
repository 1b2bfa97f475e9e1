"""The probe schedule, deterministic: the scheduler runs on a `ManualClock`, real probes of a real loopback
backend run on the event loop, and the test alone decides when an interval has passed."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from exporter.pki import CertificateAuthority, ServingCertificate
from exporter.probe import ProbeResult, probe
from exporter.results import ResultStore
from exporter.scheduler import FairLimiter, ProbeScheduler
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


async def test_probed_at_once_then_once_per_interval(
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


async def advance_to_next(clock: ManualClock, scheduler: ProbeScheduler, dues: dict[TargetKey, list[float]]) -> None:
    """Move the clock to the earliest due probe and wait until that target is due again; record its new slot."""
    due = scheduler.due()
    key = min(due, key=lambda k: due[k])
    clock.advance(due[key] - clock.now())
    await eventually(lambda: scheduler.due().get(key, due[key]) > due[key], WITHIN, f"{key.webhook.name} probed")
    dues.setdefault(key, [due[key]]).append(scheduler.due()[key])


async def four_targets_for_four_rounds(port: int, ca: CertificateAuthority, prefix: str, jitter: float
                                      ) -> tuple[list[float], list[list[float]]]:
    """Four targets (``<prefix><i>.example.com``) adopted at once by a scheduler (interval 10 s, ``jitter``) on a
    manual clock, which moves to each next due probe for three more rounds: each target's first slot, and every
    slot it was given."""
    clock, names = ManualClock(), [f"{prefix}{i}.example.com" for i in range(4)]
    plans = hooks(port, ca, *names)
    keys = [key_of(plans, n) for n in names]
    scheduler = ProbeScheduler(results=ResultStore(), interval=10.0, jitter=jitter, clock=clock.now,
                               sleep=clock.sleep)
    dues: dict[TargetKey, list[float]] = {}
    try:
        scheduler.update(plans)
        await eventually(lambda: len(scheduler.due()) == 4, WITHIN, "first round, all at once")
        first = [scheduler.due()[k] for k in keys]
        for _ in range(3 * len(keys)):
            await advance_to_next(clock, scheduler, dues)
    finally:
        await scheduler.close()
    return first, [dues[k] for k in keys]


async def test_targets_added_together_are_spread_over_the_interval_then_probed_once_per_interval(
        servers: Servers, ca: CertificateAuthority, loopback_cert: ServingCertificate) -> None:
    """A thousand endpoints adopted at once must not probe in one burst per interval: their slots are spread."""
    first, slots = await four_targets_for_four_rounds(await backend(servers, loopback_cert), ca, "s", jitter=0.0)
    assert first == [10.0, 12.5, 15.0, 17.5]
    assert slots == [[at + 10.0 * r for r in range(4)] for at in (10.0, 12.5, 15.0, 17.5)]


async def test_jitter_shifts_each_grid_once_and_every_gap_stays_one_interval(
        servers: Servers, ca: CertificateAuthority, loopback_cert: ServingCertificate) -> None:
    first, slots = await four_targets_for_four_rounds(await backend(servers, loopback_cert), ca, "j", jitter=0.1)
    for i, at in enumerate(first):
        assert 10.0 + 2.5 * i <= at <= 10.0 + 2.5 * i + 1.0, (i, at)  # spread, shifted by at most 10%
    assert len(set(first)) == 4
    for given in slots:
        assert all(b - a == pytest.approx(10.0) for a, b in itertools.pairwise(given)), given


async def test_a_probe_that_overruns_its_slots_skips_them(
        servers: Servers, ca: CertificateAuthority, loopback_cert: ServingCertificate) -> None:
    """One probe per target at a time: a slow probe's missed slots are skipped, the grid is kept."""
    clock, gate, started = ManualClock(), asyncio.Event(), Counter[str]()
    plans = hooks(await backend(servers, loopback_cert), ca, "slow.example.com")
    key = key_of(plans, "slow.example.com")

    async def second_waits(target: Target) -> ProbeResult:
        started[target.key.endpoint] += 1
        if started[target.key.endpoint] == 2:
            await gate.wait()  # the test's clock runs on meanwhile: this probe takes 25 s of scheduler time
        return await probe(target)

    scheduler = ProbeScheduler(results=ResultStore(), probe_fn=second_waits, interval=10.0, jitter=0.0,
                               clock=clock.now, sleep=clock.sleep)
    try:
        scheduler.update(plans)
        await eventually(lambda: scheduler.due().get(key) == 10.0, WITHIN, "first probe")
        clock.advance(10.0)
        await eventually(lambda: key not in scheduler.due(), WITHIN, "second probe started")
        clock.advance(25.0)  # slots 20 and 30 pass while it runs
        assert clock.sleeping == 0 and sum(started.values()) == 2, "no second probe of the same target meanwhile"
        gate.set()
        await eventually(lambda: key in scheduler.due(), WITHIN, "second probe done")
    finally:
        await scheduler.close()
    assert scheduler_due_was(clock, 40.0)


def scheduler_due_was(clock: ManualClock, slot: float) -> bool:
    """The last wait asked for ends at `slot` (the probe ended at the clock's present time)."""
    return clock.now() + clock.requested[-1] == slot


# -- fairness: each webhook its own share of the pool -------------------------------------------------------
async def test_a_key_at_its_share_waits_and_others_still_get_places() -> None:
    limiter = FairLimiter(4, 2)
    await limiter.acquire("a")
    await limiter.acquire("a")
    third = asyncio.create_task(limiter.acquire("a"))
    await asyncio.sleep(0)
    await limiter.acquire("b")  # at once: "a" holds only its share, and there is room
    assert not third.done()
    assert limiter.held() == {"a": 2, "b": 1} and limiter.waiting() == {"a": 1}
    limiter.release("b")
    assert not third.done(), "a place freed by another key does not lift a key's share"
    limiter.release("a")
    await third
    assert limiter.held() == {"a": 2} and limiter.waiting() == {}


async def test_a_freed_place_goes_to_the_waiting_key_holding_fewest_in_turn() -> None:
    limiter, granted = FairLimiter(3, 3), list[str]()
    for _ in range(3):
        await limiter.acquire("a")

    async def wait(key: str) -> None:
        await limiter.acquire(key)
        granted.append(key)

    tasks = [asyncio.create_task(wait(k)) for k in ("a", "a", "b", "c")]
    await asyncio.sleep(0)
    assert limiter.waiting() == {"a": 2, "b": 1, "c": 1}
    for _ in range(3):
        limiter.release("a")
        await asyncio.sleep(0)
    assert granted == ["b", "c", "a"], "the keys holding none first, in the order they came; then the crowded one"
    assert limiter.held() == {"b": 1, "c": 1, "a": 1} and limiter.waiting() == {"a": 1}
    for key in ("b", "c", "a"):
        limiter.release(key)
    await asyncio.gather(*tasks)
    assert granted == ["b", "c", "a", "a"]


async def test_a_cancelled_waiter_gives_its_turn_away_and_a_granted_one_gives_its_place_back() -> None:
    limiter = FairLimiter(1, 1)
    await limiter.acquire("a")
    b, c = asyncio.create_task(limiter.acquire("b")), asyncio.create_task(limiter.acquire("c"))
    await asyncio.sleep(0)
    b.cancel()
    limiter.release("a")
    await c
    assert b.cancelled() and limiter.held() == {"c": 1} and limiter.waiting() == {}
    d = asyncio.create_task(limiter.acquire("d"))
    await asyncio.sleep(0)
    limiter.release("c")  # the place goes to d, which is cancelled before it runs: it must hand the place back
    d.cancel()
    await asyncio.gather(d, return_exceptions=True)
    assert limiter.held() == {} and limiter.waiting() == {}
    await limiter.acquire("e")
    assert limiter.held() == {"e": 1}
    limiter.release("e")


class BlackHoles:
    """Listening sockets on 127.0.0.2, 127.0.0.3, ... (one port), never accepted from: a connection may complete
    into the accept queue and then hear nothing, and once the queue is full further SYNs are dropped."""

    def __init__(self, count: int) -> None:
        self.addresses = [f"127.0.0.{2 + i}" for i in range(count)]
        self.sockets: list[socket.socket] = []
        first = self._listen(self.addresses[0], 0)
        self.port = int(first.getsockname()[1])
        for address in self.addresses[1:]:
            self._listen(address, self.port)

    def _listen(self, address: str, port: int) -> socket.socket:
        s = socket.socket()
        self.sockets.append(s)
        s.bind((address, port))
        s.listen(0)
        return s

    def close(self) -> None:
        for s in self.sockets:
            s.close()


async def test_a_webhook_whose_endpoints_hang_holds_only_its_share(
        servers: Servers, ca: CertificateAuthority, loopback_cert: ServingCertificate) -> None:
    """One webhook's six endpoints never answer (30 s timeout) on a pool of 4, 2 per webhook: the hanging
    webhook holds its 2 places, its other endpoints wait for them, and the healthy webhooks are probed at
    every one of their slots. With one shared pool the hanging probes would take all 4 places."""
    holes = BlackHoles(6)
    try:
        port = await backend(servers, loopback_cert)
        plans = plans_of(
            f.configuration("fair", f.webhook("hanging.example.com", f.service_client("ns", "hang", ca.ca_bundle),
                                              timeout=30),
                            *(f.webhook(n, f.url_client(port, ca.ca_bundle)) for n in ("h1.example.com",
                                                                                       "h2.example.com"))),
            f.service("ns", "hang", [{"name": "https", "port": 443, "targetPort": holes.port}]),
            f.endpoint_slice("ns", "hang", [{"name": "https", "port": holes.port}],
                             [(a, True) for a in holes.addresses]))
        hanging = next(p.key for p in plans if p.key.name == "hanging.example.com")
        healthy = [key_of(plans, n) for n in ("h1.example.com", "h2.example.com")]
        clock, started = ManualClock(), Counter[str]()

        async def counting(target: Target) -> ProbeResult:
            started[target.key.webhook.name] += 1
            return await probe(target)

        scheduler = ProbeScheduler(results=ResultStore(), probe_fn=counting, concurrency=4, per_webhook=2,
                                   interval=1.0, jitter=0.0, clock=clock.now, sleep=clock.sleep)
        dues: dict[TargetKey, list[float]] = {}
        try:
            scheduler.update(plans)
            await eventually(lambda: all(k in scheduler.due() for k in healthy), WITHIN, "healthy first round")
            for _ in range(3 * len(healthy)):
                await advance_to_next(clock, scheduler, dues)
                assert scheduler.limiter.held().get(hanging) == 2, scheduler.limiter.held()
                assert scheduler.limiter.waiting().get(hanging) == 4, scheduler.limiter.waiting()
        finally:
            await scheduler.close()
    finally:
        holes.close()
    assert set(dues) == set(healthy), "only the healthy webhooks came due: the hanging probes are still in flight"
    for key in healthy:
        assert all(b - a == pytest.approx(1.0) for a, b in itertools.pairwise(dues[key])), dues[key]
    assert started["h1.example.com"] == started["h2.example.com"] == 4
    assert started["hanging.example.com"] == 2, "the others wait for the webhook's own places"


async def test_a_changed_target_is_probed_at_once_the_others_keep_their_schedule(
        scheduled: Scheduled, servers: Servers, ca: CertificateAuthority, loopback_cert: ServingCertificate) -> None:
    s, port = scheduled, await backend(servers, loopback_cert)
    plans = hooks(port, ca, "same.example.com", "changed.example.com")
    same, changed = key_of(plans, "same.example.com"), key_of(plans, "changed.example.com")
    s.scheduler.update(plans)
    await eventually(lambda: len(s.scheduler.due()) == 2, WITHIN, "first round")
    assert sorted(s.scheduler.due().values()) == [30.0, 45.0], "slots spread over the interval"
    same_slot = s.scheduler.due()[same]
    s.clock.advance(10.0)
    edited = hooks(port, ca, "changed.example.com", timeout=7)  # same endpoint, another timeoutSeconds
    assert key_of(edited, "changed.example.com") == changed
    s.scheduler.update((*(p for p in plans if p.key.name == "same.example.com"), *edited))
    await eventually(lambda: s.scheduler.due().get(changed) == 40.0, WITHIN, "the changed target probed at once")
    assert s.probes == {"same.example.com": 1, "changed.example.com": 2}
    assert s.scheduler.due()[same] == same_slot, "the unchanged target keeps its schedule"
    assert s.scheduler.targets[changed].timeout_seconds == 7
