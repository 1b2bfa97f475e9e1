"""N TLS webhook backends served by one private nginx, for the equal-load comparison (`bench.equal_load`).

Why nginx and not `bench.backends`: at a paced load both probers share the machine with the backends, and a
backend in C costs the shared cores little, so the two probers' figures are less disturbed by it. The uid echo
needs logic (a static response would fail our probe's uid check and make the two probers do different work), so
a few lines of njs (`libnginx-mod-http-js`, Debian's package, installed by bench/install-blackbox.sh) parse the
AdmissionReview and answer it with its uid, allowed. Both probers are pointed at the same backends.

Full handshakes only: session tickets and the session cache are off, so neither prober can resume a session
(the exporter's probe never offers one anyway: a resumed session would skip the certificate checks).

Private: its own prefix, config, pid file and logs in a temporary folder; it listens on 127.0.0.1 only, on
ports picked free; `close()` stops it (and the folder goes). Nothing in /etc is read or written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from exporter.pki import CertificateAuthority

NGINX = "/usr/sbin/nginx"
JS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"

REVIEW_JS = """\
// The AdmissionReview answer a webhook gives: the request's uid, allowed.
function review(r) {
    var uid;
    try {
        uid = JSON.parse(r.requestText).request.uid;
    } catch (e) {
        r.return(400, "not an AdmissionReview\\n");
        return;
    }
    r.headersOut["Content-Type"] = "application/json";
    r.return(200, JSON.stringify({apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview",
                                  response: {uid: uid, allowed: true}}));
}
export default {review};
"""


def available() -> str | None:
    """None when nginx and its njs module are installed, else what is missing."""
    if not Path(NGINX).exists():
        return f"{NGINX} (apt-get install nginx)"
    if not Path(JS_MODULE).exists():
        return f"{JS_MODULE} (apt-get install libnginx-mod-http-js)"
    return None


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (held open together while picked, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def config(ports: list[int], folder: Path, *, workers: int) -> str:
    listens = "\n".join(f"        listen 127.0.0.1:{p} ssl;" for p in ports)
    user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
    return f"""\
{user}daemon off;
worker_processes {workers};
worker_rlimit_nofile {len(ports) * 2 + 4096};
pid {folder}/nginx.pid;
error_log {folder}/error.log error;
load_module {JS_MODULE};
events {{ worker_connections {len(ports) + 4096}; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    client_body_buffer_size 64k;  # the AdmissionReview stays in memory, where njs reads it
    keepalive_timeout 0;
    js_import review from {folder}/review.js;
    ssl_certificate {folder}/tls.crt;
    ssl_certificate_key {folder}/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    server {{
{listens}
        location / {{ js_content review.review; }}
    }}
}}
"""


class NginxBackends:
    """`count` webhook backends (one nginx, one port each), one ECDSA (or RSA) serving certificate for 127.0.0.1."""

    def __init__(self, count: int, *, key: str = "ecdsa", workers: int = 1) -> None:
        missing = available()
        if missing is not None:
            raise RuntimeError(f"nginx backends need {missing}: run bench/install-blackbox.sh")
        self._tmp = tempfile.TemporaryDirectory(prefix="awe-bench-nginx-")
        folder = Path(self._tmp.name)
        folder.chmod(0o755)  # the workers (nobody) read nothing here but must traverse to their temp paths
        ca = CertificateAuthority.create("bench CA", key_type=key)  # type: ignore[arg-type]  # ecdsa or rsa
        ca.issue(["127.0.0.1"], key_type=key).write(folder, "tls")  # type: ignore[arg-type]
        (folder / "review.js").write_text(REVIEW_JS)
        self.ca_bundle = ca.ca_bundle
        self.ca_pem = ca.cert_pem
        self.ports = free_ports(count)
        (folder / "nginx.conf").write_text(config(self.ports, folder, workers=workers))
        self.proc = subprocess.Popen([NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"),
                                      "-e", str(folder / "error.log")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        try:
            self._wait_listening(folder)
        except BaseException:
            self.close()
            raise

    @property
    def spec(self) -> dict[str, object]:
        """The shape `bench.backends` prints: what the probers need to know."""
        return {"ca_bundle": self.ca_bundle, "ports": self.ports}

    def pids(self) -> list[int]:
        """nginx's master and workers (to tell their CPU apart from the probers')."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [self.proc.pid, *(int(p) for p in out.stdout.split())]

    def _wait_listening(self, folder: Path) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (folder / "error.log").read_text() if (folder / "error.log").exists() else ""
                raise RuntimeError(f"nginx exited {self.proc.returncode}: {err[-800:]}")
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex(("127.0.0.1", self.ports[-1])) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("nginx did not listen within 30 s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: the master stops its workers
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # its own group: the workers go too
                self.proc.wait()
        self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


if __name__ == "__main__":  # a quick look: python -m bench.nginx [count]
    import sys

    with NginxBackends(int(sys.argv[1]) if len(sys.argv) > 1 else 3) as backends:
        print(backends.spec["ports"], flush=True)
        time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 1)
