"""The GitHub workflows (.github/workflows): they cannot run here, so they are linted with actionlint (built from
the Go module proxy by tests/actionlint/install.sh), which runs shellcheck on every `run:` script, and held to
the project's policy: every action pinned by commit with its release in a comment, least privilege.

Without actionlint or shellcheck these tests skip and say why, unless AWE_REQUIRE_ACTIONLINT=1 (CI), where they
fail: a missing linter must not pass for a clean workflow.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
REQUIRE_ENV = "AWE_REQUIRE_ACTIONLINT"
PINNED = re.compile(r"^\s*(?:-\s+)?uses:\s+([\w.-]+/[\w./-]+)@([0-9a-f]{40}) # v\d+\.\d+\.\d+\s*$")


def _unavailable(why: str) -> None:
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{REQUIRE_ENV} is set but {why}: run tests/actionlint/install.sh")
    pytest.skip(f"{why} (run tests/actionlint/install.sh; {REQUIRE_ENV}=1 makes this fail)")


@pytest.fixture(scope="module")
def actionlint() -> str:
    cache = Path(os.environ.get("AWE_CACHE") or Path.home() / ".cache" / "admission-webhook-exporter")
    built = cache / "bin" / "actionlint"
    found = str(built) if built.is_file() else shutil.which("actionlint")
    if found is None:
        _unavailable("actionlint is not installed")
    if shutil.which("shellcheck") is None:
        _unavailable("shellcheck is not on PATH (actionlint would skip every run: script)")
    assert found is not None
    return found


def lint(actionlint: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([actionlint, "-no-color", *map(str, files)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_there_are_workflows() -> None:
    assert {p.name for p in WORKFLOWS} >= {"release.yml", "ci.yml"}


def test_actionlint_passes(actionlint: str) -> None:
    done = lint(actionlint, *WORKFLOWS)
    assert done.returncode == 0 and not done.stdout, done.stdout + done.stderr


def test_actionlint_runs_shellcheck_on_run_scripts(actionlint: str, tmp_path: Path) -> None:
    """The lint above is only worth something if it looks into `run:` scripts: an unquoted variable is caught."""
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text("on: push\npermissions: {}\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
                      "      - run: rm -rf $SOME_DIR/cache\n")
    done = subprocess.run([actionlint, "-no-color", str(broken)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 1 and "shellcheck" in done.stdout and "SC2086" in done.stdout, done.stdout


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_by_commit(workflow: Path) -> None:
    uses = [line for line in workflow.read_text().splitlines() if re.match(r"^\s*(?:-\s+)?uses:", line)]
    assert uses
    loose = [line.strip() for line in uses if not PINNED.match(line)]
    assert not loose, f"pin by a 40-hex commit with '# vX.Y.Z': {loose}"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege(workflow: Path) -> None:
    doc = yaml.safe_load(workflow.read_text())
    top = doc.get("permissions")
    assert top in ({}, {"contents": "read"}), f"top-level permissions must be {{}} or contents: read, got {top}"
    for name, job in doc["jobs"].items():
        perms = job.get("permissions", top)
        assert perms != "write-all" and isinstance(perms, dict), name
        if perms.get("id-token") == "write":  # only jobs that sign with cosign get an OIDC token
            assert "cosign sign" in yaml.safe_dump(job), name
        if perms.get("packages") == "write":
            assert workflow.name == "release.yml", name
    for step in (s for job in doc["jobs"].values() for s in job.get("steps", [])):
        if str(step.get("uses", "")).startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, "checkout must not keep the token"
