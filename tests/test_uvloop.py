"""`serve` runs on uvloop where it is installed (exporter.cli): the probe must reach the same verdicts there as
on asyncio's loop, where the rest of the suite runs. So the probe's own tests (client certificates included) and
the hostile backends' run again, in a pytest of their own, with every async test on uvloop (tests/uvloop_loop.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop  # a dependency wherever serve runs on it (pyproject.toml): never skipped

from exporter.cli import EXIT_USAGE, _loop_factory, main

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["tests/test_probe.py", "tests/test_client_auth.py", "tests/test_hostile_backends.py",
           "tests/test_scheduler.py"]


@pytest.mark.slow
def test_the_probe_reaches_the_same_verdicts_on_uvloop() -> None:
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.uvloop_loop", "-p", "no:cacheprovider",
                          "-q", "-x", *MODULES], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1], run.stdout[-500:]
    loops = re.search(r"^uvloop loops: (\d+)$", run.stdout, re.M)
    assert loops and int(loops[1]) > 0, f"the tests did not run on uvloop {uvloop.__version__}: {run.stdout[-500:]}"


def test_serve_and_demo_run_on_uvloop_the_one_shot_commands_on_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWE_EVENT_LOOP", raising=False)
    assert _loop_factory("serve") is uvloop.new_event_loop
    assert _loop_factory("demo") is uvloop.new_event_loop
    assert _loop_factory("check") is None and _loop_factory("explain") is None  # no import for a one-shot
    monkeypatch.setenv("AWE_EVENT_LOOP", "asyncio")
    assert _loop_factory("serve") is None
    monkeypatch.setenv("AWE_EVENT_LOOP", "uvloop")
    assert _loop_factory("check") is uvloop.new_event_loop


def test_an_unknown_event_loop_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWE_EVENT_LOOP", "trio")
    assert main(["check", "--manifests", str(tmp_path)]) == EXIT_USAGE
    assert capsys.readouterr().err == ("admission-webhook-exporter: error: AWE_EVENT_LOOP='trio': "
                                       "expected asyncio or uvloop\n")
