"""scripts/generate.sh: every generated file is current, and one change to a source flows to every consumer.

The chain (docs/generation.md): alerts/render.py writes alerts/rules/ and the chart's files/rules/ and
prometheusRule.config defaults; dashboards/build.py writes the chart's files/dashboards/ and docs/dashboards.md;
deploy/render.sh renders the chart into deploy/manifests/. `--check` writes nothing and exits 1 when a file is
stale. deploy/render.sh needs helm (tests/chart.py: skipped without it unless AWE_REQUIRE_HELM=1).
"""

from __future__ import annotations

import filecmp
import shutil
import sys
from pathlib import Path

import pytest

from tests.chart import REPO, require_helm, run

GENERATE = Path("scripts") / "generate.sh"
# What the generators read and write; a copy of these is a repository the chain can run in.
TREE = ("alerts", "dashboards", "deploy", "docs", "scripts")


@pytest.fixture(scope="session")
def helm() -> Path:
    return require_helm()


def test_every_generated_file_is_current(helm: Path) -> None:
    done = run([REPO / GENERATE, "--check"], HELM=str(helm), PYTHON=sys.executable)
    assert done.returncode == 0, done.stdout + done.stderr


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for name in TREE:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


def _changed(a: Path, b: Path) -> set[str]:
    """Files that differ (or exist on one side only) between two trees, relative paths."""
    out: set[str] = set()

    def walk(cmp: filecmp.dircmp[str], prefix: str) -> None:
        out.update(prefix + n for n in cmp.diff_files + cmp.left_only + cmp.right_only)
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(a, b, ignore=["__pycache__"]), "")
    return out


def test_a_changed_threshold_reaches_every_consumer_and_nothing_else(helm: Path, tmp_path: Path) -> None:
    """cert_critical_days 7 -> 5 in alerts/config.yaml: --check names what is stale; generate.sh rewrites exactly
    the files that carry the threshold (rules, the chart's default, the dashboards, the manifests)."""
    root = _copy(tmp_path)
    config = root / "alerts" / "config.yaml"
    text = config.read_text()
    assert "\ncert_critical_days: 7\n" in text
    config.write_text(text.replace("\ncert_critical_days: 7\n", "\ncert_critical_days: 5\n"))
    env = {"HELM": str(helm), "PYTHON": sys.executable}

    stale = run([root / GENERATE, "--check"], cwd=root, **env)
    assert stale.returncode == 1, stale.stdout + stale.stderr
    # (deploy/manifests is checked against the chart as committed, whose values.yaml is the stale part here)
    for name in ("alerts/rules/certificates.yaml", "values.yaml", "admission-webhooks-overview.json"):
        assert name in stale.stderr, stale.stderr
    assert _changed(REPO / "alerts", root / "alerts") == {"config.yaml"}, "--check wrote something"

    done = run([root / GENERATE], cwd=root, **env)
    assert done.returncode == 0, done.stdout + done.stderr
    chart = "deploy/helm/admission-webhook-exporter/"
    assert {f"{tree}/{path}" for tree in TREE for path in _changed(REPO / tree, root / tree)} == {
        "alerts/config.yaml",
        "alerts/rules/certificates.yaml",
        f"{chart}values.yaml",
        f"{chart}files/rule-defaults.yaml",
        f"{chart}files/dashboards/admission-webhooks-overview.json",
        f"{chart}files/dashboards/admission-webhook-detail.json",
        "deploy/manifests/prometheusrule.yaml",
        "deploy/manifests/dashboards.yaml",
        "docs/dashboards.md",
    }
    assert "tls_certificate_expiry_seconds:min < 5 * 86400" in (root / "alerts/rules/certificates.yaml").read_text()
    assert "tls_certificate_expiry_seconds:min < 5 * 86400" in (
        root / "deploy/manifests/prometheusrule.yaml").read_text()
    assert "\n    certCriticalDays: 5\n" in (root / chart / "values.yaml").read_text()
    again = run([root / GENERATE, "--check"], cwd=root, **env)
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_broken_source_fails_with_exit_2_and_names_it(tmp_path: Path) -> None:
    """No helm needed: the chain stops being trusted at the first broken generator."""
    root = _copy(tmp_path)
    (root / "alerts" / "src" / "endpoints.yaml").write_text(
        (root / "alerts" / "src" / "endpoints.yaml").read_text().replace("${endpoints_for}", "${endpoint_for}"))
    done = run([root / GENERATE, "--check"], cwd=root, PYTHON=sys.executable, HELM="/nonexistent/helm")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "unknown placeholder(s) ${endpoint_for}" in done.stderr
