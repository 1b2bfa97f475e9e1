"""The fast text renderer and prometheus_client's agree, sample by sample, on every family we expose."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from exporter.exposition import render


def parsed(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


class Families:
    def collect(self):  # type: ignore[no-untyped-def]
        g = GaugeMetricFamily("awe_test_gauge", 'help with "quotes", \\ and\nnewline', labels=["a", "b"])
        g.add_metric(["plain", 'quote" back\\slash new\nline'], 1.5)
        g.add_metric(["inf", ""], math.inf)
        g.add_metric(["big", "x"], 1.7e9)
        yield g
        c = CounterMetricFamily("awe_test_events", "events", labels=["reason"])
        c.add_metric(["timeout"], 3)
        yield c
        yield GaugeMetricFamily("awe_test_plain", "no labels", value=0)


def test_fast_renderer_matches_prometheus_client() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families())  # type: ignore[arg-type]
    ours = render(registry.collect()).decode()
    theirs = generate_latest(registry).decode()
    assert parsed(ours) == parsed(theirs)
    assert [f.name for f in text_string_to_metric_families(ours)] == \
        [f.name for f in text_string_to_metric_families(theirs)]
    assert "# TYPE awe_test_events_total counter" in ours
    assert 'awe_test_gauge{a="plain",b="quote\\" back\\\\slash new\\nline"} 1.5' in ours


@pytest.mark.parametrize("family", [
    HistogramMetricFamily("awe_test_histogram", "a histogram", buckets=[("1.0", 1), ("+Inf", 2)], sum_value=3),
    Metric("awe_test_untyped", "an untyped family", "unknown"),
], ids=["histogram", "untyped"])
def test_a_type_the_renderer_was_not_checked_for_is_refused(family: Metric) -> None:
    with pytest.raises(ValueError, match=f"^{family.name}: the fast renderer renders counter and gauge families, "
                                         f"not '{family.type}'$"):
        render([GaugeMetricFamily("awe_test_plain", "fine", value=0), family])
