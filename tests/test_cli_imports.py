"""Each command imports what it runs (exporter.cli): `--help`, `explain <text>` and `audit --manifests` start
in a fraction of the time the server, the prober and the watches take to import. The CPU those starts take is
a figure for bench/startup_cost.py; here, the property behind it: which modules each command leaves loaded.
Each command runs in a fresh interpreter of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import factories as f

LOADED = ("import json, sys\n"
          "from exporter.cli import main\n"
          "try:\n"
          "    main(sys.argv[1:])\n"
          "except SystemExit:\n"
          "    pass\n"
          "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n")
ERROR = ('Internal error occurred: failed calling webhook "validate.kyverno.svc-fail": failed to call webhook: Post '
         '"https://kyverno-svc.kyverno.svc:443/validate/fail?timeout=10s": no endpoints available for service '
         '"kyverno-svc"')
SERVER = {"aiohttp", "prometheus_client", "uvloop", "exporter.app", "exporter.server", "exporter.probe",
          "exporter.scheduler", "exporter.discovery", "exporter.kubeapi", "exporter.canary", "kubernetes"}


def loaded(*argv: str) -> set[str]:
    run = subprocess.run([sys.executable, "-c", LOADED, *argv], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    return set(json.loads(run.stderr.strip().splitlines()[-1]))


def top(modules: set[str]) -> set[str]:
    return modules | {m.split(".")[0] for m in modules}


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["explain", "--help"]])
def test_help_loads_neither_the_event_loop_nor_the_server(argv: list[str]) -> None:
    modules = top(loaded(*argv))
    assert "exporter.cli" in modules
    assert not modules & {*SERVER, "asyncio", "ssl", "cryptography", "yaml", "exporter.audit"}


def test_explain_of_a_text_loads_neither_the_prober_nor_the_audit() -> None:
    modules = top(loaded("explain", ERROR))
    assert "exporter.explain" in modules
    assert not modules & {*SERVER, "asyncio", "cryptography", "yaml", "exporter.audit", "exporter.targets"}


def test_audit_of_a_file_loads_the_audit_but_not_the_server(tmp_path: Path) -> None:
    path = tmp_path / "small.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        f.configuration("small", f.webhook("v.small.example.com", f.service_client("small", "hook", "")))]}))
    modules = top(loaded("audit", "--manifests", str(path), "--fail-on", "never"))
    assert "exporter.audit" in modules
    assert not modules & {*SERVER, "asyncio"}  # files only: no event loop
