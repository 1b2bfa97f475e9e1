"""Audit cost: how long the deadlock-risk audit takes over a large inventory (it runs once per inventory
change, on the first scrape after it). Usage: python -m bench.audit_cost [--webhooks 2000] [--namespaces 50]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from exporter.audit import audit
from exporter.inventory import SourcedObject, build_inventory
from exporter.targets import plan


def objects(webhooks: int, namespaces: int) -> list[dict[str, Any]]:
    """Configurations of 4 Fail service webhooks each, their Services and one-endpoint slices."""
    out: list[dict[str, Any]] = []
    for c in range(webhooks // 4):
        ns = f"ns{c % namespaces}"
        hooks = []
        for i in range(4):
            svc = f"svc-{c}-{i}"
            hooks.append({"name": f"h{c}-{i}.example.com", "sideEffects": "None", "failurePolicy": "Fail",
                          "clientConfig": {"service": {"namespace": ns, "name": svc}},
                          "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                     "resources": ["pods" if i == 0 else "configmaps"]}]})
            out.append({"kind": "Service", "metadata": {"namespace": ns, "name": svc},
                        "spec": {"ports": [{"name": "https", "port": 443}]}})
            out.append({"kind": "EndpointSlice", "metadata": {"namespace": ns, "name": f"{svc}-1",
                                                               "labels": {"kubernetes.io/service-name": svc}},
                        "ports": [{"name": "https", "port": 8443}],
                        "endpoints": [{"addresses": ["10.1.2.3"], "conditions": {"ready": True}}]})
        out.append({"kind": "ValidatingWebhookConfiguration", "metadata": {"name": f"cfg{c}"}, "webhooks": hooks})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--webhooks", type=int, default=2000)
    parser.add_argument("--namespaces", type=int, default=50)
    args = parser.parse_args()
    raw = objects(args.webhooks, args.namespaces)
    t0 = time.perf_counter()
    inventory = build_inventory([SourcedObject("bench", o) for o in raw])
    t1 = time.perf_counter()
    plans = plan(inventory)
    t2 = time.perf_counter()
    findings = audit(inventory, plans)
    t3 = time.perf_counter()
    print(f"{len(inventory.webhooks)} webhooks: build {t1 - t0:.3f} s, plan {t2 - t1:.3f} s, "
          f"audit {t3 - t2:.3f} s ({len(findings)} findings)")


if __name__ == "__main__":
    main()
