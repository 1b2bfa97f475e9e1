"""Who may read /metrics once connected: basic auth (bcrypt), bearer tokens, headers, the rate limit, and the
health listener the kubelet probes (exporter/webconfig.py, exporter/server.py), on real sockets on 127.0.0.1.

* Basic auth: the right password is let in, a wrong one, an unknown user, no or malformed credentials get 401
  with `WWW-Authenticate`; bcrypt runs once per credentials, not once per scrape; a changed hash takes effect.
* Bearer tokens from files: any listed token is let in (so a token can be rotated without a gap), a wrong one
  is not, and a rewritten token file takes effect without a restart.
* Headers from http_server_config.headers are on every answer, refusals included; the rate limit answers 429
  past its burst and lets requests in again as time passes (a clock the test moves).
* With --health-listen-address, /healthz and /readyz answer there without credentials, and nothing else does;
  on the main listener they are guarded like everything else, as in exporter-toolkit.
"""

from __future__ import annotations

import base64
from pathlib import Path

import bcrypt
import pytest

from tests.webtls import (
    PASSWORD,
    TOKEN,
    Pki,
    basic,
    bcrypt_hash,
    bearer,
    client_context,
    files,
    get,
    serving,
    write_config,
)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


class CountingBcrypt:
    """bcrypt.checkpw, counted: the real check, so a wrong password still fails."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.calls += 1
        try:
            return bcrypt.checkpw(password, hashed)
        except ValueError:
            return False


async def test_basic_auth(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"basic_auth_users:\n  prometheus: {bcrypt_hash()}\n"
                                    f"  other: {bcrypt_hash('other password')}\n")
    counting = CountingBcrypt()
    async with serving(config, checkpw=counting) as served:
        url = f"{served.http}/metrics"
        for _ in range(5):
            answer = await get(url, headers=basic("prometheus", PASSWORD))
            assert answer.status == 200 and "admission_webhook_exporter_build_info" in answer.body
        assert counting.calls == 1, "bcrypt ran once, then the check was remembered"

        for headers in ({}, basic("prometheus", "wrong"), basic("nobody", PASSWORD), basic("other", PASSWORD),
                        {"Authorization": "Basic not-base64!"},
                        {"Authorization": "Basic " + base64.b64encode(b"no colon").decode()},
                        basic("prometheus", "x" * 100),  # over bcrypt's 72 bytes: refused, not a crash
                        bearer()):  # no bearer_token_files: a token means nothing here
            refusal = await get(url, headers=headers)
            assert refusal.status == 401, headers
            assert refusal.headers["www-authenticate"] == ['Basic realm="admission-webhook-exporter"']
            assert "admission_webhook" not in refusal.body
        calls = counting.calls
        assert (await get(url, headers=basic("prometheus", "wrong"))).status == 401
        assert counting.calls == calls + 1, "a failure is not remembered: it cannot push a good entry out"

        # A new hash (a password change) takes effect at once; the remembered check was for the old hash.
        write_config(tmp_path, f"basic_auth_users:\n  prometheus: {bcrypt_hash('new password')}\n")
        assert (await get(url, headers=basic("prometheus", PASSWORD))).status == 401
        assert (await get(url, headers=basic("prometheus", "new password"))).status == 200


async def test_bearer_tokens_and_their_rotation(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "next").write_text("the-next-token-fedcba9876543210")
    config = write_config(tmp_path, "bearer_token_files: [token, next]\n")
    async with serving(config) as served:
        url = f"{served.http}/metrics"
        assert (await get(url, headers=bearer())).status == 200
        assert (await get(url, headers={"Authorization": f"bearer {TOKEN}"})).status == 200  # scheme: any case
        assert (await get(url, headers=bearer("the-next-token-fedcba9876543210"))).status == 200
        for headers in ({}, bearer("wrong-token-0123456789abcdef"), bearer(TOKEN[:-1]), bearer(TOKEN + "x"),
                        basic("prometheus", TOKEN)):
            refusal = await get(url, headers=headers)
            assert refusal.status == 401, headers
            assert refusal.headers["www-authenticate"] == ['Bearer realm="admission-webhook-exporter"']
        # The Secret is rewritten: the old token stops working, the new one works, no restart.
        (tmp_path / "token").write_text("a-brand-new-token-0123456789abcdef\n")
        assert (await get(url, headers=bearer())).status == 401
        assert (await get(url, headers=bearer("a-brand-new-token-0123456789abcdef"))).status == 200


async def test_basic_auth_and_tokens_together_over_tls(tmp_path: Path, pki: Pki) -> None:
    config = write_config(files(tmp_path, pki), "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
                                                f"basic_auth_users:\n  prometheus: {bcrypt_hash()}\n"
                                                "bearer_token_files: [token]\n")
    async with serving(config) as served:
        tls = client_context(pki, tmp=tmp_path)
        url = f"{served.https}/metrics"
        assert (await get(url, tls=tls, headers=bearer())).status == 200
        assert (await get(url, tls=tls, headers=basic("prometheus", PASSWORD))).status == 200
        refusal = await get(url, tls=tls)
        assert refusal.status == 401
        assert refusal.headers["www-authenticate"] == ['Basic realm="admission-webhook-exporter"',
                                                       'Bearer realm="admission-webhook-exporter"']


async def test_headers_on_every_answer(tmp_path: Path) -> None:
    config = write_config(tmp_path, "bearer_token_files: [token]\nhttp_server_config:\n  headers:\n"
                                    "    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n")
    (tmp_path / "token").write_text(TOKEN)
    async with serving(config) as served:
        for path, headers, status in (("/metrics", bearer(), 200), ("/metrics", {}, 401),
                                      ("/nothing", bearer(), 404), ("/", bearer(), 200)):
            answer = await get(f"{served.http}{path}", headers=headers)
            assert answer.status == status, path
            assert answer.headers["x-frame-options"] == ["deny"], path
            assert answer.headers["x-content-type-options"] == ["nosniff"], path


async def test_rate_limit(tmp_path: Path) -> None:
    now = [0.0]
    config = write_config(tmp_path, "rate_limit:\n  interval: 10s\n  burst: 2\n")
    async with serving(config, recheck_s=3600, clock=lambda: now[0]) as served:
        url = f"{served.http}/healthz"
        assert [(await get(url)).status for _ in range(3)] == [200, 200, 429]
        now[0] += 10  # one request's worth of tokens back
        assert [(await get(url)).status for _ in range(2)] == [200, 429]
        now[0] += 60  # refills to the burst, not beyond
        assert [(await get(url)).status for _ in range(3)] == [200, 200, 429]


async def test_health_listener_is_open_and_serves_only_health(tmp_path: Path, pki: Pki) -> None:
    config = write_config(files(tmp_path, pki), "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
                                                "  client_auth_type: RequireAndVerifyClientCert\n"
                                                "  client_ca_file: client-ca.crt\nbearer_token_files: [token]\n")
    async with serving(config, health=True) as served:
        health = f"http://127.0.0.1:{served.health_port}"
        assert (await get(f"{health}/healthz")).status == 200
        readyz = await get(f"{health}/readyz")
        assert readyz.status in (200, 503) and readyz.body in ("ok\n", "first probe round not finished\n")
        assert (await get(f"{health}/metrics")).status == 404
        assert (await get(f"{health}/")).status == 404
        # On the main listener the probes' paths are guarded like everything else.
        tls = client_context(pki, pki.client, tmp=tmp_path)
        assert (await get(f"{served.https}/healthz", tls=tls)).status == 401
        assert (await get(f"{served.https}/healthz", tls=tls, headers=bearer())).status == 200
