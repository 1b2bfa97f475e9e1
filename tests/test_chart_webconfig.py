"""The chart's webConfig values: the exporter's --web.config.file, its Secrets, the probes, the ServiceMonitor.

* Defaults render exactly as before: no web configuration, probes on the metrics port, a plain-HTTP
  ServiceMonitor (so existing installs keep working and deploy/manifests does not change).
* With TLS, a client CA and a bearer token: the rendered web-config.yml is accepted by the exporter's own parser;
  every file it names lies in a whole-Secret volume of the right Secret (no subPath, so rotations reach the pod);
  the kubelet probes the health port; the ServiceMonitor has scheme https, tlsConfig (CA from the TLS Secret,
  serverName <fullname>.<namespace>.svc, Prometheus' client certificate) and authorization from the token Secret.
* Basic auth: the hash in the web configuration, the ServiceMonitor's basicAuth from a basic-auth Secret.
* Contradictions fail the render with a message instead of a crash-looping pod or a target that is never up.
* For real: the rendered web configuration, with its Secret volumes laid out in a temporary folder, is served by
  the exporter, and a client scraping exactly the way the rendered ServiceMonitor says (CA, serverName, client
  certificate, bearer token) gets /metrics while one without the token or the certificate does not.
* On the real test kube-apiserver with the prometheus-operator CRDs, the secured objects pass server-side dry run.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.webconfig import load, parse
from tests.chart import (
    CHART,
    NAMESPACE,
    apply,
    dynamic_client,
    ensure_namespace,
    install_crds,
    only,
    require_helm,
    run,
    template,
    template_error,
)
from tests.controlplane.harness import ControlPlane
from tests.helpers import uid
from tests.test_chart_install import Helm
from tests.webtls import TOKEN, Pki, bcrypt_hash, get, refused, serving, write_pem

CHART_DIR = "/etc/admission-webhook-exporter"
FULLNAME = "admission-webhook-exporter"
SECURED = ("webConfig.tls.enabled=true", "webConfig.tls.secretName=awe-tls",
           "webConfig.tls.clientCASecretName=awe-client-ca", "webConfig.bearerToken.secretName=awe-scrape-token",
           "serviceMonitor.tlsConfig.clientCertSecretName=prometheus-scrape-client",
           "webConfig.headers.X-Content-Type-Options=nosniff")


@pytest.fixture(scope="module")
def helm() -> Path:
    return require_helm()


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def endpoint(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (e,) = only(docs, "ServiceMonitor")["spec"]["endpoints"]
    return e


def web_config(docs: list[dict[str, Any]]) -> str:
    secrets = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == f"{FULLNAME}-web-config"]
    assert len(secrets) == 1
    text: str = secrets[0]["stringData"]["web-config.yml"]
    return text


def test_defaults_are_plain_http_as_before(helm: Path) -> None:
    docs = template(helm)
    assert not [d for d in docs if d["kind"] == "Secret"]
    c = container(docs)
    assert not [a for a in c["args"] if a.startswith(("--web.config.file", "--health-listen-address"))]
    assert [p["name"] for p in c["ports"]] == ["metrics"]
    assert c["livenessProbe"]["httpGet"]["port"] == c["readinessProbe"]["httpGet"]["port"] == "metrics"
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    e = endpoint(docs)
    assert not {"scheme", "tlsConfig", "authorization", "basicAuth"} & set(e)


def test_tls_client_ca_and_token(helm: Path, tmp_path: Path) -> None:
    docs = template(helm, *SECURED)
    text = web_config(docs)
    config = parse(text.encode(), Path(CHART_DIR) / "web" / "web-config.yml")
    assert config.tls is not None
    assert (config.tls.cert_file, config.tls.key_file, config.tls.client_ca_file) == (
        Path(f"{CHART_DIR}/tls/tls.crt"), Path(f"{CHART_DIR}/tls/tls.key"), Path(f"{CHART_DIR}/client-ca/ca.crt"))
    assert config.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert config.bearer_token_files == (Path(f"{CHART_DIR}/token/token"),)
    assert config.headers == (("X-Content-Type-Options", "nosniff"),)

    c = container(docs)
    assert f"--web.config.file={CHART_DIR}/web/web-config.yml" in c["args"]
    assert "--health-listen-address=:10048" in c["args"]
    assert {"name": "health", "containerPort": 10048, "protocol": "TCP"} in c["ports"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    # Every file the configuration names is in a whole-Secret volume (no subPath) of the right Secret.
    volumes = {v["name"]: v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    want = {f"{CHART_DIR}/web/web-config.yml": f"{FULLNAME}-web-config", f"{CHART_DIR}/tls/tls.crt": "awe-tls",
            f"{CHART_DIR}/tls/tls.key": "awe-tls", f"{CHART_DIR}/client-ca/ca.crt": "awe-client-ca",
            f"{CHART_DIR}/token/token": "awe-scrape-token"}
    assert {str(p) for _, p in config.files()} | {f"{CHART_DIR}/web/web-config.yml"} == set(want)
    for path, secret in want.items():
        mount = mounts[str(Path(path).parent)]
        assert "subPath" not in mount and mount["readOnly"] is True
        assert volumes[mount["name"]]["secret"]["secretName"] == secret, path

    e = endpoint(docs)
    assert e["scheme"] == "https"
    assert e["tlsConfig"] == {
        "serverName": f"{FULLNAME}.{NAMESPACE}.svc",
        "ca": {"secret": {"name": "awe-tls", "key": "ca.crt"}},
        "cert": {"secret": {"name": "prometheus-scrape-client", "key": "tls.crt"}},
        "keySecret": {"name": "prometheus-scrape-client", "key": "tls.key"}}
    assert e["authorization"] == {"type": "Bearer", "credentials": {"name": "awe-scrape-token", "key": "token"}}
    assert "basicAuth" not in e


def test_basic_auth_and_tuning(helm: Path) -> None:
    hashed = bcrypt_hash()
    docs = template(helm, "webConfig.tls.enabled=true", "webConfig.tls.secretName=awe-tls",
                    f"webConfig.basicAuthUsers.prometheus={hashed}", "serviceMonitor.basicAuth.secretName=awe-basic",
                    "webConfig.tls.minVersion=TLS13", "webConfig.tls.curvePreferences={X25519}",
                    "serviceMonitor.tlsConfig.serverName=metrics.example.com",
                    "serviceMonitor.tlsConfig.caSecretName=corp-ca", "serviceMonitor.tlsConfig.caKey=root.pem")
    config = parse(web_config(docs).encode(), Path(CHART_DIR) / "web" / "web-config.yml")
    assert config.basic_auth_users == {"prometheus": hashed.encode()}
    assert config.tls is not None and config.tls.client_auth_type == "NoClientCert"
    assert (config.tls.min_version, config.tls.curve_preferences) == ("TLS13", ("X25519",))
    e = endpoint(docs)
    assert e["basicAuth"] == {"username": {"name": "awe-basic", "key": "username"},
                              "password": {"name": "awe-basic", "key": "password"}}
    assert e["tlsConfig"] == {"serverName": "metrics.example.com", "ca": {"secret": {"name": "corp-ca",
                                                                                     "key": "root.pem"}}}
    # A token alone, without TLS: authorization over plain HTTP, no scheme change.
    plain = endpoint(template(helm, "webConfig.bearerToken.secretName=t"))
    assert "scheme" not in plain and plain["authorization"]["credentials"] == {"name": "t", "key": "token"}


@pytest.mark.parametrize(("sets", "message"), [
    (("webConfig.tls.enabled=true",), "webConfig.tls.secretName is required with webConfig.tls.enabled"),
    (("webConfig.tls.enabled=true", "webConfig.tls.secretName=s", "webConfig.tls.clientAuthType=RequireAnyClientCert"),
     "webConfig.tls.clientAuthType RequireAnyClientCert accepts any client certificate unverified"),
    (("webConfig.tls.enabled=true", "webConfig.tls.secretName=s", "webConfig.tls.clientAuthType=Always"),
     'webConfig.tls.clientAuthType "Always": expected NoClientCert'),
    (("webConfig.tls.enabled=true", "webConfig.tls.secretName=s",
      "webConfig.tls.clientAuthType=RequireAndVerifyClientCert"),
     "webConfig.tls.clientCASecretName is required with clientAuthType RequireAndVerifyClientCert"),
    (("webConfig.tls.secretName=s",), "need webConfig.tls.enabled=true"),
    (("webConfig.tls.enabled=true", "webConfig.tls.secretName=s", "webConfig.tls.clientCASecretName=ca"),
     "serviceMonitor.tlsConfig.clientCertSecretName is required"),
    (("webConfig.basicAuthUsers.p=$2y$04$" + "a" * 53,), "webConfig.basicAuthUsers needs serviceMonitor.basicAuth"),
    (("webConfig.bearerToken.secretName=t", "serviceMonitor.basicAuth.secretName=b"), "choose one"),
])
def test_contradictions_fail_the_render(helm: Path, sets: tuple[str, ...], message: str) -> None:
    assert message in template_error(helm, *sets)


def test_lint_strict_with_web_config(helm: Path) -> None:
    for sets in (",".join(SECURED) + ",serviceMonitor.force=true",
                 "webConfig.bearerToken.secretName=t,networkPolicy.enabled=true"):
        done = run([helm, "lint", "--strict", CHART, "--set", sets])
        assert done.returncode == 0, done.stdout + done.stderr


def lay_out(docs: list[dict[str, Any]], root: Path, secrets: dict[str, dict[str, bytes]]) -> None:
    """Each Secret volume of the Deployment as a folder under `root` (in place of /etc/admission-webhook-exporter)."""
    volumes = {v["name"]: v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    for mount in container(docs)["volumeMounts"]:
        if mount["name"] == "tmp":
            continue
        folder = Path(mount["mountPath"].replace(CHART_DIR, str(root)))
        folder.mkdir(parents=True)
        for key, data in secrets[volumes[mount["name"]]["secret"]["secretName"]].items():
            write_pem(folder, key, data)


async def test_what_the_chart_renders_is_served_and_scraped_as_the_servicemonitor_says(
        helm: Path, pki: Pki, tmp_path: Path) -> None:
    """The Secrets laid out as the pod would see them (under tmp_path instead of /etc), the rendered web
    configuration served, and a scraper configured from the rendered ServiceMonitor alone."""
    docs = template(helm, *SECURED)
    server_name = endpoint(docs)["tlsConfig"]["serverName"]
    serving_cert = pki.server_ca.issue([server_name])  # what a cert-manager Certificate for that name holds
    root = tmp_path / "etc"
    secrets = {"awe-tls": {"tls.crt": serving_cert.cert_pem, "tls.key": serving_cert.key_pem,
                           "ca.crt": pki.server_ca.cert_pem},
               "awe-client-ca": {"ca.crt": pki.client_ca.cert_pem},
               "awe-scrape-token": {"token": TOKEN.encode()},
               "prometheus-scrape-client": {"tls.crt": pki.client.cert_pem, "tls.key": pki.client.key_pem},
               f"{FULLNAME}-web-config": {"web-config.yml": web_config(docs).replace(CHART_DIR, str(root)).encode()}}
    lay_out(docs, root, secrets)
    config_path = root / "web" / "web-config.yml"
    load(config_path)  # what the pod would do at start-up

    e = endpoint(docs)
    tls = e["tlsConfig"]
    ca = secrets[tls["ca"]["secret"]["name"]][tls["ca"]["secret"]["key"]]
    client = secrets[tls["cert"]["secret"]["name"]]
    token = secrets[e["authorization"]["credentials"]["name"]][e["authorization"]["credentials"]["key"]].decode()

    def scraper(with_cert: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=ca.decode())
        if with_cert:
            pem = write_pem(tmp_path, "scraper.pem", client[tls["cert"]["secret"]["key"]]
                            + client[tls["keySecret"]["key"]])
            context.load_cert_chain(pem)
        return context

    async with serving(config_path) as served:
        url = f"https://127.0.0.1:{served.port}{e['path']}"
        answer = await get(url, tls=scraper(), server_name=server_name,
                           headers={"Authorization": f"{e['authorization']['type']} {token}"})
        assert answer.status == 200 and "admission_webhook_exporter_build_info" in answer.body
        assert answer.headers["x-content-type-options"] == ["nosniff"]
        assert (await get(url, tls=scraper(), server_name=server_name)).status == 401
        assert await refused(url, tls=scraper(with_cert=False), server_name=server_name,
                             headers={"Authorization": f"Bearer {token}"})


@pytest.mark.controlplane
def test_secured_objects_pass_server_side_dry_run_and_notes_say_how_to_scrape(
        helm: Path, kube_api: Any, control_plane: ControlPlane, tmp_path: Path) -> None:
    from kubernetes.dynamic.exceptions import DynamicApiError

    dyn = dynamic_client(kube_api, tmp_path)
    install_crds(dyn)
    ensure_namespace(dyn, NAMESPACE)
    dyn = dynamic_client(kube_api, tmp_path / "fresh")
    docs = template(helm, *SECURED, f"webConfig.basicAuthUsers.p={bcrypt_hash()}")
    for doc in docs:
        if doc["kind"] in ("Secret", "Deployment", "ServiceMonitor"):
            try:
                apply(dyn, doc, dry_run=True)
            except DynamicApiError as err:
                pytest.fail(f"{doc['kind']} refused: {err.status} {err.body!r}", pytrace=False)
    assert yaml.safe_load(web_config(docs))["basic_auth_users"]["p"].startswith("$2y$")

    sets = [a for s in SECURED for a in ("--set", s)]
    release = f"awe-{uid()}"
    notes = Helm(helm, control_plane, tmp_path / "helm").ok("install", release, CHART, "-n", NAMESPACE,
                                                            "--dry-run=server", *sets)
    # Through the port-forward on localhost, verifying the certificate for the name it was issued for (the
    # ServiceMonitor's serverName), which curl's --resolve sends to the port-forward.
    server_name = f"{release}-{FULLNAME}.{NAMESPACE}.svc"
    assert "curl -s --cacert <the exporter's CA> --cert <client cert> --key <client key> " \
           f"--resolve {server_name}:10047:127.0.0.1 https://{server_name}:10047/metrics " \
           "-H \"Authorization: Bearer $(kubectl -n monitoring get secret awe-scrape-token -o jsonpath=" \
           "'{.data.token}' | base64 -d)\"" in notes, notes
    assert "the kubelet probes port 10048" in notes
