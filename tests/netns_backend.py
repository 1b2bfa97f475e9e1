"""A webhook backend to run inside a test network namespace (`ip netns exec NS python -m tests.netns_backend`).

EndpointSlice validation rejects loopback addresses, so service-backed webhooks in the control-plane tests
point at an address inside a namespace the test made; this is the process that answers there. It exits by
itself after --seconds (bounded), or when its parent test kills the namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from exporter.backend import WebhookBackend
from exporter.pki import ServingCertificate


async def serve(serving: ServingCertificate, host: str, port: int, seconds: float) -> None:
    backend = await WebhookBackend(serving, host=host, port=port).start()
    print(f"listening {host}:{backend.port}", flush=True)
    await asyncio.sleep(seconds)
    await backend.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()
    from cryptography import x509

    pem = Path(args.cert).read_bytes()
    serving = ServingCertificate(cert=x509.load_pem_x509_certificate(pem), cert_pem=pem,
                                 key_pem=Path(args.key).read_bytes())
    asyncio.run(serve(serving, args.host, args.port, args.seconds))


if __name__ == "__main__":
    sys.exit(main())
