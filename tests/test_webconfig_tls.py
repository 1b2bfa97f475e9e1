"""/metrics over real TLS on 127.0.0.1 with --web.config.file (exporter/webconfig.py through exporter/server.py).

* A scrape over TLS verifies the exporter's certificate; plain HTTP to the TLS port gets no answer.
* Every client_auth_type lets in exactly the clients exporter-toolkit documents (Go's crypto/tls meaning of the
  name): without a certificate, with one from the client CA, with one from a CA nobody trusts.
* client_allowed_sans refuses a trusted certificate without an allowed SAN.
* Rotation without a restart, the way the kubelet updates a Secret volume (an atomic swap of its `..data`
  symlink): the next handshake serves the new certificate, a new client CA is trusted and the old one is not.
* A change that does not load keeps the last good configuration serving, is logged once and shows in
  admission_webhook_exporter_web_config_last_reload_successful; a fixed file loads again.
* min_version/max_version, cipher_suites and one curve are what the handshake negotiates.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import pytest

from exporter.pki import ServingCertificate
from tests.webtls import Pki, client_context, files, get, refused, serving, write_config

RELOAD_OK = "admission_webhook_exporter_web_config_last_reload_successful"
RELOAD_AT = "admission_webhook_exporter_web_config_last_reload_success_timestamp_seconds"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


def tls_config(extra: str = "") -> str:
    return "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n" + extra


async def test_scrape_over_tls_and_plain_http_refused(tmp_path: Path, pki: Pki) -> None:
    async with serving(write_config(files(tmp_path, pki), tls_config())) as served:
        answer = await get(f"{served.https}/metrics", tls=client_context(pki, tmp=tmp_path))
        assert answer.status == 200 and "admission_webhook_exporter_build_info" in answer.body
        assert answer.peer_serial == pki.server.cert.serial_number
        assert served.sample(RELOAD_OK) == 1
        # A scraper that speaks plain HTTP to the TLS port gets no HTTP answer at all.
        assert await refused(f"{served.http}/metrics") is not None
        # Nor one that does not trust the exporter's CA.
        assert isinstance(await refused(f"{served.https}/metrics",
                                        tls=client_context(pki, tmp=tmp_path, trust=pki.client_ca)),
                          ssl.SSLCertVerificationError)


# client_auth_type -> (no client certificate, one from the client CA, one from the intruder's CA): let in?
# exporter-toolkit maps the names onto Go's crypto/tls ClientAuthType; RequireAnyClientCert is refused at load
# (tests/test_webconfig.py) because Python's ssl cannot accept a certificate it does not verify.
CLIENT_AUTH = {
    "NoClientCert": (True, True, True),
    "RequestClientCert": (True, True, True),  # Go asks for one and never verifies it
    "VerifyClientCertIfGiven": (True, True, False),
    "RequireAndVerifyClientCert": (False, True, False),
}


@pytest.mark.parametrize("auth", list(CLIENT_AUTH))
async def test_client_auth_types(auth: str, tmp_path: Path, pki: Pki) -> None:
    ca = "" if auth == "NoClientCert" else "  client_ca_file: client-ca.crt\n"
    config = write_config(files(tmp_path, pki), tls_config(f"  client_auth_type: {auth}\n{ca}"))
    async with serving(config) as served:
        outcomes = []
        for cert in (None, pki.client, pki.intruder):
            error = await refused(f"{served.https}/metrics", tls=client_context(pki, cert, tmp=tmp_path))
            outcomes.append(error is None)
        assert tuple(outcomes) == CLIENT_AUTH[auth], f"{auth}: (none, trusted, intruder) let in = {outcomes}"


async def test_client_allowed_sans(tmp_path: Path, pki: Pki) -> None:
    config = write_config(files(tmp_path, pki), tls_config(
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n"
        "  client_allowed_sans: [prometheus.monitoring.svc]\n"))
    other = pki.client_ca.issue(["grafana.monitoring.svc"], client=True)
    async with serving(config) as served:
        allowed = await get(f"{served.https}/metrics", tls=client_context(pki, pki.client, tmp=tmp_path))
        assert allowed.status == 200
        # Trusted, but not an allowed SAN: refused (exporter-toolkit ends the handshake; we answer 403).
        assert (await get(f"{served.https}/metrics", tls=client_context(pki, other, tmp=tmp_path))).status == 403


def secret_volume(folder: Path, pki: Pki, serving_cert: ServingCertificate, generation: int) -> None:
    """Write the Secret's keys the way the kubelet does: a new timestamped folder, then `..data` swapped to it
    atomically; the visible names are symlinks through `..data`."""
    version = folder / f"..{generation}"
    version.mkdir()
    (version / "tls.crt").write_bytes(serving_cert.cert_pem)
    (version / "tls.key").write_bytes(serving_cert.key_pem)
    (version / "client-ca.crt").write_bytes(pki.client_ca.cert_pem)
    link = folder / "..data_tmp"
    link.symlink_to(version.name)
    os.replace(link, folder / "..data")
    for name in ("tls.crt", "tls.key", "client-ca.crt"):
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(f"..data/{name}")


async def test_certificate_rotation_is_served_without_a_restart(tmp_path: Path, pki: Pki) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    secret_volume(secret, pki, pki.server, 1)
    config = write_config(tmp_path, "tls_server_config:\n  cert_file: secret/tls.crt\n  key_file: secret/tls.key\n")
    client = client_context(pki, tmp=tmp_path)
    async with serving(config) as served:
        assert (await get(f"{served.https}/metrics", tls=client)).peer_serial == pki.server.cert.serial_number
        loaded_at = served.sample(RELOAD_AT)
        renewed = pki.server_ca.issue(["127.0.0.1", "localhost"])
        secret_volume(secret, pki, renewed, 2)
        answer = await get(f"{served.https}/metrics", tls=client)
        assert answer.peer_serial == renewed.cert.serial_number
        assert served.sample(RELOAD_OK) == 1 and (served.sample(RELOAD_AT) or 0) >= (loaded_at or 0)


async def test_client_ca_rotation(tmp_path: Path, pki: Pki) -> None:
    config = write_config(files(tmp_path, pki), tls_config(
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n"))
    async with serving(config) as served:
        assert await refused(f"{served.https}/metrics", tls=client_context(pki, pki.client, tmp=tmp_path)) is None
        assert await refused(f"{served.https}/metrics", tls=client_context(pki, pki.intruder, tmp=tmp_path))
        (tmp_path / "client-ca.crt").write_bytes(pki.intruder_ca.cert_pem)
        assert await refused(f"{served.https}/metrics", tls=client_context(pki, pki.intruder, tmp=tmp_path)) is None
        assert await refused(f"{served.https}/metrics", tls=client_context(pki, pki.client, tmp=tmp_path))


async def test_a_bad_change_keeps_the_last_good_configuration(tmp_path: Path, pki: Pki,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="exporter.webconfig")
    config = write_config(files(tmp_path, pki), tls_config())
    client = client_context(pki, tmp=tmp_path)
    renewed = pki.server_ca.issue(["127.0.0.1", "localhost"])
    async with serving(config) as served:
        # Half a rotation: the new certificate is there, its key is not yet (the old key no longer matches).
        (tmp_path / "tls.crt").write_bytes(renewed.cert_pem)
        for _ in range(3):  # logged once, however many connections see the same bad files
            answer = await get(f"{served.https}/metrics", tls=client)
            assert answer.status == 200 and answer.peer_serial == pki.server.cert.serial_number
        assert served.sample(RELOAD_OK) == 0
        assert f"{RELOAD_OK} 0.0" in answer.body  # what Prometheus scrapes says so too
        failures = [r for r in caplog.records if r.getMessage() == "web_config_reload_failed"]
        assert len(failures) == 1, [r.getMessage() for r in caplog.records]
        fields = failures[0].awe_fields  # type: ignore[attr-defined]  # set by exporter.log.event
        assert fields["error"] == (f"--web.config.file {config}: tls_server_config.key_file: does not match the "
                                   "certificate (the first one in cert_file)")
        assert fields["kept"] == "the last good configuration"

        # TLS cannot be switched off underneath a TLS listener either.
        write_config(tmp_path, "basic_auth_users: {}\n")
        assert (await get(f"{served.https}/metrics", tls=client)).peer_serial == pki.server.cert.serial_number
        assert "TLS cannot be turned on or off while the exporter runs" in \
            caplog.records[-1].awe_fields["error"]  # type: ignore[attr-defined]

        # The rotation completes: the new pair loads and is served.
        write_config(tmp_path, tls_config())
        (tmp_path / "tls.key").write_bytes(renewed.key_pem)
        assert (await get(f"{served.https}/metrics", tls=client)).peer_serial == renewed.cert.serial_number
        assert served.sample(RELOAD_OK) == 1
        assert caplog.records[-1].getMessage() == "web_config_reloaded"


async def test_reload_waits_for_recheck_interval(tmp_path: Path, pki: Pki) -> None:
    now = [100.0]
    config = write_config(files(tmp_path, pki), tls_config())
    client = client_context(pki, tmp=tmp_path)
    renewed = pki.server_ca.issue(["127.0.0.1", "localhost"])
    async with serving(config, recheck_s=1.0, clock=lambda: now[0]) as served:
        (tmp_path / "tls.crt").write_bytes(renewed.cert_pem)
        (tmp_path / "tls.key").write_bytes(renewed.key_pem)
        now[0] += 0.5  # the files are not looked at again within a second
        assert (await get(f"{served.https}/metrics", tls=client)).peer_serial == pki.server.cert.serial_number
        now[0] += 0.5
        assert (await get(f"{served.https}/metrics", tls=client)).peer_serial == renewed.cert.serial_number


async def test_versions_ciphers_and_curve_are_what_the_handshake_negotiates(tmp_path: Path, pki: Pki) -> None:
    files(tmp_path, pki)
    async with serving(write_config(tmp_path, tls_config("  min_version: TLS13\n"))) as served:
        old = client_context(pki, tmp=tmp_path)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        assert await refused(f"{served.https}/metrics", tls=old)
        assert (await get(f"{served.https}/metrics", tls=client_context(pki, tmp=tmp_path))).version == "TLSv1.3"

    config = tls_config("  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n")
    async with serving(write_config(tmp_path, config)) as served:
        answer = await get(f"{served.https}/metrics", tls=client_context(pki, tmp=tmp_path))
        assert (answer.version, answer.cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")
        other = client_context(pki, tmp=tmp_path)
        other.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        assert await refused(f"{served.https}/metrics", tls=other)

    async with serving(write_config(tmp_path, tls_config("  curve_preferences: [CurveP384]\n"))) as served:
        p256 = client_context(pki, tmp=tmp_path)
        p256.set_ecdh_curve("prime256v1")
        assert await refused(f"{served.https}/metrics", tls=p256)
        p384 = client_context(pki, tmp=tmp_path)
        p384.set_ecdh_curve("secp384r1")
        assert (await get(f"{served.https}/metrics", tls=p384)).status == 200
