"""The chart's PrometheusRule and dashboards against their single sources (alerts/, dashboards/build.py).

* With its default values the chart renders exactly alerts/rules/ (the files the promtool tests pin), and those
  rendered groups pass every promtool test in alerts/tests/.
* Each prometheusRule.config value (a key of alerts/config.yaml, camelCased) changes exactly the fields whose
  source in alerts/src holds its placeholder, and nothing else; a bad value fails the render with a message.
* promtool on a render with overrides: `--set prometheusRule.config.endpointsFor=1m` fires
  AdmissionWebhookNoReadyEndpoints after 1m, and `certCriticalDays=3` keeps a certificate 5 days from expiry in
  the warning band; the same test fails on the default render (the control).
* The dashboard ConfigMaps hold exactly what dashboards/build.py generates, labelled `grafana_dashboard: "1"`.

helm as in tests/chart.py; promtool as in tests/test_alerts.py (AWE_REQUIRE_PROMTOOL makes its absence fail).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import ALERT_RULES, REPO, alert_rule_groups, only, require_helm, run, template, template_argv

ALERTS = REPO / "alerts"
SOURCES = sorted((ALERTS / "src").glob("*.yaml"))
CONFIG = yaml.safe_load((ALERTS / "config.yaml").read_text())
PROMTOOL_TIMEOUT = 120


@pytest.fixture(scope="session")
def helm() -> Path:
    return require_helm()


@pytest.fixture(scope="session")
def promtool() -> Path:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("AWE_REQUIRE_PROMTOOL"):
            pytest.fail("AWE_REQUIRE_PROMTOOL is set but promtool is not on PATH: run alerts/install-promtool.sh")
        pytest.skip("promtool not on PATH (run alerts/install-promtool.sh; AWE_REQUIRE_PROMTOOL=1 makes this fail)")
    return Path(found)


def chart_key(key: str) -> str:
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key)


def groups_of(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = only(docs, "PrometheusRule")["spec"]["groups"]
    return groups


def leaves(data: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """Every scalar of a nested structure by its path: ((0, 'rules', 3, 'for'), '2m')."""
    if isinstance(data, dict):
        return {p: v for k, item in data.items() for p, v in leaves(item, (*path, k)).items()}
    if isinstance(data, list):
        return {p: v for i, item in enumerate(data) for p, v in leaves(item, (*path, i)).items()}
    return {path: data}


def write_rules(groups: list[dict[str, Any]], directory: Path) -> None:
    """The rendered groups as alerts/rules/ lays them out (same file names), for alerts/tests/ to load."""
    file_of = {g["name"]: path.name for path in ALERT_RULES for g in yaml.safe_load(path.read_text())["groups"]}
    by_file: dict[str, list[dict[str, Any]]] = {}
    for group in groups:
        by_file.setdefault(file_of[group["name"]], []).append(group)
    directory.mkdir(parents=True)
    for name, file_groups in by_file.items():
        (directory / name).write_text(yaml.safe_dump({"groups": file_groups}, sort_keys=False))


def promtool_test(promtool: Path, *test_files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), "test", "rules", *map(str, test_files)], capture_output=True, text=True,
                          timeout=PROMTOOL_TIMEOUT, check=False)


# --------------------------------------------------------------------------------------------- #
# defaults


def test_default_render_passes_every_promtool_test(helm: Path, promtool: Path, tmp_path: Path) -> None:
    groups = groups_of(template(helm))
    assert groups == alert_rule_groups()  # the same data; promtool then proves it behaves the same
    write_rules(groups, tmp_path / "rules")
    shutil.copytree(ALERTS / "tests", tmp_path / "tests")
    done = promtool_test(promtool, *sorted((tmp_path / "tests").glob("*.yaml")))
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------------------------- #
# each value changes exactly what uses it

# A value unlike every default, of the right kind, per key.
OVERRIDES = {
    "exporter_selector": 'job="awe-test", namespace="ops"',
    "apiserver_selector": 'job="kube-apiserver-test"',
    "cluster_label": "region",
    "runbook_url_base": "https://runbooks.example.com/awe/",
}


def override_for(key: str) -> str:
    if key in OVERRIDES:
        return OVERRIDES[key]
    if key.endswith(("_for", "_window")):
        return "17m"
    if key.endswith("_days"):
        return "13"
    if key.endswith("_ratio"):
        return "0.37"
    raise AssertionError(f"alerts/config.yaml has a key of an unknown kind: {key} (give it a value in OVERRIDES)")


def test_every_setting_has_an_override() -> None:
    assert {chart_key(k) for k in CONFIG} == set(
        yaml.safe_load((REPO / "deploy/helm/admission-webhook-exporter/values.yaml").read_text())[
            "prometheusRule"]["config"])
    for key, default in CONFIG.items():
        assert override_for(key) != str(default), key


@pytest.mark.parametrize("key", sorted(CONFIG))
def test_a_setting_changes_exactly_the_fields_that_use_it(helm: Path, tmp_path: Path, key: str) -> None:
    source = leaves([g for path in SOURCES for g in yaml.safe_load(path.read_text())["groups"]])
    uses = {path for path, value in source.items() if f"${{{key}}}" in str(value)}
    assert uses, f"no rule uses {key}"
    value = override_for(key)
    values = tmp_path / "values.yaml"  # a file, not --set: selectors hold commas and quotes
    values.write_text(yaml.safe_dump({"prometheusRule": {"config": {chart_key(key): value}}}))
    default = leaves(alert_rule_groups())
    done = run([*template_argv(helm), "-f", values])
    assert done.returncode == 0, done.stderr
    changed = leaves(groups_of([d for d in yaml.safe_load_all(done.stdout) if d]))
    assert set(changed) == set(default), "an override must not add or drop a field"
    differ = {path for path in default if default[path] != changed[path]}
    assert differ == uses, {"changed but no placeholder": sorted(map(str, differ - uses)),
                            "placeholder but unchanged": sorted(map(str, uses - differ))}
    for path in uses:
        assert value in str(changed[path]), (path, changed[path])


@pytest.mark.parametrize(("setting", "message"), [
    ("prometheusRule.config.endpointsFor=2min",
     'prometheusRule.config.endpointsFor: "2min" is not a Prometheus duration'),
    ("prometheusRule.config.apiserverRateWindow=5", 'prometheusRule.config.apiserverRateWindow: "5" is not a '
                                                    "Prometheus duration"),
    ("prometheusRule.config.certCriticalDays=soon", 'prometheusRule.config.certCriticalDays: "soon" is not a number'),
    ("prometheusRule.config.clusterLabel=", "prometheusRule.config.clusterLabel must not be empty"),
    ("prometheusRule.config.endpointFor=1m", "prometheusRule.config.endpointFor: no rule uses such a setting; the "
                                             "settings are apiserverFor, apiserverRateWindow"),
    ("prometheusRule.config.latencyFor=true", "prometheusRule.config.latencyFor: expected a string or a number"),
])
def test_a_bad_setting_fails_the_render_with_a_message(helm: Path, setting: str, message: str) -> None:
    done = run(template_argv(helm, setting))
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_settings_the_values_lack_take_their_defaults(helm: Path) -> None:
    """`helm upgrade --reuse-values` from chart 0.1.0 renders with that release's values, which have no
    prometheusRule.config (and none of this chart's values.yaml): the rules must still be alerts/rules/."""
    assert groups_of(template(helm, "prometheusRule.config=null")) == alert_rule_groups()
    # A value that is given wins even where it is "empty" to Go (0): only a missing one takes the default.
    zero = groups_of(template(helm, "prometheusRule.config.certWarningDays=0"))
    assert any("tls_certificate_expiry_seconds:min < 0 * 86400" in r["expr"] for g in zero for r in g["rules"])


def test_a_bad_setting_fails_only_where_the_rule_is_rendered(helm: Path) -> None:
    """Without the PrometheusRule (disabled, or no operator API) its settings are not looked at."""
    disabled = run(template_argv(helm, "prometheusRule.config.endpointsFor=soon", "prometheusRule.enabled=false"))
    assert disabled.returncode == 0, disabled.stderr
    no_operator = run(template_argv(helm, "prometheusRule.config.endpointsFor=soon", api_versions=()))
    assert no_operator.returncode == 0, no_operator.stderr


# --------------------------------------------------------------------------------------------- #
# promtool on a render with overrides

SHORTER = ("prometheusRule.config.endpointsFor=1m", "prometheusRule.config.certCriticalDays=3",
           "prometheusRule.config.expiryFor=1m")
SERIES = 'job="admission-webhook-exporter", instance="10.0.0.11:10047", ' + \
    'configuration="policy", name="validate.policy.example.com", type="validating"'
ALERT = 'configuration="policy", name="validate.policy.example.com", type="validating"'
ENDPOINT = 'endpoint="10.1.0.5:8443"'


def firing(alert: str, at: str, *labels: str) -> dict[str, Any]:
    """A promql_expr_test: ALERTS of `alert` firing at `at` with exactly `labels` (none: not firing)."""
    selector = f'ALERTS{{alertname="{alert}", alertstate="firing"}}'
    samples = [{"labels": f'ALERTS{{alertname="{alert}", alertstate="firing", {", ".join(labels)}}}', "value": 1}]
    return {"expr": selector, "eval_time": at, "exp_samples": samples if labels else []}


# A Fail webhook whose endpoints go from 2 to 0 at 1m; a served certificate 5 days (and a minute) from notAfter.
OVERRIDE_TEST = {
    "rule_files": ["rules.yaml"],
    "evaluation_interval": "30s",
    "group_eval_order": ["admission-webhook.rules", "admission-webhook.apiserver", "admission-webhook.audit",
                         "admission-webhook.certificates", "admission-webhook.endpoints",
                         "admission-webhook.exporter", "admission-webhook.probes"],
    "tests": [{
        "interval": "30s",
        "input_series": [
            {"series": f'admission_webhook_info{{{SERIES}, failure_policy="Fail"}}', "values": "1x20"},
            {"series": f"admission_webhook_endpoints_ready{{{SERIES}}}", "values": "2 2 0x18"},
            {"series": f"admission_webhook_tls_certificate_not_after_timestamp_seconds{{{SERIES}, {ENDPOINT}}}",
             "values": "432060x20"},
        ],
        "promql_expr_test": [
            # for: 1m (default 2m): silent at 1m30s, firing at 2m
            firing("AdmissionWebhookNoReadyEndpoints", "1m30s"),
            firing("AdmissionWebhookNoReadyEndpoints", "2m", 'severity="critical"', ALERT),
            # critical below 3 days (default 7): 5 days left is the warning band; for: 1m (default 15m)
            firing("AdmissionWebhookCertificateExpiring", "3m", 'severity="warning"', ALERT, ENDPOINT),
        ],
    }],
}


def test_overrides_change_what_promtool_sees(helm: Path, promtool: Path, tmp_path: Path) -> None:
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(OVERRIDE_TEST, sort_keys=False))
    rules = tmp_path / "rules.yaml"

    rules.write_text(yaml.safe_dump({"groups": groups_of(template(helm, *SHORTER))}, sort_keys=False))
    done = promtool_test(promtool, test_file)
    assert done.returncode == 0, done.stdout + done.stderr

    # The control: with the defaults the same expectations fail (for: 2m, critical below 7 days).
    rules.write_text(yaml.safe_dump({"groups": groups_of(template(helm))}, sort_keys=False))
    done = promtool_test(promtool, test_file)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "AdmissionWebhookNoReadyEndpoints" in done.stderr and 'severity="critical"' in done.stderr


# --------------------------------------------------------------------------------------------- #
# dashboards


def test_dashboard_configmaps_hold_exactly_what_dashboards_build_generates(helm: Path) -> None:
    from dashboards import build

    generated = {path.name: text for path, text in build.outputs().items() if path.suffix == ".json"}
    assert len(generated) == 2
    maps = [d for d in template(helm) if d["kind"] == "ConfigMap"]
    assert len(maps) == len(generated)
    for configmap in maps:
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, text),) = configmap["data"].items()
        assert text + "\n" == generated.pop(name), name  # the JSON byte for byte (the block drops the last \n)
