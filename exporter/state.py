"""What the exporter currently knows: the inventory, its probe plans, and the latest results.

Discovery (or the manifest loader) calls `adopt()` with a new inventory; the scheduler is told at once and
the collector reads the new plans on the next scrape. Plans and inventory are replaced whole.
"""

from __future__ import annotations

import logging

from .log import event
from .model import Inventory
from .results import ResultStore
from .scheduler import ProbeScheduler, ProbeStats
from .targets import WebhookPlan, plan

log = logging.getLogger("exporter.state")


class ExporterState:
    def __init__(self, *, scheduler: ProbeScheduler | None, results: ResultStore, stats: ProbeStats) -> None:
        self.scheduler = scheduler
        self.results = results
        self.stats = stats
        self.inventory = Inventory()
        self.plans: tuple[WebhookPlan, ...] = ()

    def adopt(self, inventory: Inventory) -> None:
        plans = plan(inventory)
        for bad in inventory.invalid:
            if bad not in self.inventory.invalid:
                event(log, logging.WARNING, "invalid_object", source=bad.source, kind=bad.kind, name=bad.name,
                      reason=bad.reason)
        self.inventory = inventory
        self.plans = plans
        if self.scheduler is not None:
            self.scheduler.update(plans)
        event(log, logging.DEBUG, "inventory_adopted", webhooks=len(inventory.webhooks),
              targets=sum(len(p.targets) for p in plans), invalid=len(inventory.invalid))
