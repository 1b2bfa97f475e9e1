"""Graceful shutdown: SIGTERM stops a real `serve` process within a bounded time, cancelling probes in flight."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import yaml

from exporter.pki import CertificateAuthority, ServingCertificate
from tests import factories as f
from tests import hostile
from tests.conftest import Servers
from tests.helpers import eventually
from tests.servers import never_speak

REPO = Path(__file__).parent.parent


async def test_sigterm_stops_within_five_seconds_cancelling_in_flight_probes(
        servers: Servers, ca: CertificateAuthority, loopback_cert: ServingCertificate, tmp_path: Path) -> None:
    hanging = [await servers.raw(never_speak) for _ in range(3)]
    hanging.append(await servers.raw(hostile.trickle(1.0), serving=loopback_cert))
    hooks = [f.webhook(f"hang-{i}.example.com", f.url_client(s.port, ca.ca_bundle), timeout=30)
             for i, s in enumerate(hanging)]
    (tmp_path / "hooks.yaml").write_text(yaml.safe_dump(f.configuration("hanging", *hooks)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "serve", "--manifests", str(tmp_path), "--listen-address",
        "127.0.0.1:0", "--probe-interval", "60", cwd=str(REPO), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    stderr = b""
    try:
        while b"event=listening" not in stderr:
            stderr += await asyncio.wait_for(proc.stderr.readline(), 20)
        # every probe is in flight, 30 s from its deadline
        await eventually(lambda: all(s.connections for s in hanging), 20, "all probes in flight")
        await asyncio.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 10)
        code = await asyncio.wait_for(proc.wait(), 10)
        took = time.monotonic() - started
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = (stderr + rest).decode()
    assert code == 0, text
    assert took < 5.0, f"SIGTERM took {took:.2f}s"
    assert "event=stopping" in text and "Traceback" not in text, text
    assert "probe_failed" not in text  # cancelled, not reported as failures

