"""The alerting bundle (alerts/): promtool checks and tests, rendered files current, every alert complete.

The chart side of the same rules (prometheusRule.config, rendered by helm) is tested in tests/test_deploy.py.

alerts/check.sh needs `promtool` (alerts/install-promtool.sh). Without it that one test is skipped, unless
AWE_REQUIRE_PROMTOOL is set (CI sets it), where a missing promtool fails. The checks that need only
Python and PyYAML always run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
RULE_FILES = sorted((ALERTS / "rules").glob("*.yaml"))
CHART = ROOT / "deploy" / "helm" / "admission-webhook-exporter"
RUNBOOKS = ROOT / "docs" / "runbooks"
SEVERITIES = {"critical", "warning", "info"}

# Series the rules use that the exporter does not expose, so docs/metrics.md does not list them:
# Prometheus' own `up`, and the kube-apiserver's admission webhook metrics (k8s.io/apiserver).
NOT_OURS = {
    "up",
    "apiserver_admission_webhook_rejection_count",
    "apiserver_admission_webhook_fail_open_count",
    "apiserver_admission_webhook_request_total",
    "apiserver_admission_webhook_admission_duration_seconds_bucket",
}

PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "inf", "nan",
}


def rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def alert_names() -> list[str]:
    return sorted({rule["alert"] for rule in alerts()})


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects. Not a parser: enough for our own rules.

    Drops string literals, matcher braces, range/offset brackets and the label lists of by/without/on/
    ignoring/group_*; what is left that is an identifier, not a function call and not a keyword, is a
    metric or recording-rule name.
    """
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\b(\s*\()?", expr):
        if not m.group(2) and m.group(1).lower() not in PROMQL_WORDS:
            names.add(m.group(1))
    return names


def queries_in_templates(text: str) -> list[str]:
    """PromQL inside annotation templates: {{ ... printf `QUERY` ... | query }} and {{ query "QUERY" }}."""
    return re.findall(r"printf\s+`([^`]*)`", text) + re.findall(r'query\s+"((?:[^"\\]|\\.)*)"', text)


def documented_metrics() -> set[str]:
    return set(re.findall(r"^\|\s*`([a-z_:]+)`\s*\|", (ROOT / "docs" / "metrics.md").read_text(), re.M))


def test_check_sh_passes() -> None:
    if shutil.which("promtool") is None:
        if os.environ.get("AWE_REQUIRE_PROMTOOL"):
            pytest.fail("AWE_REQUIRE_PROMTOOL is set but promtool is not on PATH: run alerts/install-promtool.sh")
        pytest.skip("promtool not on PATH (run alerts/install-promtool.sh; AWE_REQUIRE_PROMTOOL=1 makes this fail)")
    run = subprocess.run(["bash", str(ALERTS / "check.sh")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHON": sys.executable})
    assert run.returncode == 0, f"alerts/check.sh failed:\n{run.stdout}\n{run.stderr}"


def test_rendered_files_are_current() -> None:
    run = subprocess.run([sys.executable, str(ALERTS / "render.py"), "--check"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr


def test_every_rule_file_has_a_promtool_test_file() -> None:
    assert RULE_FILES
    tests = {p.name for p in (ALERTS / "tests").glob("*.yaml")}
    assert {p.name for p in RULE_FILES} <= tests
    for name in tests:
        rule_files = yaml.safe_load((ALERTS / "tests" / name).read_text())["rule_files"]
        assert f"../rules/{name}" in rule_files, f"alerts/tests/{name} does not load ../rules/{name}"


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: f"{r['alert']}-{r['labels'].get('severity')}")
def test_alert_is_complete(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert re.fullmatch(r"AdmissionWebhook[A-Z][A-Za-z0-9]*", name), name
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key), f"{name}: no {key}"
    assert "{{" not in annotations["summary"], f"{name}: summary must be a static sentence"
    assert "{{" in annotations["description"], f"{name}: description must be templated"
    base = yaml.safe_load((ALERTS / "config.yaml").read_text())["runbook_url_base"]
    assert annotations["runbook_url"] == f"{base}{name}.md"
    assert "for" in rule, f"{name}: no for: (one failed probe or scrape would fire it)"


def test_one_alert_name_per_concern_and_severity() -> None:
    """Two rules with one name must differ in severity: that is what the second rule is for."""
    seen: dict[tuple[str, str], int] = {}
    for rule in alerts():
        key = (rule["alert"], rule["labels"]["severity"])
        seen[key] = seen.get(key, 0) + 1
    assert all(count == 1 for count in seen.values()), {k: c for k, c in seen.items() if c > 1}


@pytest.mark.parametrize("name", alert_names())
def test_runbook_exists(name: str) -> None:
    runbook = RUNBOOKS / f"{name}.md"
    assert runbook.is_file(), f"docs/runbooks/{name}.md is missing"
    assert runbook.read_text().startswith(f"# {name}\n")


def test_alerts_table_lists_every_alert_and_recording_rule() -> None:
    table = (ROOT / "docs" / "alerts.md").read_text()
    for name in alert_names():
        assert f"[{name}](runbooks/{name}.md)" in table, f"docs/alerts.md does not list {name}"
    for rule in rules():
        if "record" in rule:
            assert f"`{rule['record']}`" in table, f"docs/alerts.md does not list {rule['record']}"


def test_every_metric_used_is_documented() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    used: dict[str, set[str]] = {}
    for rule in rules():
        who = rule.get("alert") or rule["record"]
        description = str(rule.get("annotations", {}).get("description", ""))
        texts = [str(rule["expr"]), *queries_in_templates(description)]
        for text in texts:
            for metric in metric_names(text):
                used.setdefault(metric, set()).add(who)
    assert "admission_webhook_probe_success" in used  # the parser finds names at all
    unknown = set(used) - documented_metrics() - recorded - NOT_OURS
    assert not unknown, {m: sorted(used[m]) for m in sorted(unknown)}


def test_metric_name_parser() -> None:
    expr = (
        'sum by (cluster, name) (rate(apiserver_x_total{job="a", error_type="b"}[5m])) > 0\n'
        'unless on (name) (rec:ord:min == 0) and absent(up{job="x"}) or label_replace(m_info, "a", "$1", "b", "(.*)")'
    )
    assert metric_names(expr) == {"apiserver_x_total", "rec:ord:min", "up", "m_info"}


def _render_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("awe_alerts_render", ALERTS / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chart_gets_the_sources_with_its_value_names() -> None:
    """files/rules/X.yaml is alerts/src/X.yaml with ${cert_critical_days} spelled ${certCriticalDays}, and
    values.yaml's prometheusRule.config holds every key of config.yaml, camelCased, with its default."""
    render = _render_module()
    assert render.chart_key("cert_critical_days") == "certCriticalDays"
    assert render.chart_key("apiserver_rate_window") == "apiserverRateWindow"
    config = yaml.safe_load((ALERTS / "config.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())["prometheusRule"]["config"]
    assert values == {render.chart_key(k): v for k, v in config.items()}
    chart_files = sorted((CHART / "files" / "rules").glob("*.yaml"))
    assert [p.name for p in chart_files] == [p.name for p in sorted((ALERTS / "src").glob("*.yaml"))]
    for path in chart_files:
        text = path.read_text()
        assert set(re.findall(r"\$\{(\w+)\}", text)) <= set(values), path.name
        source = (ALERTS / "src" / path.name).read_text()
        assert re.sub(r"\$\{(\w+)\}", lambda m: "${" + render.chart_key(m.group(1)) + "}", source) in text


def test_values_yaml_defaults_follow_config_yaml_and_keep_their_comments() -> None:
    render = _render_module()
    text = (CHART / "values.yaml").read_text()
    config = yaml.safe_load((ALERTS / "config.yaml").read_text())
    assert render.chart_values(text, config) == text
    changed = render.chart_values(text, {**config, "cert_critical_days": 3, "endpoints_for": "30s"})
    diff = [(a, b) for a, b in zip(text.splitlines(), changed.splitlines(), strict=True) if a != b]
    assert diff == [("    certCriticalDays: 7", "    certCriticalDays: 3"),
                    ("    endpointsFor: 2m", "    endpointsFor: 30s")]
    with pytest.raises(render.RenderError, match=r"prometheusRule.config lacks newThingFor .*add it there with a "
                                                 r"comment"):
        render.chart_values(text, {**config, "new_thing_for": "1m"})
    with pytest.raises(render.RenderError, match=r"prometheusRule.config.auditFor is not a key of alerts/config"):
        render.chart_values(text, {k: v for k, v in config.items() if k != "audit_for"})


def _render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ALERTS / "render.py"), *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_overrides_change_only_what_they_name(tmp_path: Path) -> None:
    """--set renders elsewhere, changes the threshold, and rejects a key config.yaml does not have."""
    out = tmp_path / "rules"
    run = _render("--rules-dir", str(out), "--set", "cert_critical_days=3")
    assert run.returncode == 0, run.stderr
    rendered = (out / "certificates.yaml").read_text()
    assert "tls_certificate_expiry_seconds:min < 3 * 86400" in rendered
    assert "tls_certificate_expiry_seconds:min < 7 * 86400" not in rendered
    assert "ca_bundle_expiry_seconds:min < 7 * 86400" in rendered  # its own key, untouched
    assert (out / "probes.yaml").read_text() == (ALERTS / "rules" / "probes.yaml").read_text()
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["rules", *(p.name for p in RULE_FILES)]), \
        "an override must write its rule files and nothing else (the chart keeps the defaults)"
    bad = _render("--rules-dir", str(out), "--set", "cert_critical_day=3")
    assert bad.returncode == 2 and "unknown key(s) cert_critical_day" in bad.stderr


@pytest.mark.parametrize(("override", "message"), [
    ("probe_failure_for=2 minutes", "probe_failure_for: '2 minutes' is not a Prometheus duration"),
    ("apiserver_rate_window=5", "apiserver_rate_window: '5' is not a Prometheus duration"),
    ("cert_warning_days=three", "cert_warning_days: 'three' is not a number"),
    ("latency_timeout_ratio=", "latency_timeout_ratio must not be empty"),
    ("cluster_label=", "cluster_label must not be empty"),
])
def test_bad_overrides_are_refused_with_the_key_named(tmp_path: Path, override: str, message: str) -> None:
    run = _render("--rules-dir", str(tmp_path), "--set", override)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert not list(tmp_path.iterdir())


def test_overrides_without_rules_dir_are_refused() -> None:
    """The committed alerts/rules always hold the defaults the promtool tests pin."""
    run = _render("--set", "cert_critical_days=3")
    assert run.returncode == 2 and "give --rules-dir" in run.stderr
