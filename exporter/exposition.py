"""A fast renderer of the Prometheus text format (0.0.4), and of OpenMetrics 1.0, for the families we expose.

`prometheus_client.generate_latest` validates and escapes every label name of every sample, which costs
about 8 µs a series: 80 ms for 10,000 series. Our label names are fixed constants, so this renderer checks
them once per family and escapes only label values that need it. The families still come from the one
collector (`exporter.collector`), so the two renderings cannot drift; a test compares them sample by sample.

Prometheus itself asks for OpenMetrics first (its Accept header), and prometheus_client's OpenMetrics encoder
is as slow; for counters and gauges the two formats differ only in the HELP/TYPE lines (OpenMetrics names a
counter family without `_total` and escapes `"` in HELP) and OpenMetrics' closing `# EOF`: the sample lines are
the same, so `openmetrics=True` renders the other format from the same pieces.

The pieces (`header`, `label_set`, `number`) are public so that the collector can keep the text of series
whose values change often (per-target probe results) rendered ahead of a scrape, in exactly this format.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from prometheus_client.core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text"  # the prefix; the negotiated version and escaping follow
EOF = "# EOF\n"  # OpenMetrics: the last line of a body


def escape_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


# The only types our collector yields, and the only ones the comparison test checks against prometheus_client.
RENDERED_TYPES = ("counter", "gauge")


def header(name: str, documentation: str, kind: str, *, openmetrics: bool = False, unit: str = "") -> str:
    """The HELP and TYPE (and OpenMetrics' UNIT) lines of the family `name` (a counter's without `_total`)."""
    if openmetrics:
        unit_line = f"# UNIT {name} {unit}\n" if unit else ""
        return f"# HELP {name} {escape_value(documentation)}\n# TYPE {name} {kind}\n{unit_line}"
    name += "_total" if kind == "counter" else ""  # the text format names a counter family as its samples
    return f"# HELP {name} {_escape_help(documentation)}\n# TYPE {name} {kind}\n"


def label_set(names: Sequence[str], values: Sequence[str]) -> str:
    """`a="x",b="y"`: the inside of a sample's braces, values escaped."""
    return ",".join([f'{k}="{escape_value(v)}"' for k, v in zip(names, values, strict=True)])


def render_text(families: Iterable[Metric], *, openmetrics: bool = False) -> str:
    """The exposition of `families` (without OpenMetrics' `# EOF`); a family of another type is refused, not
    rendered as `untyped`."""
    lines: list[str] = []
    append = lines.append
    for family in families:
        if family.type not in RENDERED_TYPES:
            raise ValueError(f"{family.name}: the fast renderer renders {' and '.join(RENDERED_TYPES)} families, "
                             f"not {family.type!r}")
        append(header(family.name, family.documentation, family.type, openmetrics=openmetrics, unit=family.unit))
        for sample in family.samples:
            labels = sample.labels
            if labels:
                inner = ",".join([f'{k}="{escape_value(v)}"' for k, v in labels.items()])
                append(f"{sample.name}{{{inner}}} {number(sample.value)}\n")
            else:
                append(f"{sample.name} {number(sample.value)}\n")
    return "".join(lines)


def render(families: Iterable[Metric], *, openmetrics: bool = False) -> bytes:
    """The body of a scrape: `render_text`, encoded, and for OpenMetrics its `# EOF`."""
    return (render_text(families, openmetrics=openmetrics) + (EOF if openmetrics else "")).encode()
