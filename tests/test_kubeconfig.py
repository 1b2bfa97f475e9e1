"""exporter/kubeconfig.py: credentials as kubectl reads them, without the `kubernetes` package.

Bad kubeconfigs: one line naming the file and the problem, exit 2 (before: a PyYAML traceback, an unnamed path,
"'str' object does not support item assignment"). The credentials themselves are checked against the real
kube-apiserver of tests/controlplane: tokens, token files, client certificates, exec plugins, tls-server-name,
in-cluster, and the fail-fast on a 401/403 that `check` used to retry for 60 s.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exporter.cli import main
from exporter.kubeapi import VALIDATING_CONFIGS, KubeApi
from exporter.kubeconfig import KubeconfigError, in_cluster, load_credentials
from exporter.pki import CertificateAuthority
from tests.controlplane.harness import ControlPlane


def kubeconfig(path: Path, *, server: str = "https://127.0.0.1:6443", cluster: dict[str, Any] | None = None,
               user: dict[str, Any] | None = None, context: str = "ctx", current: str | None = "ctx",
               name: str = "c", user_name: str = "u") -> Path:
    doc: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": user_name, "user": user or {"token": "t"}}],
        "contexts": [{"name": context, "context": {"cluster": name, "user": user_name}}],
    }
    if current is not None:
        doc["current-context"] = current
    path.write_text(json.dumps(doc))
    return path


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None) -> str:
    """Run the CLI; it must exit 2 with exactly one line on stderr, which is returned."""
    old = dict(os.environ)
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        assert main(list(argv)) == 2
    finally:
        os.environ.clear()
        os.environ.update(old)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("admission-webhook-exporter: error: ")
    return err.strip()


# ---- one line, naming the file, exit 2 ----------------------------------------------------------------------------
@pytest.mark.parametrize(("content", "problem"), [
    ("clusters: [\n  - name: a\n", "not valid YAML at line"),
    ("just some text\n", "not a kubeconfig (a YAML str"),
    ("- a\n- b\n", "not a kubeconfig (a YAML list"),
    ("clusters: {a: 1}\n", "clusters must be a list"),
    ("clusters:\n- cluster: {server: https://x}\n", "clusters[0] has no name"),
    ("users:\n- name: u\n  user: just-a-string\n", "user 'u' must be a mapping"),
    ("apiVersion: v1\nkind: Config\n", "no current-context set and no --context given"),
    ("\xff\xfe not text", "cannot read"),
])
def test_unusable_files_are_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     content: str, problem: str) -> None:
    path = tmp_path / "config"
    path.write_bytes(content.encode("latin-1"))
    for command in ("check", "audit", "serve"):
        err = cli_error(capsys, command, "--kubeconfig", str(path))
        assert f"kubeconfig {path}: " in err and problem in err, err


def test_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert cli_error(capsys, "check", "--kubeconfig", str(missing)).endswith(f"kubeconfig {missing}: no such file")
    err = cli_error(capsys, "audit", env={"KUBECONFIG": f"{missing}:{tmp_path / 'also-not'}", "HOME": str(tmp_path)})
    assert "none of the files in $KUBECONFIG exists" in err and str(missing) in err
    err = cli_error(capsys, "check", env={"HOME": str(tmp_path)})
    assert f"kubeconfig {tmp_path / '.kube' / 'config'}: no such file" in err and "KUBERNETES_SERVICE_HOST" in err


@pytest.mark.parametrize(("kwargs", "argv", "problem"), [
    ({}, ["--context", "prod"], "context 'prod' not found (contexts: ctx)"),
    ({"current": "gone"}, [], "context 'gone' not found"),
    ({"server": ""}, [], "cluster 'c': no server"),
    ({"server": "https://"}, [], "invalid server URL 'https://'"),
    ({"server": "ftp://api.example:21"}, [], "invalid server URL 'ftp://api.example:21'"),
    ({"server": "https://api.example:99999"}, [], "invalid server URL"),
    ({"cluster": {"certificate-authority-data": "not base64!"}}, [], "certificate-authority-data is not valid base64"),
    ({"cluster": {"certificate-authority-data": base64.b64encode(b"no pem here").decode()}}, [],
     "cannot load certificate-authority-data"),
    ({"cluster": {"certificate-authority": "missing-ca.crt"}}, [], "cannot load certificate authority"),
    ({"cluster": {"insecure-skip-tls-verify": True, "certificate-authority": "ca.crt"}}, [],
     "insecure-skip-tls-verify and a certificate authority are exclusive"),
    ({"cluster": {"proxy-url": "socks5://127.0.0.1:1080"}}, [], "proxy-url 'socks5://127.0.0.1:1080' is not supported"),
    ({"user": {"token": "a", "username": "b", "password": "c"}}, [], "more than one authentication method"),
    ({"user": {"tokenFile": "no-token"}}, [], "tokenFile no-token does not exist"),
    ({"user": {"client-certificate-data": base64.b64encode(b"x").decode()}}, [], "needs both client-certificate"),
    ({"user": {"as": "someone-else", "token": "t"}}, [], "impersonation (as) is not supported"),
    ({"user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "x"}}}, [],
     "exec apiVersion 'client.authentication.k8s.io/v1alpha1' is not supported"),
    ({"user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "awe-no-such-plugin",
                        "installHint": "install it from\n the vendor"}}}, [],
     "exec plugin awe-no-such-plugin not found (install it from the vendor)"),
    ({"user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "false"}}}, [],
     "exec plugin false exited with 1"),
    ({"user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "echo", "args": ["{}"]}}}, [],
     "exec plugin echo printed no usable ExecCredential: kind is not ExecCredential"),
])
def test_unusable_entries_are_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       kwargs: dict[str, Any], argv: list[str],
                                                       problem: str) -> None:
    path = kubeconfig(tmp_path / "config", **kwargs)
    (tmp_path / "ca.crt").write_text("unused")
    err = cli_error(capsys, "check", "--kubeconfig", str(path), *argv)
    assert f"kubeconfig {path}: " in err and problem in err, err


@pytest.mark.parametrize("field", ["cluster", "user"])
def test_missing_cluster_or_user_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str) -> None:
    path = kubeconfig(tmp_path / "config")
    doc = json.loads(path.read_text())
    doc["contexts"][0]["context"][field] = "nobody"
    path.write_text(json.dumps(doc))
    err = cli_error(capsys, "check", "--kubeconfig", str(path))
    assert err.endswith(f"kubeconfig {path}: context 'ctx' refers to {field} 'nobody', which is not defined")


def test_auth_provider_without_the_kubernetes_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # as in the image, which ships without it
    path = kubeconfig(tmp_path / "config", user={"auth-provider": {"name": "oidc", "config": {}}})
    with pytest.raises(KubeconfigError, match=r"auth-provider 'oidc' needs the `kubernetes` Python package.*"
                                              r"pip install kubernetes"):
        load_credentials(str(path))


def test_auth_provider_goes_through_the_kubernetes_package(tmp_path: Path) -> None:
    pytest.importorskip("kubernetes")  # a [dev] dependency: present wherever the suite runs
    claims = base64.urlsafe_b64encode(json.dumps({"exp": 4102444800, "sub": "x"}).encode()).decode().rstrip("=")
    jwt = f"e30.{claims}.c2ln"  # unsigned: the client only reads its expiry before sending it
    path = kubeconfig(tmp_path / "config", cluster={"tls-server-name": "api.internal"}, user={"auth-provider": {
        "name": "oidc", "config": {"id-token": jwt, "idp-issuer-url": "https://issuer.invalid", "client-id": "k"}}})
    creds = load_credentials(str(path))
    assert creds.token() == f"Bearer {jwt}"
    assert (creds.server, creds.server_hostname) == ("https://127.0.0.1:6443", "api.internal")


# ---- merging, as kubectl merges ---------------------------------------------------------------------------------
def test_kubeconfig_list_merges_first_wins_and_resolves_paths_per_file(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    token_file = two / "token"
    token_file.write_text("from-file\n")
    first = kubeconfig(one / "config", server="https://first.example", current=None, user={"token": "first"})
    second = kubeconfig(two / "config", server="https://second.example", current="ctx", context="ctx",
                        user={"tokenFile": "token"}, name="c2", user_name="u2")
    doc = json.loads(second.read_text())  # a second cluster "c" (loses: the first file defines it) and "c2"
    doc["clusters"].append({"name": "c", "cluster": {"server": "https://shadowed.example"}})
    doc["contexts"].append({"name": "mine", "context": {"cluster": "c2", "user": "u2"}})
    second.write_text(json.dumps(doc))
    env = {"KUBECONFIG": os.pathsep.join([str(tmp_path / "missing"), str(first), str(second)])}
    creds = load_credentials(environ=env)  # current-context from the second file; context "ctx" from the first
    assert creds.server == "https://first.example" and creds.token() == "Bearer first"
    mine = load_credentials(context="mine", environ=env)
    assert mine.server == "https://second.example"
    assert mine.token() == "Bearer from-file"  # tokenFile relative to the file that names it
    token_file.write_text("rotated")
    assert mine.token() == "Bearer rotated"  # re-read on every request


def test_in_cluster_reads_the_rotating_token(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_bytes(CertificateAuthority.create().cert_pem)
    (tmp_path / "token").write_text("one")
    creds = in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, tmp_path)
    assert creds.server == "https://[fd00::1]:443" and creds.token() == "Bearer one"
    (tmp_path / "token").write_text("two")
    assert creds.token() == "Bearer two"
    with pytest.raises(KubeconfigError, match="no token file"):
        in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, tmp_path / "none")


# ---- against the real apiserver ---------------------------------------------------------------------------------
async def list_configs(creds: Any) -> int:
    api = KubeApi(creds)
    try:
        items, _ = await api.list(VALIDATING_CONFIGS, request_seconds=20)
        return len(items)
    finally:
        await api.close()


def cluster_entry(cp: ControlPlane, **extra: Any) -> dict[str, Any]:
    return {"certificate-authority-data": base64.b64encode(cp.ca_path.read_bytes()).decode(), **extra}


@pytest.mark.controlplane
async def test_in_cluster_against_the_apiserver(tmp_path: Path, control_plane: ControlPlane) -> None:
    (tmp_path / "ca.crt").write_bytes(control_plane.ca_path.read_bytes())
    (tmp_path / "token").write_text(control_plane.admin_token)
    port = control_plane.server_url.rsplit(":", 1)[1]
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
    creds = load_credentials(environ=env, service_account_dir=tmp_path)
    assert await list_configs(creds) >= 0


@pytest.mark.controlplane
async def test_tls_server_name_is_the_name_verified(tmp_path: Path, control_plane: ControlPlane) -> None:
    """The apiserver's certificate names kubernetes.default.svc, not api.wrong.example: a tls-server-name is
    what the connection verifies (it used to be ignored: any name connected)."""
    server = control_plane.server_url
    right = kubeconfig(tmp_path / "right", server=server, user={"token": control_plane.admin_token},
                       cluster=cluster_entry(control_plane, **{"tls-server-name": "kubernetes.default.svc"}))
    assert await list_configs(load_credentials(str(right))) >= 0
    wrong = kubeconfig(tmp_path / "wrong", server=server, user={"token": control_plane.admin_token},
                       cluster=cluster_entry(control_plane, **{"tls-server-name": "api.wrong.example"}))
    with pytest.raises(aiohttp.ClientConnectorCertificateError, match=r"api\.wrong\.example"):
        await list_configs(load_credentials(str(wrong)))


def client_certificate(cp: ControlPlane, user: str, group: str) -> tuple[bytes, bytes]:
    """A client certificate for `user` in `group`, signed by the CA the apiserver trusts for clients."""
    ca_cert = x509.load_pem_x509_certificate(cp.ca.cert_pem)
    ca_key = serialization.load_pem_private_key(cp.ca.key_pem, None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, group),
                                     x509.NameAttribute(NameOID.COMMON_NAME, user)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]  # an EC or RSA key, whichever the CA has
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.mark.controlplane
async def test_client_certificates_data_and_files(tmp_path: Path, control_plane: ControlPlane) -> None:
    cert, key = client_certificate(control_plane, "awe-cert-admin", "system:masters")
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    as_data = kubeconfig(tmp_path / "data", server=control_plane.server_url, cluster=cluster_entry(control_plane),
                         user={"client-certificate-data": base64.b64encode(cert).decode(),
                               "client-key-data": base64.b64encode(key).decode()})
    as_files = kubeconfig(tmp_path / "files", server=control_plane.server_url, cluster=cluster_entry(control_plane),
                          user={"client-certificate": "tls.crt", "client-key": "tls.key"})
    for path in (as_data, as_files):
        creds = load_credentials(str(path))
        assert creds.token() is None
        assert await list_configs(creds) >= 0


EXEC_PLUGIN = textwrap.dedent('''\
    import json, os, sys, datetime as dt
    info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
    assert info["spec"]["cluster"]["server"] == os.environ["WANT_SERVER"], info
    with open(os.environ["CALLS"], "a") as f:
        f.write("call\\n")
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=float(os.environ["LIFETIME"]))
    print(json.dumps({"apiVersion": info["apiVersion"], "kind": "ExecCredential",
                      "status": {"token": os.environ["TOKEN"], "expirationTimestamp": expires.isoformat()}}))
''')


@pytest.mark.controlplane
@pytest.mark.parametrize(("lifetime", "runs"), [(3600, 1), (5, 3)])  # 5 s: within the refresh margin, every time
async def test_exec_plugin_cached_until_it_expires(tmp_path: Path, control_plane: ControlPlane, lifetime: int,
                                                   runs: int) -> None:
    plugin = tmp_path / "bin" / "plugin.py"
    plugin.parent.mkdir()
    plugin.write_text(EXEC_PLUGIN)
    calls = tmp_path / "calls"
    path = kubeconfig(tmp_path / "config", server=control_plane.server_url, cluster=cluster_entry(control_plane),
                      user={"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                                     "args": [str(plugin)], "interactiveMode": "Never", "provideClusterInfo": True,
                                     "env": [{"name": "TOKEN", "value": control_plane.admin_token},
                                             {"name": "CALLS", "value": str(calls)},
                                             {"name": "LIFETIME", "value": str(lifetime)},
                                             {"name": "WANT_SERVER", "value": control_plane.server_url}]}})
    creds = load_credentials(str(path))
    for _ in range(3):
        assert await list_configs(creds) >= 0
    assert calls.read_text().count("call") == runs


# ---- permanent errors fail fast in one-shot commands ------------------------------------------------------------
async def run_cli(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "exporter", *argv,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.mark.controlplane
async def test_401_and_403_fail_at_once(tmp_path: Path, control_plane: ControlPlane) -> None:
    """A token the apiserver does not know (401), and a real ServiceAccount token with no RBAC (403): one line,
    exit 2, naming the refusal; before, `check` retried them for 60 s and then said 'could not list'."""
    namespace, account = f"awe-kc-{uuid.uuid4().hex[:6]}", "nobody"
    assert control_plane.request("/api/v1/namespaces", "POST", {"metadata": {"name": namespace}})[0] == 201
    assert control_plane.request(f"/api/v1/namespaces/{namespace}/serviceaccounts", "POST",
                                 {"metadata": {"name": account}})[0] == 201
    status, body = control_plane.request(f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", "POST",
                                         {"spec": {"expirationSeconds": 3600}})
    assert status == 201, body
    sa_token = json.loads(body)["status"]["token"]
    try:
        for token, code in (("not-a-token", 401), (sa_token, 403)):
            path = kubeconfig(tmp_path / f"config-{code}", server=control_plane.server_url,
                              cluster=cluster_entry(control_plane), user={"token": token})
            for command in ("check", "audit", "explain"):
                argv = [command, "--kubeconfig", str(path)] + (["failed calling webhook"] if command == "explain"
                                                               else [])
                rc, err = await run_cli(*argv)
                *logged, last = err.strip().splitlines()
                assert rc == 2 and last.startswith("admission-webhook-exporter: error: "), (command, err)
                assert f"refused the credentials: {code}: list " in last, (command, err)
                # Before that line, only the watches' own structured log events (they say the same, once each).
                assert all(line.startswith("ts=") and "event=watch_restart" in line for line in logged), err
    finally:
        control_plane.request(f"/api/v1/namespaces/{namespace}", "DELETE")


def test_invalid_server_url_fails_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = kubeconfig(tmp_path / "config", server="https://api.example:notaport")
    err = cli_error(capsys, "explain", "--kubeconfig", str(path), "failed calling webhook")
    assert f"kubeconfig {path}: cluster 'c': invalid server URL 'https://api.example:notaport'" in err
