"""Fixtures of the node suite, and its figures in the terminal summary (node start and stop, by phase)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from . import chart
from .fixtures import TIMINGS


@pytest.fixture(scope="session")
def exporter_image(node_image: Callable[[str], list[str]]) -> str:
    """The project's image (tests/image/build.sh), loaded into the node: the chart's default image."""
    image = chart.chart_image()
    names = node_image("admission-webhook-exporter")
    assert image in names, f"tests/image/build.sh's archive holds {names}, the chart runs {image}"
    return image


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for timings in TIMINGS:
        line = " ".join(f"{k}={v:.1f}s" for k, v in timings.items())
        terminalreporter.write_line(f"test node: {line}")
