"""The Grafana dashboards (dashboards/): rendered files current, well formed, and no silently empty panel.

The static checks read the committed JSON (what users import). The end-to-end check runs every panel's
every query, its Grafana variables substituted, against a real Prometheus (tests/e2e/prometheus.py) that
scrapes the exporter and the real test kube-apiserver, with the alert bundle's recording rules loaded, while
tests/e2e/scenario.py's webhooks are failing in each way the dashboards show, the apiserver is calling them and
the canary has each kind of answer (a verdict each way, a failure's reason, an inconclusive one, a webhook it does
not canary).
Each query must be accepted (``status: success``) and return data; a query that ends in a fill (a NaN row per
webhook, or a stat's ``or vector(0)``, see dashboards/build.py) must return real, non-NaN values without the
fill too, so a renamed metric cannot hide behind it.

The scenario and Prometheus cost ~12 s: the first panel test builds them once, evaluates every query, and
keeps the results (plain data) for the other panel tests of the session. The risk findings panel alone is
skipped, with the reason, while the exporter does not expose ``admission_webhook_risk_info`` (the
configuration audit lands separately).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import prometheus as e2e_prometheus
from tests.e2e.prometheus import ApiserverTarget, Prometheus
from tests.e2e.scenario import Scenario, open_scenario

make_prometheus = e2e_prometheus.make_prometheus  # the fixture, used by this module's tests
ROOT = Path(__file__).resolve().parent.parent
# Where dashboards/build.py writes them: the Helm chart's files/dashboards/ (docs/generation.md).
DASHBOARD_DIR = ROOT / "deploy" / "helm" / "admission-webhook-exporter" / "files" / "dashboards"
DASHBOARDS = {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}
UIDS = {"admission-webhooks-overview": "awe-overview", "admission-webhook-detail": "awe-detail"}
RATE_INTERVAL = "1m"  # $__rate_interval: 4 x a 15 s scrape interval in Grafana; our traffic is well inside it
RISK_METRIC = "admission_webhook_risk_info"
MEASURE_WITHIN_S = 90.0
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
LABEL_VALUES = re.compile(r"^label_values\((?P<expr>.*),\s*(?P<label>\w+)\)$", re.S)


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in dashboard["panels"]:
        out.extend(p.get("panels") or [] if p["type"] == "row" else [p])
    return out


CASES = [(stem, p["title"]) for stem, d in DASHBOARDS.items() for p in panels(d)]


def substitute(expr: str, webhook: str) -> str:
    """Grafana's variables as the test sets them: $cluster = All (.*), $webhook = one of the scenario's."""
    values = {"cluster": ".*", "webhook": webhook, "__rate_interval": RATE_INTERVAL}

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"unknown variable ${name} in {expr}"
        return values[name]

    return VARIABLE.sub(value, expr)


# ------------------------------------------------------------------------------------------------ static


def test_build_check_passes() -> None:
    """The committed JSON and docs/dashboards.md are what dashboards/build.py writes."""
    done = subprocess.run([sys.executable, "-m", "dashboards.build", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_check_fails_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboards import build

    stale = tmp_path / "admission-webhook-detail.json"
    stale.write_text("{}\n")
    monkeypatch.setattr(build, "DETAIL_FILE", stale)
    assert build.main(["--check"]) == 1


def test_without_fill_keeps_only_the_real_query() -> None:
    from dashboards.build import Queries, Settings, without_fill

    q = Queries(Settings.load())
    primary = f"min by ({q.webhook}) (admission_webhook_endpoints_ready{q.exp()})"
    assert without_fill(q.fill(primary)) == primary
    assert without_fill("sum(up) or vector(0)") == "sum(up)"
    assert without_fill(primary) == primary


@pytest.mark.parametrize("stem", sorted(DASHBOARDS))
def test_dashboard_is_well_formed(stem: str) -> None:
    d = DASHBOARDS[stem]
    assert d["uid"] == UIDS[stem]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    cluster = variables["cluster"]
    assert cluster["includeAll"] and cluster["allValue"] == ".*", "must work without a cluster label"
    if stem == "admission-webhook-detail":
        assert "webhook" in variables
    ids = [p["id"] for p in d["panels"]] + [c["id"] for p in d["panels"] for c in p.get("panels") or []]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(d):
        assert p.get("description", "").strip(), f"panel {p['title']!r} has no description"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert "$datasource" not in t["expr"]
            # Every selector of a series is scoped to the chosen cluster (vector(0) selects nothing).
            for selector in re.findall(r"\{[^}]*\}", t["expr"]):
                assert 'cluster=~"$cluster"' in selector, (p["title"], selector)
            if stem == "admission-webhook-detail" and "admission_webhook_exporter" not in t["expr"]:
                assert 'name="$webhook"' in t["expr"], (p["title"], t["expr"])


def test_settings_read_durations() -> None:
    from dashboards.build import seconds

    assert seconds("5m") == 300 and seconds("1h30m") == 5400 and seconds("45s") == 45
    for bad in ("", "5", "5d", "m5", "5m "):
        with pytest.raises(ValueError, match="not a duration"):
            seconds(bad)


def test_canary_hints_cover_each_closed_set() -> None:
    """The detail dashboard's hint for every canary reason the exporter can expose, and none it cannot."""
    from dashboards.build import FAILURE_HINTS, INCONCLUSIVE_HINTS, NOT_CANARIED_HINTS
    from exporter.canary import UNRECOGNISED, Inconclusive, NotCanaried
    from exporter.reasons import Reason

    assert set(NOT_CANARIED_HINTS) == {r.value for r in NotCanaried}
    assert set(INCONCLUSIVE_HINTS) == {r.value for r in Inconclusive}
    assert set(FAILURE_HINTS) == {r.value for r in Reason} | {UNRECOGNISED}


# The canary's per-webhook families (docs/metrics.md), each of which the detail dashboard must read for $webhook.
CANARY_FAMILIES = ("admission_webhook:canary_success:min", "admission_webhook_canary_failure_info",
                   "admission_webhook_canary_inconclusive_info", "admission_webhook_not_canaried_info",
                   "admission_webhook_canary_duration_seconds", "admission_webhook_canary_timestamp_seconds")


def test_detail_shows_the_canary() -> None:
    """Every canary family in a detail panel, and each reason family's `reason` in a label column with hints."""
    detail = DASHBOARDS["admission-webhook-detail"]
    exprs = [t["expr"] for p in panels(detail) for t in p["targets"]]
    for family in CANARY_FAMILIES:
        assert any(re.search(re.escape(family) + r'\{[^}]*name="\$webhook"', e) for e in exprs), family
    table = next(p for p in panels(detail) if p["title"] == "Canary")
    mapped = {o["matcher"]["options"]: prop["value"] for o in table["fieldConfig"]["overrides"]
              for prop in o["properties"] if prop["id"] == "mappings"}
    for label in ("canary_failure", "canary_inconclusive", "not_canaried"):
        assert any(f'"{label}", "", "reason"' in e for e in exprs), label
        assert mapped[label][0]["options"], label


def test_docs_list_every_panel_and_query() -> None:
    text = (ROOT / "docs" / "dashboards.md").read_text()
    for d in DASHBOARDS.values():
        assert f"uid `{d['uid']}`" in text
        for p in panels(d):
            assert f"### {p['title']} ({p['type']})" in text
            for t in p["targets"]:
                assert t["expr"] in text


# ------------------------------------------------------------------------------------------------ end to end


@dataclass
class TargetResult:
    ref: str
    expr: str
    errors: list[str] = field(default_factory=list)  # status != success, Prometheus' words
    rows: int = 0  # most series returned for any candidate $webhook
    real: bool = False  # the query without its fill returned a non-NaN value for some candidate
    # $webhook -> what the whole query returned for it: (labels, values) per series
    answers: dict[str, list[tuple[dict[str, str], list[float]]]] = field(default_factory=dict)


@dataclass
class Measured:
    targets: dict[tuple[str, str], list[TargetResult]]
    variables: dict[tuple[str, str], list[str]]  # (dashboard, variable) -> values of its label
    risk_exposed: bool
    webhooks: list[str]
    seconds: float
    roles: dict[str, str] = field(default_factory=dict)  # the scenario's role -> its webhook's name


_measured: Measured | BaseException | None = None


def _values(result: list[dict[str, Any]]) -> list[float]:
    out: list[float] = []
    for series in result:
        points = series.get("values") or ([series["value"]] if "value" in series else [])
        out += [float(v) for _, v in points]
    return out


def evaluate(prom: Prometheus, webhooks: list[str]) -> Measured:
    """Every target of every panel, for every candidate $webhook, as Grafana would send it."""
    targets: dict[tuple[str, str], list[TargetResult]] = {}
    for stem, d in DASHBOARDS.items():
        for p in panels(d):
            results = []
            for t in p["targets"]:
                r = TargetResult(t["refId"], t["expr"])
                candidates = webhooks if "$webhook" in t["expr"] else webhooks[:1]
                for hook in candidates:
                    for expr, full in ((substitute(t["expr"], hook), True),
                                       (substitute(_without_fill(t["expr"]), hook), False)):
                        if t.get("instant"):
                            envelope = prom.api("query", query=expr)
                        else:
                            end = time.time()
                            envelope = prom.api("query_range", query=expr, start=f"{end - 30:.3f}",
                                                end=f"{end:.3f}", step="1")
                        if envelope.get("status") != "success":
                            r.errors.append(f"{envelope.get('errorType')}: {envelope.get('error')} in {expr}")
                            continue
                        result = envelope["data"]["result"]
                        if full:
                            r.rows = max(r.rows, len(result))
                            r.answers[hook] = [(series["metric"], _values([series])) for series in result]
                        elif any(not math.isnan(v) for v in _values(result)):
                            r.real = True
                results.append(r)
            targets[(stem, p["title"])] = results
    variables: dict[tuple[str, str], list[str]] = {}
    for stem, d in DASHBOARDS.items():
        for v in d["templating"]["list"]:
            if v["type"] != "query":
                continue
            m = LABEL_VALUES.match(v["query"]["query"])
            assert m, v["query"]
            label = m.group("label")
            rows = prom.query(f"group by ({label}) ({substitute(m.group('expr'), webhooks[0])})")
            variables[(stem, v["name"])] = sorted(r["metric"][label] for r in rows if label in r["metric"])
    risk = bool(prom.query(f"count({RISK_METRIC})"))
    return Measured(targets, variables, risk, webhooks, 0.0)


def _without_fill(expr: str) -> str:
    # Imported here, not at the top: dashboards.build needs grafana-foundation-sdk (the dev extra), and the
    # tests that read only the committed JSON should not depend on it.
    from dashboards.build import without_fill

    return without_fill(expr)


async def _measure(control_plane: Any, kube_api: Any, servers: Any, make_prometheus: Any) -> Measured:
    started = time.monotonic()
    async with open_scenario(kube_api, control_plane, servers) as s:
        prom: Prometheus = await asyncio.to_thread(make_prometheus, exporter_port=s.exporter_port,
                                                   apiserver=ApiserverTarget.of(control_plane))
        await asyncio.to_thread(prom.wait_for_targets)
        # Calls spread over several scrapes, so every apiserver counter has a rate and the latency histogram
        # a quantile; then wait until the recording rules and those rates are visible.
        await s.traffic(rounds=12, pause_s=0.4)
        await _until(s, prom, started)
        measured = await asyncio.to_thread(evaluate, prom, [h.name for h in s.hooks.values()])
        measured.roles = {role: h.name for role, h in s.hooks.items()}
        await asyncio.to_thread(prom.stop)
    measured.seconds = time.monotonic() - started
    return measured


async def _until(s: Scenario, prom: Prometheus, started: float) -> None:
    ready = [
        f'rate(apiserver_admission_webhook_request_total{{name="{s["healthy"].name}"}}[{RATE_INTERVAL}]) > 0',
        f'rate(apiserver_admission_webhook_fail_open_count{{name="{s["fail_open"].name}"}}[{RATE_INTERVAL}]) > 0',
        f'rate(apiserver_admission_webhook_rejection_count{{name="{s["broken"].name}"}}[{RATE_INTERVAL}]) > 0',
        f'admission_webhook:probe_success:min{{name="{s["no_endpoints"].name}"}} == 0',
        f'admission_webhook_endpoint:tls_certificate_expiry_seconds:min{{name="{s["expiring"].name}"}}',
        f'admission_webhook:ca_bundle_expiry_seconds:min{{name="{s["healthy"].name}"}}',
        # The canary's every kind of answer (scenario.py): a verdict each way, a failure's reason, an
        # inconclusive answer, a webhook it does not canary.
        f'admission_webhook:canary_success:min{{name="{s["healthy"].name}"}} == 1',
        f'admission_webhook:canary_success:min{{name="{s["broken"].name}"}} == 0',
        f'admission_webhook_canary_failure_info{{name="{s["broken"].name}"}}',
        f'admission_webhook_canary_inconclusive_info{{name="{s["risky"].name}"}}',
        f'admission_webhook_not_canaried_info{{name="{s["fail_open"].name}"}}',
    ]
    while missing := [q for q in ready if not await asyncio.to_thread(prom.query, q)]:
        assert time.monotonic() - started < MEASURE_WITHIN_S, f"no data within {MEASURE_WITHIN_S:g}s for {missing}"
        await asyncio.sleep(0.5)


async def measured(control_plane: Any, kube_api: Any, servers: Any, make_prometheus: Any) -> Measured:
    """The session's measurement, made by the first test that asks (a failure is kept and re-raised)."""
    global _measured
    if _measured is None:
        try:
            _measured = await asyncio.wait_for(_measure(control_plane, kube_api, servers, make_prometheus),
                                               MEASURE_WITHIN_S + 30)
        except (Exception, asyncio.CancelledError) as e:
            _measured = e
            raise
    if isinstance(_measured, BaseException):
        raise RuntimeError(f"the end-to-end measurement failed in an earlier test: {_measured!r}")
    return _measured


# exporter/server.py passes shutdown_timeout to TCPSite, which aiohttp >= 3.12 deprecates; not ours to fix here,
# and the warnings-as-errors setting would turn it into a setup error of the end-to-end tests.
AIOHTTP_DEPRECATION = "ignore:shutdown_timeout should be set on BaseRunner:DeprecationWarning"


@pytest.mark.parametrize(("stem", "title"), CASES, ids=[f"{stem}/{title}" for stem, title in CASES])
@pytest.mark.controlplane
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.filterwarnings(AIOHTTP_DEPRECATION)
async def test_panel_queries_are_valid_and_return_data(stem: str, title: str, make_prometheus: Any,
                                                       control_plane: Any, kube_api: Any, servers: Any) -> None:
    m = await measured(control_plane, kube_api, servers, make_prometheus)
    results = m.targets[(stem, title)]
    if any(RISK_METRIC in r.expr for r in results) and not m.risk_exposed:
        pytest.skip(f"{RISK_METRIC} is not exposed by the exporter yet (the configuration audit lands "
                    "separately): this panel's query is unchecked; every other panel was checked")
    errors = [e for r in results for e in r.errors]
    assert not errors, "\n".join(errors)
    empty = [r.ref for r in results if not r.rows]
    assert not empty, f"queries {empty} returned no data for any of {m.webhooks}: " + \
        "; ".join(r.expr for r in results if r.ref in empty)
    filled = [r.ref for r in results if not r.real]
    assert not filled, "only the fill returned data (the real query is empty or NaN): " + \
        "; ".join(_without_fill(r.expr) for r in results if r.ref in filled)


@pytest.mark.controlplane
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.filterwarnings(AIOHTTP_DEPRECATION)
async def test_variables_list_the_webhooks(make_prometheus: Any, control_plane: Any, kube_api: Any,
                                           servers: Any) -> None:
    m = await measured(control_plane, kube_api, servers, make_prometheus)
    assert set(m.webhooks) <= set(m.variables[("admission-webhook-detail", "webhook")])
    # No external cluster label here: the cluster variable has no values and All (.*) is what the queries got.
    assert m.variables[("admission-webhooks-overview", "cluster")] == []
    print(f"end-to-end measurement took {m.seconds:.1f}s")
    for (stem, title), results in m.targets.items():
        print(f"  {stem}/{title}: " + ", ".join(f"{r.ref}={r.rows}{'' if r.real else ' (fill only)'}"
                                                for r in results))


@pytest.mark.controlplane
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.filterwarnings(AIOHTTP_DEPRECATION)
async def test_detail_canary_table_reads_each_answer(make_prometheus: Any, control_plane: Any, kube_api: Any,
                                                     servers: Any) -> None:
    """The Canary table's row for each kind of canary answer the scenario has: the verdict, the reason in its own
    column (with a hint for it), and a last canary that is recent."""
    from dashboards.build import FAILURE_HINTS, INCONCLUSIVE_HINTS, NOT_CANARIED_HINTS

    m = await measured(control_plane, kube_api, servers, make_prometheus)
    columns = {r.ref: r for r in m.targets[("admission-webhook-detail", "Canary")]}

    def row(ref: str, role: str) -> tuple[dict[str, str], list[float]]:
        answer = columns[ref].answers[m.roles[role]]
        assert len(answer) == 1, (ref, role, answer)  # one configuration: one row per column
        return answer[0]

    def label(ref: str, role: str, name: str) -> str:
        return row(ref, role)[0].get(name, "")

    assert row("A", "healthy")[1] == [1.0] and row("A", "denying")[1] == [1.0]
    assert row("A", "broken")[1] == [0.0]
    assert label("B", "broken", "canary_failure") in FAILURE_HINTS
    assert label("B", "healthy", "canary_failure") == ""
    assert math.isnan(row("A", "risky")[1][0]), "an inconclusive answer has no verdict"
    assert label("C", "risky", "canary_inconclusive") == "other_webhook"
    assert "other_webhook" in INCONCLUSIVE_HINTS
    assert math.isnan(row("A", "fail_open")[1][0]), "a webhook not canaried has no verdict"
    assert label("D", "fail_open", "not_canaried") == "failure_policy_ignore"
    assert "failure_policy_ignore" in NOT_CANARIED_HINTS
    for role in ("healthy", "broken"):
        took, ratio, ago = row("E", role)[1][0], row("G", role)[1][0], row("H", role)[1][0]
        assert took > 0 and 0 < ratio < 1, (role, took, ratio)  # every scenario webhook's timeoutSeconds is 3
        assert 0 <= ago < MEASURE_WITHIN_S, (role, ago)  # the canary runs every second here
