"""docs/metrics.md and the code agree: every family and every reason documented, nothing extra."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from exporter.app import Exporter
from exporter.canary import Canary, CanaryConfig
from exporter.discovery import Discovery
from exporter.kubeapi import Credentials, KubeApi
from exporter.reasons import Reason
from exporter.webconfig import WebSecurity

REPO = Path(__file__).parent.parent
DOC = (REPO / "docs" / "metrics.md").read_text()


def documented_metrics() -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)` \| (?:gauge|counter)", DOC, re.M))


def collected_metrics(empty_web_config: Path) -> set[str]:
    # A live exporter's families, discovery's included; nothing is started, so nothing is dialled.
    discovery = Discovery(KubeApi(Credentials("https://127.0.0.1:1", False, lambda: None)))
    discovery.health.up["services/ns"] = True  # so the per-resource families have a sample
    discovery.health.last_event["services"] = 1.0
    discovery.api.requests[("watch", "services")] = 1
    names = set()
    canary = Canary(discovery.api, CanaryConfig(namespace="canary"))  # opt-in: its families only when enabled
    exporter = Exporter(discovery=discovery, canary=canary)
    exporter.security = WebSecurity(empty_web_config)  # what `serve --web.config.file` adds
    for family in exporter.registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_every_metric_documented_and_nothing_extra(tmp_path: Path) -> None:
    (tmp_path / "web.yml").write_text("")
    collected = collected_metrics(tmp_path / "web.yml")
    code_only = collected - documented_metrics()
    docs_only = documented_metrics() - collected
    assert not code_only, f"undocumented metrics: {sorted(code_only)}"
    assert not docs_only, f"documented but not exposed: {sorted(docs_only)}"


def test_reason_table_is_exactly_the_closed_set() -> None:
    section = DOC.split("Failure `reason` values")[1].split("## ")[0]
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \| ", section, re.M))
    assert documented == {r.value for r in Reason}


def test_import_graph_page_is_drawn_from_the_current_contract_and_code() -> None:
    check = subprocess.run([sys.executable, str(REPO / "scripts" / "import_graph.py"), "--check"],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
