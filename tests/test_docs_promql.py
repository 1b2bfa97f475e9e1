"""Every PromQL in README.md and docs/, read from the files and run against a real Prometheus.

People paste these queries into alerts and dashboards, so each must parse, and return what its prose says.
A ``promql`` block holds one expression per paragraph (blank lines between them), each optionally headed by
``#`` comment lines saying what it returns. The end-to-end test runs them all against tests/e2e/prometheus.py
scraping the exporter and the real kube-apiserver while tests/e2e/scenario.py's webhooks fail in their
different ways, plus one **degraded** webhook (one endpoint answers, the other refuses: the case that
separates "every endpoint is failing" from "some endpoint is failing"), while the apiserver calls them:

* README: each expression has a claim below, keyed by its comment; an expression without one fails.
* Runbooks: ``NAME``/``CONFIG`` stand for the webhook of the alert; each runbook's are given the scenario
  webhook that raises that alert, and must return data about that webhook (and only it).
* docs/dashboards.md is generated from the dashboards: its queries must be exactly the panels' queries, which
  tests/test_dashboards.py runs for data; here they need only to be accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exporter.pki import CertificateAuthority
from tests import factories as f
from tests.e2e import prometheus as e2e_prometheus
from tests.e2e.prometheus import ApiserverTarget, Prometheus
from tests.e2e.scenario import Scenario, open_scenario

make_prometheus = e2e_prometheus.make_prometheus  # the fixture, used by this module's test
ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```promql[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
GRAFANA = {"$cluster": ".*", "$__rate_interval": "1m"}  # as tests/test_dashboards.py sets them
DATA_WITHIN_S = 60.0
# Each runbook's NAME/CONFIG: the scenario webhook that raises its alert.
RUNBOOK_ROLES = {
    "AdmissionWebhookCallsFailing": "broken",  # Fail, refused: the apiserver rejects the calls
    "AdmissionWebhookLatencyHigh": "healthy",
    "AdmissionWebhookConfigurationRisk": "risky",  # timeoutSeconds 20: fail_policy_long_timeout
    "AdmissionWebhookFailingOpen": "fail_open",  # Ignore, refused: the apiserver fails open
    "AdmissionWebhookCanaryFailing": "broken",  # Fail, refused: its canary fails (connection_refused)
}
AIOHTTP_DEPRECATION = "ignore:shutdown_timeout should be set on BaseRunner:DeprecationWarning"


@dataclass(frozen=True)
class Query:
    doc: str  # path relative to the repository
    comment: str  # the `#` lines above the expression, without the `#`
    expr: str

    @property
    def runbook(self) -> str:
        return Path(self.doc).stem if self.doc.startswith("docs/runbooks/") else ""


def doc_queries(path: Path) -> list[Query]:
    found = []
    for m in FENCE.finditer(path.read_text()):
        for paragraph in re.split(r"\n[ \t]*\n", m["body"]):
            lines = [line.removeprefix(m["indent"]) for line in paragraph.strip("\n").splitlines()]
            comment = [line.lstrip("# ").rstrip() for line in lines if line.lstrip().startswith("#")]
            expr = "\n".join(line for line in lines if not line.lstrip().startswith("#")).strip()
            assert expr, f"{path.name}: a promql paragraph with no expression: {paragraph!r}"
            found.append(Query(str(path.relative_to(ROOT)), " ".join(comment), expr))
    return found


QUERIES = [q for p in DOCS for q in doc_queries(p)]


# -- What the README's queries claim -----------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """What the scenario is: its webhooks by role, and the degraded one."""

    scenario: Scenario
    degraded: str  # webhook name

    def name(self, role: str) -> str:
        return self.scenario[role].name

    def ours(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows about this test's webhooks (the shared control plane may hold others')."""
        names = {h.name for h in self.scenario.hooks.values()} | {self.degraded}
        return [r for r in rows if r["metric"].get("name") in names]


Claim = Callable[[list[dict[str, Any]], World], str | None]  # None when it holds, else what is wrong


def every_endpoint_failing(rows: list[dict[str, Any]], w: World) -> str | None:
    got = {(r["metric"]["name"], r["metric"].get("reason")) for r in w.ours(rows)}
    want = {(w.name("broken"), "connection_refused"), (w.name("no_endpoints"), "no_endpoints")}
    return None if got == want else f"expected {sorted(want)} (not the degraded {w.degraded}), got {sorted(got)}"


def days_until_served_expiry(rows: list[dict[str, Any]], w: World) -> str | None:
    days = {r["metric"]["name"]: float(r["value"][1]) for r in w.ours(rows)}
    expiring, healthy = days.get(w.name("expiring")), days.get(w.name("healthy"))
    if expiring is None or healthy is None:
        return f"no value for the expiring or the healthy webhook: {days}"
    if not (2.9 < expiring <= 3.0 and 364 < healthy <= 365):
        return f"expected ~3 days (expiring) and ~365 (healthy), got {expiring} and {healthy}"
    return None


def apiserver_failed_calls(rows: list[dict[str, Any]], w: World) -> str | None:
    failing = {(r["metric"]["name"], r["metric"].get("type")) for r in w.ours(rows) if float(r["value"][1]) > 0}
    # `type` as the exporter's, so the two join on (name, type). broken fails the traffic's calls; the canary's
    # dry runs (the scenario runs it) also reach no_endpoints and the degraded webhook, which the apiserver cannot
    # call either (their Services are not routed to), and every failed call counts, dry run or not.
    want = {(w.name(role), "validating") for role in ("broken", "no_endpoints")} | {(w.degraded, "validating")}
    return None if failing == want else f"expected failed calls for {want} only, got {failing}"


README_CLAIMS: dict[str, Claim] = {
    "Fail-policy webhooks whose every endpoint is failing, with the reason": every_endpoint_failing,
    "Days until the served certificate expires": days_until_served_expiry,
    "The apiserver's own failed calls to the same webhook": apiserver_failed_calls,
}


def about(role: str) -> Claim:
    """A runbook's query: data, and only about the webhook NAME stands for."""

    def claim(rows: list[dict[str, Any]], w: World) -> str | None:
        if not rows:
            return "no data"
        names = {r["metric"].get("name", w.name(role)) for r in rows}
        return None if names == {w.name(role)} else f"rows about {names}, expected only {w.name(role)}"

    return claim


def some_data(rows: list[dict[str, Any]], _: World) -> str | None:
    return None if rows else "no data"


def dashboard_exprs() -> set[str]:
    from tests.test_dashboards import DASHBOARD_DIR, DASHBOARDS, panels  # where the dashboards test reads them

    assert DASHBOARDS, f"no dashboard JSON in {DASHBOARD_DIR}"
    return {t["expr"] for d in DASHBOARDS.values() for p in panels(d) for t in p["targets"]}


def claim_for(q: Query) -> Claim | None:
    """The claim the test checks for `q`; None for the dashboards' (tests/test_dashboards.py checks them)."""
    if q.doc == "README.md":
        assert q.comment in README_CLAIMS, f"README query without a claim in this test: # {q.comment}\n{q.expr}"
        return README_CLAIMS[q.comment]
    if q.doc == "docs/dashboards.md":
        assert q.expr in dashboard_exprs(), f"docs/dashboards.md lists a query no panel has: {q.expr}"
        return None
    assert q.runbook, f"{q.doc}: PromQL outside README, the runbooks and docs/dashboards.md: add its claim here"
    if re.search(r"\b(NAME|CONFIG)\b", q.expr):
        assert q.runbook in RUNBOOK_ROLES, f"{q.doc}: which scenario webhook stands for NAME? {q.expr}"
        return about(RUNBOOK_ROLES[q.runbook])
    return some_data


def test_every_query_is_found_and_has_a_claim() -> None:
    docs = {q.doc for q in QUERIES}
    assert {"README.md", "docs/dashboards.md"} <= docs and sum(d.startswith("docs/runbooks/") for d in docs) >= 5
    for q in QUERIES:
        claim_for(q)


def test_the_readme_query_is_not_the_one_that_matched_any_failing_endpoint() -> None:
    [q] = [q for q in QUERIES if q.comment.startswith("Fail-policy webhooks whose every endpoint is failing")]
    assert "reason" in q.expr and not q.expr.lstrip().startswith("min by")


# -- Running them --------------------------------------------------------------------------------------------
def runnable(q: Query, w: World) -> str:
    expr = q.expr
    for variable, value in GRAFANA.items():
        expr = expr.replace(variable, value)
    if q.runbook in RUNBOOK_ROLES:
        hook = w.scenario[RUNBOOK_ROLES[q.runbook]]
        expr = re.sub(r"\bNAME\b", hook.name, re.sub(r"\bCONFIG\b", hook.configuration, expr))
    return expr


@contextlib.asynccontextmanager
async def degraded_webhook(s: Scenario, netns: Any, tmp_path: Path) -> AsyncIterator[str]:
    """A Fail service webhook with two ready endpoints in a test network namespace: .2 answers, nothing
    listens on .3. Scoped so the apiserver never calls it."""
    tag = uuid.uuid4().hex[:6]
    service, name, config = f"degraded-{tag}", f"degraded-{tag}.e2e.example.com", f"{s.namespace}-degraded"
    ca = CertificateAuthority.create("degraded CA")
    serving = ca.issue([f"{service}.{s.namespace}.svc"])
    (tmp_path / "tls.crt").write_bytes(serving.cert_pem)
    (tmp_path / "tls.key").write_bytes(serving.key_pem)
    answers, refuses = netns.addresses
    netns.popen([sys.executable, "-m", "tests.netns_backend", "--host", answers, "--port", "8443",
                 "--cert", str(tmp_path / "tls.crt"), "--key", str(tmp_path / "tls.key"), "--seconds", "300"],
                cwd=str(ROOT))
    kube = s.kube
    await kube.call(kube.core.create_namespaced_service, s.namespace, f.service(
        s.namespace, service, [{"name": "https", "port": 443, "targetPort": 8443}]))
    await kube.call(kube.discovery.create_namespaced_endpoint_slice, s.namespace, f.endpoint_slice(
        s.namespace, service, [{"name": "https", "port": 8443, "protocol": "TCP"}],
        [(answers, True), (refuses, True)]))
    never = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": s.namespace}},
             "objectSelector": {"matchLabels": {"awe-e2e.example.com/route": "never"}}, "timeoutSeconds": 3}
    hook = f.webhook(name, f.service_client(s.namespace, service, ca.ca_bundle), timeout=None, **never)
    await kube.call(kube.admission.create_validating_webhook_configuration, f.configuration(config, hook))
    try:
        yield name
    finally:
        await kube.call(kube.admission.delete_validating_webhook_configuration, config)


def _check(prom: Prometheus, queries: list[tuple[Query, str, Claim | None]], w: World) -> list[str]:
    """Every query accepted; every claim holding within DATA_WITHIN_S (data arrives scrape by scrape)."""
    deadline = time.monotonic() + DATA_WITHIN_S
    problems: dict[int, str] = {}
    pending = list(range(len(queries)))
    while True:
        for i in list(pending):
            q, expr, claim = queries[i]
            rows = prom.query(expr)  # a query Prometheus refuses raises QueryError, with its own words
            problem = None if claim is None else claim(rows, w)
            if problem is None:
                pending.remove(i)
                problems.pop(i, None)
            else:
                problems[i] = f"{q.doc}: {q.comment or ''}\n  {expr}\n  -> {problem}"
        if not pending or time.monotonic() > deadline:
            return list(problems.values())
        time.sleep(1)


@pytest.mark.controlplane
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.filterwarnings(AIOHTTP_DEPRECATION)
async def test_every_doc_query_runs_and_returns_what_its_prose_claims(
        make_prometheus: Any, control_plane: Any, kube_api: Any, servers: Any, netns_host: Any,
        tmp_path: Path) -> None:
    async with open_scenario(kube_api, control_plane, servers) as s, \
            degraded_webhook(s, netns_host, tmp_path) as degraded:
        w = World(s, degraded)
        prom: Prometheus = await asyncio.to_thread(make_prometheus, exporter_port=s.exporter_port,
                                                   apiserver=ApiserverTarget.of(control_plane))
        await asyncio.to_thread(prom.wait_for_targets)
        # The degraded webhook probed both ways before anything is judged.
        labels = {"configuration": f"{s.namespace}-degraded", "name": degraded, "type": "validating"}
        answers, refuses = netns_host.addresses
        started = time.monotonic()
        while not (s.value("admission_webhook_probe_success", **labels, endpoint=f"{answers}:8443") == 1
                   and s.value("admission_webhook_probe_success", **labels, endpoint=f"{refuses}:8443") == 0):
            assert time.monotonic() - started < DATA_WITHIN_S, "the degraded webhook was not probed"
            await asyncio.sleep(0.2)
        await s.traffic(rounds=12, pause_s=0.4)  # calls over several scrapes: every apiserver rate is set
        queries = [(q, runnable(q, w), claim_for(q)) for q in QUERIES]
        problems = await asyncio.to_thread(_check, prom, queries, w)
        assert not problems, "\n".join(problems)
        print(f"{len(queries)} queries from {len({q.doc for q in QUERIES})} files checked in "
              f"{time.monotonic() - started:.1f}s")
