"""Fixtures of the node suite, and its figures in the terminal summary (node start and stop, by phase)."""

from __future__ import annotations

import pytest

from tests.image.podman import build_images

from . import chart
from .fixtures import TIMINGS
from .harness import NodeCluster


@pytest.fixture(scope="session")
def exporter_image(node_cluster: NodeCluster) -> str:
    """The project's image, built from the current sources by tests/image/build.sh (a hash of the sources
    when nothing changed) and loaded into the node: it is the chart's default image."""
    built = build_images()
    names = node_cluster.load_image(built.archive)
    assert built.image == chart.chart_image() and built.image in names, (built.image, names, chart.chart_image())
    return built.image


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """tests/node/test_host.py starts nodes of its own, and the machine holds one at a time: it runs before
    any test that starts the session's shared node (tests/monitoring/ included)."""
    first = [i for i in items if i.nodeid.startswith("tests/node/test_host.py")]
    if first:
        rest = [i for i in items if i not in first]
        items[:] = first + rest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for timings in TIMINGS:
        line = " ".join(f"{k}={v:.1f}s" for k, v in timings.items())
        terminalreporter.write_line(f"test node: {line}")
