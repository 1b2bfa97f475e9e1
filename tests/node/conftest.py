"""The node suite's order, and its figures in the terminal summary (node start and stop, by phase)."""

from __future__ import annotations

import pytest

from .fixtures import TIMINGS

FIRST = ("tests/node/test_host.py", "tests/node/test_install.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Two node modules run before any other test of the session that uses the node (tests/monitoring/
    included): test_host.py starts nodes of its own (the machine holds one at a time), and test_install.py
    installs the chart on a cluster without the prometheus-operator CRDs, before anything installs them."""
    first = [i for prefix in FIRST for i in items if i.nodeid.startswith(prefix)]
    if first:
        rest = [i for i in items if i not in first]
        items[:] = first + rest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for timings in TIMINGS:
        line = " ".join(f"{k}={v:.1f}s" for k, v in timings.items())
        terminalreporter.write_line(f"test node: {line}")
