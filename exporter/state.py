"""What the exporter currently knows, as one immutable `Snapshot` replaced whole.

Adopting an inventory makes a new snapshot: the inventory and its probe plans. The configuration audit costs
far more than planning (seconds at a few thousand webhooks), so it is not part of adoption: it runs afterwards,
off the event loop and off the scrape path (`exporter.app`), and its findings are published into whatever
snapshot is current when they are ready. Until then a new snapshot carries forward the previous findings of
the webhooks it still has, so `admission_webhook_risk_info` does not blink out under churn while a deleted
webhook's series still go at once; `audited` says which generation the findings describe.

A scrape reads `ExporterState.snapshot` once and formats every family from that one object, so it never mixes
two inventories. Only the event loop writes `snapshot`; a reference assignment is atomic, so scrapes on worker
threads need no lock.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from .audit import Finding
from .log import event
from .model import Inventory
from .targets import WebhookPlan, plan

log = logging.getLogger("exporter.state")


@dataclass(frozen=True)
class Snapshot:
    inventory: Inventory = field(default_factory=Inventory)
    plans: tuple[WebhookPlan, ...] = ()
    generation: int = 0  # inventories adopted so far; the empty snapshot is 0
    findings: tuple[Finding, ...] = ()  # the audit of generation `audited`
    audited: int = 0  # the empty inventory needs no audit: it has no findings

    @property
    def audit_pending(self) -> bool:
        return self.audited < self.generation

    @property
    def target_count(self) -> int:
        return sum(len(p.targets) for p in self.plans)


class ExporterState:
    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def adopt(self, inventory: Inventory) -> Snapshot:
        """The inventory and its plans as the new current snapshot, with the last findings of its webhooks."""
        previous = self.snapshot
        for bad in inventory.invalid:
            if bad not in previous.inventory.invalid:
                event(log, logging.WARNING, "invalid_object", source=bad.source, kind=bad.kind, name=bad.name,
                      reason=bad.reason)
        keys = {w.key for w in inventory.webhooks}
        current = dataclasses.replace(previous, inventory=inventory, plans=plan(inventory),
                                      generation=previous.generation + 1,
                                      findings=tuple(f for f in previous.findings if f.webhook in keys))
        self.snapshot = current
        event(log, logging.DEBUG, "inventory_adopted", webhooks=len(inventory.webhooks),
              targets=current.target_count, invalid=len(inventory.invalid))
        return current

    def publish_findings(self, of: Snapshot, findings: tuple[Finding, ...]) -> Snapshot:
        """The audit of `of`, into the current snapshot (which may be newer); an older audit never wins."""
        current = self.snapshot
        if of.generation > current.audited:
            current = dataclasses.replace(current, findings=findings, audited=of.generation)
            self.snapshot = current
        return current
