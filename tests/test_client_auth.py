"""Backends that authenticate the apiserver with a client certificate: real TLS servers that require one.

Without the apiserver's credentials such a backend is `client_auth_required` (not paged), its served chain still
verified and reported; with them (`--webhook-client-config`, the apiserver's AdmissionConfiguration
kubeConfigFile) the probe presents the certificate the apiserver presents and the backend answers. The lookup of
the user by the webhook's host mirrors k8s.io/apiserver's own table test (pkg/util/webhook/authentication_test.go).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.backend import LoopbackServer, read_request, server_context
from exporter.clientauth import WebhookClientConfig, lookup_key
from exporter.kubeconfig import KubeconfigError
from exporter.pki import CertificateAuthority, ServingCertificate
from exporter.probe import probe
from exporter.reasons import Reason, recognise
from exporter.targets import Target
from tests import factories as f
from tests.conftest import StartBlockingTLS
from tests.helpers import only_plan, plans_of

TLS13, TLS12 = ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2


@pytest.fixture(scope="module")
def client_ca() -> CertificateAuthority:
    return CertificateAuthority.create("apiserver client CA")


@pytest.fixture(scope="module")
def apiserver_client(client_ca: CertificateAuthority) -> ServingCertificate:
    return client_ca.issue([], common_name="kube-apiserver-admission", server=False, client=True)


def requiring(serving: ServingCertificate, client_ca: CertificateAuthority, version: ssl.TLSVersion
              ) -> ssl.SSLContext:
    ctx = server_context(serving, client_ca=client_ca)
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


def target(port: int, ca: CertificateAuthority, *, side_effects: str = "None") -> Target:
    hook = f.webhook("auth.example.com", f.url_client(port, ca.ca_bundle), side_effects=side_effects, timeout=5)
    (t,) = only_plan(f.configuration("authenticated", hook)).targets
    return t


def recognised_as(detail: str) -> Reason | None:
    wording = recognise(detail)
    return wording.reason if wording is not None else None


# -- Without the apiserver's credentials: a distinct verdict, not `down` -----------------------------------------
@pytest.mark.parametrize("version", [TLS13, TLS12], ids=["tls1.3", "tls1.2"])
@pytest.mark.parametrize("side_effects", ["None", "Some"], ids=["review", "handshake-only"])
async def test_a_backend_requiring_a_client_certificate_is_client_auth_required(
        blocking_tls: StartBlockingTLS, ca: CertificateAuthority, loopback_cert: ServingCertificate,
        client_ca: CertificateAuthority, version: ssl.TLSVersion, side_effects: str) -> None:
    """Before: TLS 1.3 `http_error` ("connection closed before a full response"), TLS 1.2 `tls_handshake`,
    handshake-only `up`; all but the last paged under Fail."""
    server = blocking_tls(requiring(loopback_cert, client_ca, version))
    result = await probe(target(server.port, ca, side_effects=side_effects))
    assert (result.success, result.reason) == (False, Reason.CLIENT_AUTH_REQUIRED), result.detail
    assert "client certificate" in result.detail and recognised_as(result.detail) is Reason.CLIENT_AUTH_REQUIRED
    # The served chain was verified and its expiry is reported as for any probe.
    assert result.cert_not_after == pytest.approx(loopback_cert.cert.not_valid_after_utc.timestamp())
    assert server.clients == []


async def test_the_certificate_required_alert_is_read_where_the_server_sends_one(
        blocking_tls: StartBlockingTLS, ca: CertificateAuthority, loopback_cert: ServingCertificate,
        client_ca: CertificateAuthority) -> None:
    server = blocking_tls(requiring(loopback_cert, client_ca, TLS13))
    result = await probe(target(server.port, ca, side_effects="Some"))
    assert result.detail.startswith("remote error: tls: certificate required: the backend requires a TLS client "
                                    "certificate"), result.detail


async def test_a_server_that_hangs_up_without_the_alert_is_still_recognised(
        ca: CertificateAuthority, loopback_cert: ServingCertificate, client_ca: CertificateAuthority) -> None:
    """asyncio's TLS server closes without sending `certificate required`: the CertificateRequest it sent says it."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    server = await LoopbackServer(answer, serving=loopback_cert, client_ca=client_ca).start()
    try:
        result = await probe(target(server.port, ca))
    finally:
        await server.stop()
    assert result.reason is Reason.CLIENT_AUTH_REQUIRED, result.detail
    assert result.detail.startswith("the backend asked for a TLS client certificate and closed the connection")


@pytest.mark.parametrize("version", [TLS13, TLS12], ids=["tls1.3", "tls1.2"])
async def test_a_served_chain_problem_wins_over_client_auth(
        blocking_tls: StartBlockingTLS, ca: CertificateAuthority, client_ca: CertificateAuthority,
        version: ssl.TLSVersion) -> None:
    """The certificate the backend serves is judged first, as the apiserver's handshake judges it first."""
    wrong_name = ca.issue(["other.example.com"])
    server = blocking_tls(requiring(wrong_name, client_ca, version))
    result = await probe(target(server.port, ca))
    assert result.reason is Reason.X509_HOSTNAME_MISMATCH, result.detail
    assert result.cert_not_after == pytest.approx(wrong_name.cert.not_valid_after_utc.timestamp())


async def test_a_server_that_only_asks_for_a_certificate_is_up(
        blocking_tls: StartBlockingTLS, ca: CertificateAuthority, loopback_cert: ServingCertificate,
        client_ca: CertificateAuthority) -> None:
    ctx = requiring(loopback_cert, client_ca, TLS13)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    server = blocking_tls(ctx)
    for side_effects in ("None", "Some"):
        result = await probe(target(server.port, ca, side_effects=side_effects))
        assert (result.success, result.reason) == (True, None), result.detail


# -- With them: the same certificate the apiserver presents ---------------------------------------------------
def kubeconfig(path: Path, users: dict[str, dict[str, Any]], **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config",
                                    "users": [{"name": n, "user": u} for n, u in users.items()], **extra}))
    return path


def files(tmp_path: Path, cert: ServingCertificate, stem: str = "apiserver-client") -> dict[str, Any]:
    crt, key = cert.write(tmp_path, stem)
    return {"client-certificate": crt.name, "client-key": key.name}  # relative: to the kubeconfig's folder


@pytest.mark.parametrize("version", [TLS13, TLS12], ids=["tls1.3", "tls1.2"])
async def test_with_the_apiservers_kubeconfigfile_the_probe_presents_its_certificate(
        blocking_tls: StartBlockingTLS, ca: CertificateAuthority, loopback_cert: ServingCertificate,
        client_ca: CertificateAuthority, apiserver_client: ServingCertificate, tmp_path: Path,
        version: ssl.TLSVersion) -> None:
    server = blocking_tls(requiring(loopback_cert, client_ca, version))
    credentials = WebhookClientConfig.load(kubeconfig(tmp_path / "kubeconfig", {
        f"127.0.0.1:{server.port}": {**files(tmp_path, apiserver_client), "token": "t0k3n"},
        "*": {"token": "someone else"}}))
    result = await probe(target(server.port, ca), credentials=credentials)
    assert (result.success, result.reason, result.http_status) == (True, None, 200), result.detail
    assert server.clients == [("kube-apiserver-admission", "Bearer t0k3n")]


async def test_a_refused_client_certificate_is_a_real_failure(
        blocking_tls: StartBlockingTLS, ca: CertificateAuthority, loopback_cert: ServingCertificate,
        client_ca: CertificateAuthority, tmp_path: Path) -> None:
    stranger = CertificateAuthority.create("not the backend's client CA").issue([], common_name="x", server=False,
                                                                                 client=True)
    server = blocking_tls(requiring(loopback_cert, client_ca, TLS13))
    credentials = WebhookClientConfig.load(kubeconfig(tmp_path / "kubeconfig", {"*": files(tmp_path, stranger)}))
    result = await probe(target(server.port, ca, side_effects="Some"), credentials=credentials)
    assert result.reason is Reason.TLS_HANDSHAKE, result.detail
    assert result.detail == "remote error: tls: unknown ca (the client certificate of user '*' was refused)"


async def test_a_renewed_certificate_is_presented_without_a_restart(
        blocking_tls: StartBlockingTLS, ca: CertificateAuthority, loopback_cert: ServingCertificate,
        client_ca: CertificateAuthority, tmp_path: Path) -> None:
    server = blocking_tls(requiring(loopback_cert, client_ca, TLS13))
    old = client_ca.issue([], common_name="before-rotation", server=False, client=True)
    credentials = WebhookClientConfig.load(kubeconfig(tmp_path / "kubeconfig", {"*": files(tmp_path, old)}))
    assert (await probe(target(server.port, ca), credentials=credentials)).success
    new = client_ca.issue([], common_name="after-rotation", server=False, client=True,
                          valid_until=dt.datetime.now(dt.UTC) + dt.timedelta(days=400))
    new.write(tmp_path, "apiserver-client")  # the mounted Secret, updated in place
    assert (await probe(target(server.port, ca), credentials=credentials)).success
    assert [cn for cn, _ in server.clients] == ["before-rotation", "after-rotation"]


# -- The apiserver's lookup, case by case ---------------------------------------------------------------------
WILD = {"*.two.three.com": "first", "*.three.com": "second", "*.com": "third", "*": "fallback"}


@pytest.mark.parametrize(("users", "authority", "expected"), [
    ({}, "foo.com", None),
    ({"foo.com": "foo", "*.com": "foo-star"}, "foo.com", "foo.com"),
    ({"*.com": "foo-star", "bar.com": "bar"}, "foo.com", "*.com"),
    ({"*": "star", "bar.com": "bar"}, "foo.com", "*"),
    ({"*.two.three.com": "", "*.three.com": "", "*.com": ""}, "one.two.three.com", "*.two.three.com"),
    ({"one.two.three.com:443": "exact", **WILD}, "one.two.three.com:443", "one.two.three.com:443"),
    ({"*.two.three.com:443": "", **WILD}, "one.two.three.com:443", "*.two.three.com:443"),
    (WILD, "one.two.three.com:443", "*.two.three.com"),
    ({"one.two.three.com:8443": "", **WILD}, "one.two.three.com:8443", "one.two.three.com:8443"),
    ({"*.two.three.com:8443": "", "one.two.three.com": "", **WILD}, "one.two.three.com:8443", "*.two.three.com:8443"),
    ({"one.two.three.com": "", **WILD}, "one.two.three.com:8443", "*"),
    # A service webhook, named as the docs name it: `<service>.<namespace>.svc` (port 443), or per namespace.
    ({"hook.team.svc": "", "*": ""}, "hook.team.svc:443", "hook.team.svc"),
    ({"*.team.svc": "", "*": ""}, "hook.team.svc:443", "*.team.svc"),
    ({"*.team.svc": "", "*": ""}, "hook.team.svc:8443", "*"),
    ({"[::1]:8443": ""}, "[::1]:8443", "[::1]:8443"),
])
def test_the_user_is_looked_up_as_the_apiserver_looks_it_up(tmp_path: Path, users: dict[str, str], authority: str,
                                                            expected: str | None) -> None:
    path = kubeconfig(tmp_path / "kubeconfig", {name: {"token": token or name} for name, token in users.items()})
    assert WebhookClientConfig.load(path).user_for(authority) == expected


def test_the_current_context_s_user_is_the_last_resort(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kubeconfig", {"bar.com": {"token": "bar"}}, contexts=[
        {"name": "ctx", "context": {"user": "bar.com"}}], **{"current-context": "ctx"})
    identity = WebhookClientConfig.load(path).identity("foo.com")
    assert identity is not None and identity.authorization == "Bearer bar"


def test_a_url_without_a_port_is_looked_up_at_443_as_go_joins_it() -> None:
    assert [lookup_key(a) for a in ("hook.example.com", "hook.example.com:8443", "[::1]:8443", "[::1]")] == [
        "hook.example.com:443", "hook.example.com:8443", "[::1]:8443", "[[::1]]:443"]


def test_service_and_url_targets_carry_the_name_the_apiserver_looks_up() -> None:
    svc = f.webhook("s.example.com", f.service_client("team", "hook", "", port=8443))
    url = f.webhook("u.example.com", {"url": "https://[::1]:9443/v"})
    plans = plans_of(f.configuration("c", svc, url), f.service("team", "hook", [{"port": 8443, "targetPort": 9443}]),
                     f.endpoint_slice("team", "hook", [{"port": 9443}], [("10.0.0.1", True)]))
    assert [t.authority for p in plans for t in p.targets] == ["hook.team.svc:8443", "[::1]:9443"]


@pytest.mark.parametrize(("user", "problem"), [
    ({"exec": {"command": "x"}}, "exec credentials are not supported"),
    ({"client-certificate": "a.crt"}, "needs both client-certificate(-data) and client-key(-data)"),
    ({"client-certificate-data": "not base64!", "client-key-data": "eA=="}, "client-certificate-data is not valid "
                                                                           "base64"),
    ({"client-certificate": "missing.crt", "client-key": "missing.key"}, "cannot read client certificate"),
    ({"client-certificate-data": base64.b64encode(b"junk").decode(), "client-key-data": "eA=="},
     "unusable client certificate or key"),
])
def test_unusable_credentials_are_one_line_naming_the_file_and_user(tmp_path: Path, user: dict[str, Any],
                                                                    problem: str) -> None:
    path = kubeconfig(tmp_path / "kubeconfig", {"hook.team.svc": user})
    with pytest.raises(KubeconfigError) as err:  # ClientAuthError is one
        WebhookClientConfig.load(path)
    message = str(err.value)
    assert message.startswith((f"webhook client config {path}: user 'hook.team.svc': ", f"kubeconfig {path}")), message
    assert problem in message
    assert "\n" not in message


@pytest.mark.parametrize(("text", "problem"), [
    ("users: [", "not valid YAML at line"), ("- a\n- b\n", "not a kubeconfig"), ("users: 3", "users must be a list"),
    ("users: [{user: {}}]", "users[0] has no name"),
])
def test_an_unusable_file_is_one_line(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    with pytest.raises(KubeconfigError, match=re.escape(f"kubeconfig {path}: ") + ".*" + re.escape(problem)):
        WebhookClientConfig.load(path)  # read by exporter.kubeconfig, in its words
    with pytest.raises(KubeconfigError, match=r"cannot read: No such file"):
        WebhookClientConfig.load(tmp_path / "absent")


# -- Through the command line ---------------------------------------------------------------------------------
async def test_check_takes_the_file_and_does_not_fail_on_client_auth_required(
        blocking_tls: StartBlockingTLS, ca: CertificateAuthority, loopback_cert: ServingCertificate,
        client_ca: CertificateAuthority, apiserver_client: ServingCertificate, tmp_path: Path) -> None:
    """Before: `check` said `down` and failed the gate for a Fail webhook whose backend wants a client certificate."""
    import json

    from tests.test_audit import run_cli

    server = blocking_tls(requiring(loopback_cert, client_ca, TLS13))
    manifests = tmp_path / "hooks.yaml"
    manifests.write_text(yaml.safe_dump(f.configuration("authenticated", f.webhook(
        "auth.example.com", f.url_client(server.port, ca.ca_bundle), timeout=5))))
    code, out, err = await run_cli("check", "--manifests", str(manifests), "--output", "json")
    (status,) = json.loads(out)["webhooks"]
    assert (code, status["verdict"], status["reason"]) == (0, "unverified", "client_auth_required"), err
    credentials = kubeconfig(tmp_path / "kubeconfig", {f"127.0.0.1:{server.port}": files(tmp_path, apiserver_client)})
    code, out, err = await run_cli("check", "--manifests", str(manifests), "--output", "json",
                                   "--webhook-client-config", str(credentials))
    (status,) = json.loads(out)["webhooks"]
    assert (code, status["verdict"], status["reason"]) == (0, "ok", ""), err
    code, out, err = await run_cli("check", "--manifests", str(manifests), "--webhook-client-config",
                                   str(tmp_path / "absent"))
    assert code == 2 and err.count("\n") == 1 and "--webhook-client-config: kubeconfig " in err and "absent" in err
