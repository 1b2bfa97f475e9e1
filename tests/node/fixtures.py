"""pytest fixtures for tests that need the real node (imported by tests/conftest.py with ``import *``).

* ``node_cluster`` is session-scoped: a node costs ~20 s to start and ~10 s to stop, and the machine can
  hold one at a time. Tests share it and delete what they create. It never builds anything: missing
  binaries, packages or images mean ``pytest.skip`` with what to run, or a failure when
  ``AWE_REQUIRE_NODE=1`` (CI), so a broken install cannot turn the node suite into silent skips.
* ``node_image`` loads one of tests/image/build.sh's docker-archives into the node, once per session;
  ``exporter_image`` builds (if its sources changed) and loads the project's image, the chart's default.
* The shared instance lives at module level (like tests/controlplane/fixtures.py's), so that importing
  these fixtures in more than one conftest still starts ONE node per session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import SessionShared, unavailable

from .harness import LOCK_TIMEOUT_S, NodeCluster, NodeError, NodeUnavailable, images_dir

__all__ = ["NODE_REQUIRE_ENV", "NODE_TEST_TIMEOUT", "exporter_image", "node_cluster", "node_image"]

NODE_REQUIRE_ENV = "AWE_REQUIRE_NODE"
#: per-test bound of the node tests (pytest-timeout; the suite's default is 300 s): the first one starts the
#: node (and may build the image, when its sources changed), and on a shared machine may first wait up to
#: LOCK_TIMEOUT_S for another session's node to stop
NODE_TEST_TIMEOUT = pytest.mark.timeout(LOCK_TIMEOUT_S + 900)


_shared: SessionShared[NodeCluster] = SessionShared()
_loaded: dict[str, list[str]] = {}
#: start/stop figures of every node this session ran (printed by tests/node/conftest.py's summary hook)
TIMINGS: list[dict[str, float]] = []


def shared_node() -> NodeCluster | None:
    """The session's node if it has started (tests/node/test_host.py must run before)."""
    return _shared.instance


def _start_node() -> NodeCluster:
    try:
        node = NodeCluster()
        node.start()
    except NodeUnavailable as e:
        unavailable("test node", e.reason, NODE_REQUIRE_ENV)
    except NodeError as e:
        pytest.fail(f"test node failed to start: {e}", pytrace=False)
    _loaded.clear()
    return node


def _stop_node(node: NodeCluster) -> None:
    node.stop()
    TIMINGS.append(dict(node.timings))


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[NodeCluster]:
    """The session's running node (``kubectl()``, ``load_image()``, ``service_get()``, ``cp``, ...)."""
    with _shared.use(_start_node, _stop_node) as node:
        yield node


@pytest.fixture(scope="session")
def node_image(node_cluster: NodeCluster) -> Callable[[str], list[str]]:
    """``node_image("<name>")`` imports ``<images_dir>/<name>.tar`` into the node (once) and returns the
    image names it holds."""

    def load(name: str) -> list[str]:
        if name not in _loaded:
            archive: Path = images_dir() / f"{name}.tar"
            try:
                _loaded[name] = node_cluster.load_image(archive)
            except NodeUnavailable as e:
                unavailable("test node", e.reason, NODE_REQUIRE_ENV)
        return _loaded[name]

    return load


@pytest.fixture(scope="session")
def exporter_image(node_cluster: NodeCluster) -> str:
    """The project's image, built from the current sources by tests/image/build.sh (a hash of the sources
    when nothing changed) and loaded into the node: the chart's default image, so ``helm install`` with
    default values runs it (``imagePullPolicy: IfNotPresent``; nothing is ever pulled)."""
    from tests.image.podman import build_images

    from .chart import chart_image

    built = build_images()
    names = node_cluster.load_image(built.archive)
    assert built.image == chart_image() and built.image in names, (built.image, names, chart_image())
    return built.image
