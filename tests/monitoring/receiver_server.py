"""The test's Alertmanager webhook receiver: the program the receiver Pod runs (standard library only).

Alertmanager POSTs each notification (its webhook payload: ``status``, ``alerts`` with labels, annotations,
``startsAt``/``endsAt``) to ``/``; the receiver keeps them in memory, in arrival order, and answers
``GET /notifications`` with the list (``[{"received_at": <unix time>, "body": <payload>}]``). ``GET /healthz``
is the readiness probe. One line of JSON per request on stdout (the Pod's log).

Run as ``python3 receiver_server.py [PORT]`` (default 8080).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 4 * 1024 * 1024  # Alertmanager's payloads here are a few KiB; anything bigger is not ours
_lock = threading.Lock()
_received: list[dict[str, Any]] = []


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            self._send(400, {"error": f"bad Content-Length {length}"})
            return
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError as e:
            self._send(400, {"error": f"not JSON: {e}"})
            return
        with _lock:
            _received.append({"received_at": time.time(), "body": body})
        self._log(event="notification", status=body.get("status"), alerts=len(body.get("alerts") or []))
        self._send(200, {"ok": True})

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"ok": True})
        elif self.path == "/notifications":
            with _lock:
                self._send(200, list(_received))
        else:
            self._send(404, {"error": "not found"})

    def _send(self, code: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _log(self, **fields: Any) -> None:
        print(json.dumps({"ts": time.time(), **fields}), flush=True)

    def log_message(self, format: str, *args: Any) -> None:
        self._log(event="request", line=format % args)


def main(argv: list[str]) -> int:
    port = int(argv[1]) if len(argv) > 1 else 8080
    server = ThreadingHTTPServer(("", port), Handler)
    print(json.dumps({"ts": time.time(), "event": "listening", "port": port}), flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
