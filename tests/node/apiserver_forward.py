#!/usr/bin/env python3
"""Forward TCP from the ``kubernetes`` ClusterIP to the loopback kube-apiserver, for the test node's Pods.

    apiserver_forward.py --listen 10.0.0.1:443 --to 127.0.0.1:PORT

Why: in-cluster clients (the exporter in its Pod) dial ``KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT``,
the ClusterIP of ``default/kubernetes`` (10.0.0.1:443), while the test apiserver listens on 127.0.0.1 only.
The node harness routes what Pods send to 10.0.0.1 to this host (a policy route for packets from the pod
bridge only), and this process accepts it. It binds 10.0.0.1 with IP_TRANSPARENT: the address is on no
interface, so nothing else on the machine can reach it, and it dials only the one loopback port it is given.
The apiserver's certificate has 10.0.0.1 among its SANs, so TLS verifies end to end; bytes are copied as
they are. No kube-proxy, no NAT.

Standard library only. One JSON line on stderr per refused upstream dial; connections are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from collections.abc import Sequence

IP_TRANSPARENT = 19  # linux/in.h; accept for an address that is on no interface (needs CAP_NET_ADMIN)
DIAL_TIMEOUT_S = 5.0
MAX_CONNS = 256


def host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    slots = asyncio.Semaphore(MAX_CONNS)

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        async with slots:
            try:
                ur, uw = await asyncio.wait_for(asyncio.open_connection(*upstream), DIAL_TIMEOUT_S)
            except (TimeoutError, OSError) as e:
                print(json.dumps({"t": round(time.time(), 3), "event": "dial_failed", "error": str(e)}),
                      file=sys.stderr, flush=True)
                cw.close()
                return
            await asyncio.gather(pump(cr, uw), pump(ur, cw))

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    sock.bind(listen)
    server = await asyncio.start_server(handle, sock=sock, backlog=128)
    print(json.dumps({"t": round(time.time(), 3), "event": "listening", "listen": f"{listen[0]}:{listen[1]}",
                      "upstream": f"{upstream[0]}:{upstream[1]}"}), file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT to accept on (the kubernetes ClusterIP)")
    ap.add_argument("--to", required=True, help="127.0.0.1:PORT of the apiserver")
    a = ap.parse_args(argv)
    upstream = host_port(a.to)
    if not upstream[0].startswith("127."):
        ap.error("--to must be a loopback address")
    asyncio.run(serve(host_port(a.listen), upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
