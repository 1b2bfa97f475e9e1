"""The one resource table (exporter/resources.py): its rows as the real kube-apiserver serves them, the kind
guessed for what it does not hold, and the modules that read it (kubeapi, the probe, the audit)."""

from __future__ import annotations

import json

import pytest

from exporter import audit, kubeapi, resources
from exporter.model import Rule
from exporter.probe import admission_review
from exporter.resources import TABLE, Resource
from exporter.targets import ReviewSpec
from tests.controlplane.harness import ControlPlane


def test_paths_and_api_versions() -> None:
    assert resources.PODS.path("team") == "/api/v1/namespaces/team/pods"
    assert resources.NAMESPACES.path() == "/api/v1/namespaces"
    assert resources.ENDPOINT_SLICES.path("team") == "/apis/discovery.k8s.io/v1/namespaces/team/endpointslices"
    assert (resources.PODS.api_version, resources.LEASES.api_version) == ("v1", "coordination.k8s.io/v1")


def test_one_row_per_resource() -> None:
    assert len({(r.group, r.plural) for r in TABLE}) == len(TABLE)


@pytest.mark.parametrize(("plural", "kind"), [
    ("endpoints", "Endpoints"),  # the table's: a guess would say "Endpoint"
    ("ingresses", "Ingress"),  # the table's: a guess would say "Ingresse"
    ("ipaddresses", "IPAddress"),
    ("widgets", "Widget"),  # not in the table: the plural made singular
    ("data", "Data"),
])
def test_kind_of(plural: str, kind: str) -> None:
    assert resources.kind_of(plural) == kind


def test_lookup_prefers_the_table_and_makes_up_the_rest_from_the_rule() -> None:
    assert resources.lookup("apps", "v1beta1", "deployments", namespaced=False) is resources.DEPLOYMENTS
    assert resources.lookup("example.com", "v2", "widgets", namespaced=False) == Resource(
        "example.com", "v2", "widgets", "Widget", False)


def test_kubeapi_audit_and_probe_read_the_table() -> None:
    assert kubeapi.SERVICES is resources.SERVICES and kubeapi.Resource is Resource
    rule = Rule(operations=("CREATE",), api_groups=("networking.k8s.io",), api_versions=("v1",),
                resources=("ipaddresses",), scope="*")
    assert audit.resource_of(rule, "ipaddresses") is resources.IP_ADDRESSES
    for row in TABLE:
        spec = ReviewSpec(version="v1", group=row.group, api_version=row.version, resource=row.plural,
                          sub_resource="", operation="CREATE", namespaced=row.namespaced)
        assert admission_review(spec, "u")["request"]["kind"]["kind"] == row.kind


@pytest.mark.controlplane
def test_every_row_is_what_the_real_apiserver_serves(control_plane: ControlPlane) -> None:
    """Group, version, plural, kind and scope of each row, from the apiserver's own discovery documents."""
    served: dict[tuple[str, str, str], tuple[str, bool]] = {}
    for group_version in sorted({r.api_version for r in TABLE}):
        status, body = control_plane.request(("/api/" if "/" not in group_version else "/apis/") + group_version)
        assert status == 200, (group_version, body[:200])
        group = group_version.rpartition("/")[0]
        for r in json.loads(body)["resources"]:
            served[(group, group_version.rpartition("/")[2], r["name"])] = (r["kind"], r["namespaced"])
    table = {(r.group, r.version, r.plural): (r.kind, r.namespaced) for r in TABLE}
    assert {k: served.get(k) for k in table} == table
