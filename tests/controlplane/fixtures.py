"""pytest fixtures for tests that need a real kube-apiserver (import with ``from ... import *``).

Why these shapes:

* ``control_plane`` is session-scoped because starting etcd + kube-apiserver costs seconds and
  ~300 MB; tests share it and clean up their own objects. It never builds binaries (that is
  install.sh's job, run by CI setup): missing binaries mean ``pytest.skip`` with the reason, or a
  hard failure when ``AWE_REQUIRE_CONTROL_PLANE=1`` (CI sets it so a broken install cannot turn
  the integration suite into silent skips).
* Static-token users must exist before the apiserver starts, so the users are a fixture
  (``control_plane_users``) that a conftest.py can override.
* ``kube_api`` uses only the official ``kubernetes`` client, with environment proxies disabled
  (the client would otherwise honour ``HTTPS_PROXY`` and dial off-host).
* ``make_control_plane`` gives a private control plane for tests that must disturb one (e.g. etcd
  compaction, ``--watch-cache=false``) without breaking the shared one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from tests.helpers import SessionShared, unavailable

from .harness import ControlPlane, ControlPlaneError, ControlPlaneUnavailable
from .netns import NetNamespace, NetnsUnavailable

__all__ = [
    "EXPORTER_GROUP",
    "EXPORTER_USER",
    "api_client_for",
    "control_plane",
    "control_plane_users",
    "kube_api",
    "make_control_plane",
    "netns_host",
]

#: a user bound to nothing by default; tests bind it to a ClusterRole to run the exporter restricted
EXPORTER_USER = "awe-exporter"
EXPORTER_GROUP = "awe:exporters"

REQUIRE_ENV = "AWE_REQUIRE_CONTROL_PLANE"


def api_client_for(cp: ControlPlane, user: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient`` for ``user`` (default: the system:masters admin).

    The caller closes it (``with api_client_for(cp, "u") as api:``).
    """
    from kubernetes import client, config

    path = cp.kubeconfig_path if user is None else cp.kubeconfig_for(user)
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.proxy = None  # never via HTTP(S)_PROXY: the apiserver is on loopback
    return client.ApiClient(cfg)


@pytest.fixture(scope="session")
def control_plane_users() -> Mapping[str, Sequence[str]]:
    """Static-token users (name -> groups) created in the shared control plane; override in conftest."""
    return {EXPORTER_USER: [EXPORTER_GROUP]}


# The shared instance lives at module level, so that importing these fixtures in more than one
# place (tests/conftest.py and a test module) still starts ONE control plane per session.
_shared: SessionShared[ControlPlane] = SessionShared()


@pytest.fixture(scope="session")
def control_plane(control_plane_users: Mapping[str, Sequence[str]]) -> Iterator[ControlPlane]:
    """The session's running control plane (kubeconfig_path, server_url, admin_token, ...)."""

    def start() -> ControlPlane:
        try:
            cp = ControlPlane()
            for user, groups in control_plane_users.items():
                cp.add_static_token(user, groups=groups)
            cp.start()
        except ControlPlaneUnavailable as e:
            unavailable("kube-apiserver/etcd", e.reason, REQUIRE_ENV)
        except ControlPlaneError as e:
            pytest.fail(f"control plane failed to start: {e}", pytrace=False)
        return cp

    with _shared.use(start, ControlPlane.stop) as cp:
        yield cp


@pytest.fixture
def kube_api(control_plane: ControlPlane) -> Iterator[Any]:
    """``kubernetes.client.ApiClient`` as admin; restarts the apiserver if an earlier test left it down."""
    control_plane.ensure_running()
    api = api_client_for(control_plane)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def make_control_plane() -> Iterator[Callable[..., ControlPlane]]:
    """Factory for a private, started ControlPlane (kwargs go to ControlPlane); stopped after the test."""
    made: list[ControlPlane] = []

    def make(users: Mapping[str, Sequence[str]] | None = None, **kwargs: Any) -> ControlPlane:
        try:
            cp = ControlPlane(**kwargs)
        except ControlPlaneUnavailable as e:
            unavailable("kube-apiserver/etcd", e.reason, REQUIRE_ENV)
        for user, groups in (users or {}).items():
            cp.add_static_token(user, groups=groups)
        made.append(cp)
        return cp.start()

    try:
        yield make
    finally:
        for cp in made:
            cp.stop()


@pytest.fixture
def netns_host() -> Iterator[NetNamespace]:
    """A fresh network namespace on 10.213.7.0/24 (host .1, namespace .2/.3), removed afterwards."""
    try:
        ns = NetNamespace(addresses=2).open()
    except NetnsUnavailable as e:
        unavailable("network namespace", e.reason, REQUIRE_ENV)
    try:
        yield ns
    finally:
        ns.close()
