"""The web configuration file, read and checked (exporter/webconfig.py), without serving anything.

* exporter-toolkit's own sample file and a file using every field load, relative paths resolve against the
  file's folder, and an empty file means plain HTTP without authentication (as in exporter-toolkit).
* Every mistake is refused with one line naming the file and the field: the exact text is pinned per case.
* `serve --web.config.file` with a bad file prints that line and exits 2 before anything starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter import cli
from exporter.webconfig import WebConfigError, go_duration, load, parse
from tests.webtls import Pki, bcrypt_hash, files, write_config


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


# exporter-toolkit's docs/web-config.yml, with its certificate paths pointing at our files.
TOOLKIT_SAMPLE = """\
# TLS and basic authentication configuration example.
#
# Additionally, a certificate and a key file are needed.
tls_server_config:
  cert_file: tls.crt
  key_file: tls.key

# Usernames and passwords required to connect.
# Passwords are hashed with bcrypt: https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md#about-bcrypt.
basic_auth_users:
  alice: $2y$10$mDwo.lAisC94iLAyP81MCesa29IzH37oigHC/42V2pdJlUprsJPze
  bob: $2y$10$hLqFl9jSjoAAy95Z/zw8Ye8wkdMBM8c5Bn1ptYqP/AXyV0.oy0S8m
"""

EVERYTHING = """\
tls_server_config:
  cert_file: tls.crt
  key_file: tls.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: client-ca.crt
  client_allowed_sans: [prometheus.monitoring.svc, 10.0.0.1]
  min_version: TLS12
  max_version: TLS13
  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]
  prefer_server_cipher_suites: false
  curve_preferences: [CurveP256]
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    Strict-Transport-Security: max-age=31536000
    Content-Security-Policy: ""
basic_auth_users:
  prometheus: {hash}
bearer_token_files: [token]
rate_limit:
  interval: 100ms
  burst: 5
"""


def test_toolkit_sample_loads(tmp_path: Path, pki: Pki) -> None:
    files(tmp_path, pki)
    active = load(write_config(tmp_path, TOOLKIT_SAMPLE))
    config = active.config
    assert config.tls is not None and config.tls.cert_file == tmp_path / "tls.crt"
    assert config.tls.client_auth_type == "NoClientCert" and config.tls.min_version == "TLS12"
    assert sorted(config.basic_auth_users) == ["alice", "bob"]
    assert active.ssl_context is not None and active.tokens == ()


def test_every_field_loads(tmp_path: Path, pki: Pki) -> None:
    files(tmp_path, pki)
    config = load(write_config(tmp_path, EVERYTHING.format(hash=bcrypt_hash()))).config
    assert config.tls is not None
    assert config.tls.client_ca_file == tmp_path / "client-ca.crt"
    assert config.tls.client_allowed_sans == ("prometheus.monitoring.svc", "10.0.0.1")
    assert config.tls.prefer_server_cipher_suites is False and config.http2 is False
    # A blank header is unset, as exporter-toolkit documents.
    assert config.headers == (("X-Frame-Options", "deny"), ("X-Content-Type-Options", "nosniff"),
                              ("Strict-Transport-Security", "max-age=31536000"))
    assert config.bearer_token_files == (tmp_path / "token",)
    assert config.rate_limit is not None and (config.rate_limit.interval_s, config.rate_limit.burst) == (0.1, 5)


def test_empty_file_is_plain_http_without_authentication(tmp_path: Path) -> None:
    for text in ("", "# nothing\n", "tls_server_config:\nhttp_server_config:\n"):
        config = load(write_config(tmp_path, text)).config
        assert config.tls is None and not config.authenticates and config.rate_limit is None


def test_paths_relative_to_the_file_and_absolute_ones(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "secrets").mkdir()
    secrets = files(tmp_path / "secrets", pki)
    config = parse(f"tls_server_config:\n  cert_file: ../secrets/tls.crt\n  key_file: {secrets}/tls.key\n".encode(),
                   tmp_path / "conf" / "web.yml")
    assert config.tls is not None
    assert config.tls.cert_file == tmp_path / "conf" / ".." / "secrets" / "tls.crt"
    assert config.tls.key_file == secrets / "tls.key"


def test_go_durations() -> None:
    assert go_duration("0") == 0
    assert go_duration("1m30s") == 90
    assert go_duration("100ms") == pytest.approx(0.1)
    assert go_duration("1.5h") == 5400
    for bad in ("", "1", "1d", "s", "-1s"):
        with pytest.raises(ValueError):
            go_duration(bad)


TLS = "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
MTLS = TLS + "  client_ca_file: client-ca.crt\n"

# (the file, the one line it must be refused with after "--web.config.file <path>: ")
BAD = {
    "not yaml": ("tls_server_config: [\n",
                 "not valid YAML: expected the node content, but found '<stream end>' at line 2, column 1"),
    "not a mapping": ("- a\n", "expected a mapping, got list"),
    "unknown top-level field": ("tls_config: {}\n", "tls_config: unknown field; the fields here are "
                                "basic_auth_users, bearer_token_files, http_server_config, rate_limit, "
                                "tls_server_config"),
    "duplicate key": ("basic_auth_users: {}\nbasic_auth_users: {}\n",
                      "not valid YAML: duplicate key 'basic_auth_users' at line 2, column 1"),
    "unknown tls field": (TLS + "  certfile: x\n", "tls_server_config.certfile: unknown field; the fields here are "
                          "cert, cert_file, cipher_suites, client_allowed_sans, client_auth_type, client_ca, "
                          "client_ca_file, curve_preferences, key, key_file, max_version, min_version, "
                          "prefer_server_cipher_suites"),
    "tuning without a certificate": ("tls_server_config:\n  min_version: TLS13\n",
                                     "tls_server_config.min_version: set, but TLS is off: give cert_file and "
                                     "key_file"),
    "no key": ("tls_server_config:\n  cert_file: tls.crt\n",
               "tls_server_config.key_file: missing: TLS needs cert_file (or cert) and key_file (or key)"),
    "cert twice": (TLS + "  cert: inline\n", "tls_server_config.cert: give cert or cert_file, not both"),
    "cert file missing": ("tls_server_config:\n  cert_file: nowhere.crt\n  key_file: tls.key\n",
                          "tls_server_config.cert_file: cannot read {dir}/nowhere.crt: No such file or directory"),
    "cert not PEM": ("tls_server_config:\n  cert_file: token\n  key_file: tls.key\n",
                     "tls_server_config.cert_file: no PEM certificate in it"),
    "key not PEM": ("tls_server_config:\n  cert_file: tls.crt\n  key_file: token\n",
                    "tls_server_config.key_file: not an unencrypted PEM private key"),
    "key of another certificate": ("tls_server_config:\n  cert_file: tls.crt\n  key_file: other.key\n",
                                   "tls_server_config.key_file: does not match the certificate (the first one in "
                                   "cert_file)"),
    "unknown client_auth_type": (TLS + "  client_auth_type: Always\n",
                                 "tls_server_config.client_auth_type: unknown value 'Always'; expected one of "
                                 "NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, "
                                 "RequireAndVerifyClientCert"),
    "RequireAnyClientCert": (MTLS + "  client_auth_type: RequireAnyClientCert\n",
                             "tls_server_config.client_auth_type: RequireAnyClientCert lets in any client "
                             "certificate without verifying it, which Python's ssl cannot do; use "
                             "RequireAndVerifyClientCert with client_ca_file"),
    "RequireClientCert, its old name": (TLS + "  client_auth_type: RequireClientCert\n",
                                        "tls_server_config.client_auth_type: RequireAnyClientCert lets in any "
                                        "client certificate without verifying it, which Python's ssl cannot do; "
                                        "use RequireAndVerifyClientCert with client_ca_file"),
    "client CA without a policy": (MTLS, "tls_server_config.client_ca_file: a client CA is set but "
                                   "client_auth_type is NoClientCert: set client_auth_type to "
                                   "RequireAndVerifyClientCert"),
    "verification without a CA": (TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
                                  "tls_server_config.client_ca_file: missing: client_auth_type "
                                  "RequireAndVerifyClientCert verifies client certificates against it"),
    "client CA not PEM": ("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_ca_file: token\n"
                          "  client_auth_type: VerifyClientCertIfGiven\n",
                          "tls_server_config.client_ca_file: no PEM certificate in it"),
    "SANs without verification": (MTLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_allowed_sans: [a]\n",
                                  "tls_server_config.client_allowed_sans: needs client_auth_type "
                                  "RequireAndVerifyClientCert"),
    "no SAN allowed": (MTLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_allowed_sans: []\n",
                       "tls_server_config.client_allowed_sans: empty: no client could connect"),
    "unknown TLS version": (TLS + "  min_version: TLS14\n", "tls_server_config.min_version: unknown value 'TLS14'; "
                            "expected one of TLS10, TLS11, TLS12, TLS13"),
    "min above max": (TLS + "  min_version: TLS13\n  max_version: TLS12\n",
                      "tls_server_config.min_version: TLS13 is above max_version TLS12"),
    "insecure cipher suite": (TLS + "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, "
                              "TLS_RSA_WITH_3DES_EDE_CBC_SHA]\n",
                              "tls_server_config.cipher_suites[1]: unknown cipher suite "
                              "'TLS_RSA_WITH_3DES_EDE_CBC_SHA'; the ones Go's tls.CipherSuites() lists are "
                              "TLS_RSA_WITH_AES_128_CBC_SHA, TLS_RSA_WITH_AES_256_CBC_SHA, "
                              "TLS_RSA_WITH_AES_128_GCM_SHA256, TLS_RSA_WITH_AES_256_GCM_SHA384, "
                              "TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256, "
                              "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, "
                              "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA, "
                              "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, "
                              "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, "
                              "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, "
                              "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
    "unknown curve": (TLS + "  curve_preferences: [P256]\n", "tls_server_config.curve_preferences[0]: unknown curve "
                      "'P256'; expected one of CurveP256, CurveP384, CurveP521, X25519"),
    "curves in an order": (TLS + "  curve_preferences: [X25519, CurveP256]\n",
                           "tls_server_config.curve_preferences: Python's ssl can restrict the key exchange to one "
                           "curve, not order several: give one"),
    "not a boolean": (TLS + "  prefer_server_cipher_suites: 'no'\n",
                      "tls_server_config.prefer_server_cipher_suites: expected true or false, got 'no'"),
    "header not allowed": ("http_server_config:\n  headers:\n    Server: x\n",
                           "http_server_config.headers.Server: this header cannot be configured; the ones that can "
                           "are Strict-Transport-Security, X-Content-Type-Options, X-Frame-Options, "
                           "X-XSS-Protection, Content-Security-Policy"),
    "header value not allowed": ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
                                 "http_server_config.headers.X-Frame-Options: expected one of deny, sameorigin, "
                                 "got 'allow'"),
    "plain password": ("basic_auth_users:\n  prometheus: hunter2\n",
                       "basic_auth_users.prometheus: not a bcrypt hash: expected $2y$<cost>$ and 53 more "
                       "characters, as `htpasswd -nBC 10 \"\" | tr -d ':\\n'` prints"),
    "user with a colon": ("basic_auth_users:\n  'a:b': $2y$04$" + "a" * 53 + "\n",
                          "basic_auth_users: user name 'a:b': expected a non-empty string without ':'"),
    "token file missing": ("bearer_token_files: [nowhere]\n",
                           "bearer_token_files[0]: cannot read {dir}/nowhere: No such file or directory"),
    "token too short": ("bearer_token_files: [short]\n", "bearer_token_files[0]: the token has 6 characters; use at "
                        "least 16 (for example `openssl rand -hex 32`)"),
    "empty token": ("bearer_token_files: [empty]\n",
                    "bearer_token_files[0]: empty, or the token has a space or a control character in it"),
    "token files not a list": ("bearer_token_files: token\n", "bearer_token_files: expected a list of strings"),
    "rate limit interval": ("rate_limit:\n  interval: 1d\n  burst: 1\n",
                            "rate_limit.interval: '1d' is not a duration such as 1s, 100ms or 1m30s"),
    "rate limit that refuses everything": ("rate_limit:\n  interval: 1s\n  burst: 0\n",
                                           "rate_limit.burst: 0 with a non-zero interval would refuse every request"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_is_refused_with_one_line_naming_the_field(case: str, tmp_path: Path, pki: Pki) -> None:
    text, message = BAD[case]
    files(tmp_path, pki)
    (tmp_path / "other.key").write_bytes(pki.client.key_pem)
    (tmp_path / "short").write_text("abc123\n")
    (tmp_path / "empty").write_text("\n")
    path = write_config(tmp_path, text)
    with pytest.raises(WebConfigError) as raised:
        load(path)
    assert str(raised.value) == f"--web.config.file {path}: {message.format(dir=tmp_path)}"
    assert "\n" not in str(raised.value)


def test_serve_with_a_bad_file_exits_2_with_that_line(tmp_path: Path, pki: Pki,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    files(tmp_path, pki)
    path = write_config(tmp_path, TLS + "  client_auth_type: RequireAndVerifyClientCert\n")
    (tmp_path / "manifests").mkdir()
    code = cli.main(["serve", "--manifests", str(tmp_path / "manifests"), "--listen-address", "127.0.0.1:0",
                     "--web.config.file", str(path)])
    assert code == cli.EXIT_USAGE
    assert capsys.readouterr().err == (
        f"admission-webhook-exporter: error: --web.config.file {path}: tls_server_config.client_ca_file: missing: "
        "client_auth_type RequireAndVerifyClientCert verifies client certificates against it\n")
    missing = tmp_path / "absent.yml"
    assert cli.main(["serve", "--manifests", str(tmp_path / "manifests"), "--web.config.file", str(missing)]) == 2
    assert capsys.readouterr().err == (f"admission-webhook-exporter: error: --web.config.file {missing}: cannot "
                                       "read it: No such file or directory\n")
    assert cli.main(["serve", "--health-listen-address", "10048"]) == 2
    assert "--health-listen-address '10048': expected [host]:port" in capsys.readouterr().err
