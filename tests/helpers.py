from __future__ import annotations

from typing import Any

from exporter.inventory import SourcedObject, build_inventory
from exporter.model import Inventory
from exporter.targets import WebhookPlan, plan


def inventory_of(*objects: dict[str, Any], now: float = 1_700_000_000.0) -> Inventory:
    return build_inventory([SourcedObject("test", o) for o in objects], now=now)


def plans_of(*objects: dict[str, Any]) -> tuple[WebhookPlan, ...]:
    return plan(inventory_of(*objects))


def only_plan(*objects: dict[str, Any]) -> WebhookPlan:
    plans = plans_of(*objects)
    assert len(plans) == 1, plans
    return plans[0]
