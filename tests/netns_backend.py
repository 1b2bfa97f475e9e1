"""A webhook backend to run inside a test network namespace (`ip netns exec NS python -m tests.netns_backend`).

EndpointSlice validation rejects loopback addresses, so service-backed webhooks in the control-plane tests
point at an address inside a namespace the test made; this is the process that answers there: exporter's
`WebhookBackend`. It exits by itself after --seconds (bounded), on SIGTERM, or when its parent test kills the
namespace. `--calls-file` gets each AdmissionReview received as a JSON line, for the test to read.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from exporter.backend import Behaviour, WebhookBackend
from exporter.pki import ServingCertificate


def command(host: str, port: int, cert: Path, key: Path, *, calls_file: Path | None = None, allowed: bool = True,
            seconds: float = 600) -> list[str]:
    """The argv that runs this backend (from the repository root, e.g. through `NetNamespace.popen`)."""
    argv = [sys.executable, "-m", "tests.netns_backend", "--host", host, "--port", str(port), "--cert", str(cert),
            "--key", str(key), "--seconds", str(seconds)]
    if calls_file is not None:
        argv += ["--calls-file", str(calls_file)]
    return argv + ([] if allowed else ["--deny"])


async def serve(backend: WebhookBackend, seconds: float) -> None:
    await backend.start()
    print(f"listening {backend.host}:{backend.port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
    finally:
        await backend.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.netns_backend")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--calls-file", type=Path)
    parser.add_argument("--deny", action="store_true", help="deny every request (a 403 with a message)")
    args = parser.parse_args(argv)
    pem = args.cert.read_bytes()
    serving = ServingCertificate(cert=x509.load_pem_x509_certificate(pem), cert_pem=pem,
                                 key_pem=args.key.read_bytes())
    backend = WebhookBackend(serving, behaviour=Behaviour(allowed=not args.deny), host=args.host, port=args.port,
                             calls_file=args.calls_file)
    asyncio.run(serve(backend, args.seconds))


if __name__ == "__main__":
    main()
