"""Many real TLS webhook backends in one process, for the benchmarks (run as a separate process so its CPU
is not counted as the prober's). Prints one JSON line {"ca_bundle": ..., "ports": [...]}, then serves until
stdin closes or --seconds pass (bounded: a benchmark never leaves servers behind)."""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys

from exporter.backend import WebhookBackend
from exporter.pki import CertificateAuthority


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--key", choices=["ecdsa", "rsa"], default="ecdsa")
    parser.add_argument("--seconds", type=float, default=900)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.count * 2 + 256)), hard))
    ca = CertificateAuthority.create("bench CA", key_type=args.key)
    serving = ca.issue(["127.0.0.1"], key_type=args.key)  # one certificate: issuing 5,000 keys is not the point
    backends = [await WebhookBackend(serving).start() for _ in range(args.count)]
    print(json.dumps({"ca_bundle": ca.ca_bundle, "ports": [b.port for b in backends]}), flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    await asyncio.wait([asyncio.ensure_future(stdin_closed)], timeout=args.seconds)
    for b in backends:
        await b.stop()


if __name__ == "__main__":
    asyncio.run(main())
