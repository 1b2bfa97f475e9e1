#!/usr/bin/env python3
"""An admission webhook backend for the test node's Pods: HTTPS, answers every AdmissionReview with allowed.

    python3 webhook_server.py --cert /tls/tls.crt --key /tls/tls.key [--port 8443]

Mounted from a ConfigMap into the Debian python base image (tests/image/build.sh), so it uses the standard
library only. ``GET /healthz`` answers 200 (the readiness probe); any POST is an AdmissionReview whose
response carries the request's uid. One JSON line per request on stdout; SIGTERM exits at once.
"""

from __future__ import annotations

import argparse
import json
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.request.settimeout(10)
        super().setup()

    def do_GET(self) -> None:
        self._send(200 if self.path == "/healthz" else 404, b"ok\n" if self.path == "/healthz" else b"")

    def do_POST(self) -> None:
        try:
            review = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            req = review["request"]
        except (ValueError, KeyError, TypeError):
            self._send(400, b"bad AdmissionReview\n")
            return
        self._log(path=self.path, uid=req.get("uid"), kind=(req.get("kind") or {}).get("kind"),
                  namespace=req.get("namespace"), operation=req.get("operation"), dry_run=req.get("dryRun"))
        out = {"apiVersion": review.get("apiVersion", "admission.k8s.io/v1"), "kind": "AdmissionReview",
               "response": {"uid": req.get("uid"), "allowed": True}}
        self._send(200, json.dumps(out).encode(), "application/json")

    def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _log(self, **fields: Any) -> None:
        print(json.dumps({"t": round(time.time(), 3), "event": "review", **fields}), flush=True)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--port", type=int, default=8443)
    a = ap.parse_args(argv)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    srv = ThreadingHTTPServer(("0.0.0.0", a.port), Handler)
    srv.daemon_threads = True
    # handshake in the handler thread: one stalled client must not block accept()
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(json.dumps({"t": round(time.time(), 3), "event": "listening", "port": a.port}), flush=True)
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
