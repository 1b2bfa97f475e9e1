"""The audit's findings as people and machines read them: the `Finding` record, the text and JSON reports, and
the YAML fix snippets the rules attach to each finding."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import yaml

from ..model import LabelSelector, LabelSelectorRequirement, Webhook, WebhookKey
from .matching import NAME_LABEL

Severity = Literal["critical", "warning", "latent", "info"]
# Most severe first. `latent`: a risk that exists once a namespace its namespaceSelector matches exists (none
# does now, or the manifests do not say): less than what can happen today, more than what is only worth knowing.
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "latent", "info")


@dataclass(frozen=True)
class Finding:
    """One risk of one webhook: `id` is stable (alerts and silences match on it), `fix` is YAML to apply."""

    id: str
    severity: Severity
    webhook: WebhookKey
    why: str
    fix: str


# -- Fix snippets -------------------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    """Block YAML indented the way Kubernetes manifests are written (list items under their key)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def yaml_snippet(data: Any) -> str:
    # Many findings share one fix snippet, and the pure-Python dumper is slow: render each distinct one once.
    return _yaml_of_json(json.dumps(data))


@functools.lru_cache(maxsize=1024)
def _yaml_of_json(text: str) -> str:
    return yaml.dump(json.loads(text), Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=200).rstrip()


def selector_yaml(selector: LabelSelector) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if selector.match_labels:
        out["matchLabels"] = dict(selector.match_labels)
    if selector.match_expressions:
        out["matchExpressions"] = [
            {"key": e.key, "operator": e.operator, **({"values": list(e.values)} if e.values else {})}
            for e in selector.match_expressions]
    return out


def excluding_namespaces(selector: LabelSelector, namespaces: Iterable[str]) -> LabelSelector:
    """The selector with `kubernetes.io/metadata.name NotIn [...]` extended (or added) to exclude namespaces."""
    exprs = list(selector.match_expressions)
    for i, e in enumerate(exprs):
        if e.key == NAME_LABEL and e.operator == "NotIn":
            values = tuple(sorted({*e.values, *namespaces}))
            exprs[i] = LabelSelectorRequirement(NAME_LABEL, "NotIn", values)
            break
    else:
        exprs.append(LabelSelectorRequirement(NAME_LABEL, "NotIn", tuple(sorted(set(namespaces)))))
    return LabelSelector(match_labels=selector.match_labels, match_expressions=tuple(exprs))


def namespace_selector_fix(hook: Webhook, namespaces: Iterable[str]) -> str:
    """The whole namespaceSelector to set (it replaces the current one, keeping what it already selects)."""
    return yaml_snippet({"namespaceSelector": selector_yaml(excluding_namespaces(hook.namespace_selector, namespaces))})


# -- People: text and JSON ---------------------------------------------------------------------------------
def to_text(findings: Sequence[Finding], *, webhooks: int) -> str:
    counts = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
    lines = [f"{len(findings)} finding{'s' if len(findings) != 1 else ''} in {webhooks} webhook"
             f"{'s' if webhooks != 1 else ''}: " + ", ".join(f"{counts[s]} {s}" for s in SEVERITIES)]
    for severity in SEVERITIES:
        group = [f for f in findings if f.severity == severity]
        if not group:
            continue
        lines += ["", f"{severity.upper()} ({len(group)})"]
        for f in group:
            k = f.webhook
            lines.append(f"  [{f.id}] {k.configuration}/{k.name} ({k.type})")
            lines.append(f"    why: {f.why}")
            lines.append("    fix:")
            lines += [f"      {line}" for line in f.fix.splitlines()]
    return "\n".join(lines)


def to_json(findings: Sequence[Finding], *, webhooks: int) -> str:
    rows = [{"id": f.id, "severity": f.severity, **asdict(f.webhook), "why": f.why, "fix": f.fix} for f in findings]
    summary = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
    return json.dumps({"webhooks": webhooks, "summary": summary, "findings": rows}, indent=2)
