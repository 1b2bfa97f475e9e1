"""Render the Grafana dashboards from code, with Grafana's grafana-foundation-sdk.

    python -m dashboards.build            # write the chart's files/dashboards/*.json and docs/dashboards.md
    python -m dashboards.build --check    # exit 1 if a committed file is not what would be written

Two dashboards, fixed uids so links and provisioning survive a re-import:

* ``awe-overview`` (admission-webhooks-overview.json): one row per webhook, the exporter's verdict beside
  the kube-apiserver's own view of the same webhook, and the configuration audit's findings;
* ``awe-detail`` (admission-webhook-detail.json): one webhook (``$webhook``): its endpoints, certificates,
  history and the canary's (opt-in) verdict, reason and timing. The overview's webhook names link to it.

Where the values come from:

* selectors (``job``), the cluster label and the certificate/latency thresholds are read from
  alerts/config.yaml, the single source the alert rules are rendered from, so a red "< 7 days" cell is the
  critical alert's 7 days and the panels select the series the alerts select;
* the recording rules of alerts/src/recording.yaml (``admission_webhook:probe_success:min``,
  ``admission_webhook_endpoint:tls_certificate_expiry_seconds:min``,
  ``admission_webhook:ca_bundle_expiry_seconds:min``) where they exist, the raw series otherwise.

Query conventions, each for a reason:

* every selector carries ``<cluster_label>=~"$cluster"``. The variable's All value is ``.*``, which also
  matches series without the label, so the dashboards work unchanged where no external ``cluster`` label
  exists (the variable then offers only All). Aggregations keep the cluster label (``by (cluster, ...)``).
* the apiserver's series are keyed by (name, type) only: they are joined onto the exporter's webhooks with
  ``* on (cluster, name, type) group_right () max by (cluster, configuration, name, type)
  (admission_webhook_info)``. Two configurations with a webhook of the same name both show the apiserver's
  (shared) figures: the apiserver cannot tell them apart either.
* a table is one instant query per column, merged on the webhook's labels. Grafana's merge gives up when
  any one query returns nothing (grafana/grafana#69701, every column then shows separately), so every column
  query ends in a *fill*, ``or on (<keys>) (<one row per key> * NaN)``: a row per webhook whatever happens,
  NaN where there is nothing to show (no calls seen, a url webhook has no Service), displayed as "-".
  ``without_fill()`` gives the query without it; the test requires that part to return data too.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as pb
from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG = ROOT / "alerts" / "config.yaml"
DOCS = ROOT / "docs" / "dashboards.md"
OVERVIEW_UID = "awe-overview"
DETAIL_UID = "awe-detail"
# Written straight into the Helm chart, the one place that ships them (as ConfigMaps; import them from there).
OUTPUT_DIR = ROOT / "deploy" / "helm" / "admission-webhook-exporter" / "files" / "dashboards"
OVERVIEW_FILE = OUTPUT_DIR / "admission-webhooks-overview.json"
DETAIL_FILE = OUTPUT_DIR / "admission-webhook-detail.json"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["admission-webhook-exporter", "kubernetes"]
DAY = 86400
RED, ORANGE, GREEN, BLUE, PURPLE, TEXT = "red", "orange", "green", "blue", "purple", "text"
# How a NaN fill (nothing to show) and a missing cell look.
NOTHING: list[dm.ValueMapping] = [dm.SpecialValueMap(options=dm.DashboardSpecialValueMapOptions(
    match=dm.SpecialValueMatch.NULL_AND_NAN, result=dm.ValueMappingResult(text="-", color=TEXT)))]
VERDICT: list[dm.ValueMapping] = [dm.ValueMap(options={"1": dm.ValueMappingResult(text="OK", color=GREEN, index=0),
                                "0": dm.ValueMappingResult(text="FAILING", color=RED, index=1)})]
SEVERITY: list[dm.ValueMapping] = [dm.ValueMap(options={"critical": dm.ValueMappingResult(color=RED, index=0),
                                 "warning": dm.ValueMappingResult(color=ORANGE, index=1),
                                 "latent": dm.ValueMappingResult(color=PURPLE, index=2),
                                 "info": dm.ValueMappingResult(color=BLUE, index=3)})]

# The canary's reasons as the detail dashboard shows them: the reason, then what it means or what to do. Keyed by
# the closed sets of exporter/canary.py (NotCanaried, Inconclusive); tests/test_dashboards.py keeps them equal.
NOT_CANARIED_HINTS = {
    "side_effects": "sideEffects Some/Unknown: the apiserver refuses it any dry run (set None or NoneOnDryRun "
                    "if true)",
    "failure_policy_ignore": "failurePolicy Ignore: a failed call is admitted and hidden (see Failing open)",
    "namespace_missing": "the canary namespace does not exist: create it or fix --canary-namespace",
    "resource_not_allowed": "its rules match no CREATE of a --canary-resources resource: allow one it matches",
    "namespace_not_selected": "its namespaceSelector excludes the canary namespace: label that namespace or "
                              "canary in one it selects",
    "object_not_selected": "its objectSelector or matchConditions select no object the canary can build",
    "match_conditions_undecided": "its matchConditions use Kubernetes-only CEL: whether it is called is unknown",
}
FAILURE_HINTS = {  # exporter/reasons.py's Reason, as the apiserver's own call fails, and canary's "unrecognised"
    "no_endpoints": "the apiserver finds no ready endpoint behind the Service",
    "service_not_found": "the apiserver cannot find the Service",
    "connection_refused": "refused on the control plane's path: a firewall that rejects, or the wrong port",
    "unreachable": "no route from the control plane: Konnectivity, egress proxy, network",
    "timeout": "the apiserver's call timed out: a firewall that drops (often 8443/9443), or a slow backend",
    "dns": "the apiserver cannot resolve the URL's host",
    "tls_handshake": "TLS between the apiserver and the backend failed",
    "x509_unknown_authority": "the apiserver does not trust the served certificate with the caBundle",
    "x509_expired": "the served certificate has expired, by the apiserver's clock",
    "x509_not_yet_valid": "the served certificate is not yet valid, by the apiserver's clock",
    "x509_hostname_mismatch": "the served certificate is not for the name the apiserver dials",
    "http_error": "the backend answered, but not with a valid AdmissionReview",
    "invalid_config": "the apiserver cannot call the webhook as configured",
    "client_auth_required": "the backend wants a client certificate the apiserver did not send",
    "unrecognised": "the apiserver's words are in the exporter's log line canary_result",
}
INCONCLUSIVE_HINTS = {
    "forbidden": "RBAC: the canary's Role is missing (chart canary.enabled adds it)",
    "unauthorized": "the apiserver refused the exporter's credentials",
    "quota": "a ResourceQuota of the canary namespace refused the object",
    "rejected": "another admission plugin refused it first (PodSecurity, LimitRanger, ...)",
    "invalid": "the object failed validation",
    "namespace_not_found": "the canary namespace does not exist",
    "conflict": "an object of the canary's name exists in the canary namespace",
    "throttled": "API Priority and Fairness answered 429: retried next interval",
    "other_webhook": "another webhook failed or denied first: this one may not have been called",
    "apiserver_error": "another answer of the apiserver (the exporter's log line canary_result has it)",
    "apiserver_unreachable": "no answer from the apiserver",
}


def hints(texts: dict[str, str], color: str) -> list[dm.ValueMapping]:
    """A label column's mapping: each value shown as ``value: hint``, coloured."""
    return [dm.ValueMap(options={value: dm.ValueMappingResult(text=f"{value}: {hint}", color=color, index=i)
                                 for i, (value, hint) in enumerate(texts.items())})]


@dataclass(frozen=True)
class Settings:
    """The part of alerts/config.yaml the dashboards use."""

    exporter_selector: str
    apiserver_selector: str
    cluster_label: str
    cert_warning_days: float
    cert_critical_days: float
    ca_bundle_warning_days: float
    ca_bundle_critical_days: float
    latency_timeout_ratio: float
    canary_for_seconds: float

    @classmethod
    def load(cls, path: Path = CONFIG) -> Settings:
        raw = yaml.safe_load(path.read_text())
        return cls(exporter_selector=str(raw["exporter_selector"]), apiserver_selector=str(raw["apiserver_selector"]),
                   cluster_label=str(raw["cluster_label"]),
                   cert_warning_days=float(raw["cert_warning_days"]),
                   cert_critical_days=float(raw["cert_critical_days"]),
                   ca_bundle_warning_days=float(raw["ca_bundle_warning_days"]),
                   ca_bundle_critical_days=float(raw["ca_bundle_critical_days"]),
                   latency_timeout_ratio=float(raw["latency_timeout_ratio"]),
                   canary_for_seconds=seconds(str(raw["canary_for"])))


DURATION = re.compile(r"(\d+)([smh])")


def seconds(duration: str) -> float:
    """A Prometheus duration of alerts/config.yaml (``5m``, ``1h30m``) in seconds."""
    parts = DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration of s/m/h units: {duration!r}")
    return float(sum(int(n) * {"s": 1, "m": 60, "h": 3600}[u] for n, u in parts))


class Queries:
    """PromQL pieces for one Settings: selectors, grouping keys, the apiserver join and the table fill."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.webhook = f"{s.cluster_label}, configuration, name, type"  # the exporter's per-webhook key
        self.endpoint = f"{self.webhook}, endpoint"
        self.apikey = f"{s.cluster_label}, name, type"  # the apiserver's key: it has no configuration

    def _sel(self, *parts: str) -> str:
        return "{" + ", ".join(p for p in parts if p) + "}"

    def exp(self, extra: str = "") -> str:
        """Selector of the exporter's own series."""
        return self._sel(self.s.exporter_selector, f'{self.s.cluster_label}=~"$cluster"', extra)

    def rec(self, extra: str = "") -> str:
        """Selector of a recording rule's series (they carry no job: the rule aggregated it away)."""
        return self._sel(f'{self.s.cluster_label}=~"$cluster"', extra)

    def api(self, extra: str = "") -> str:
        return self._sel(self.s.apiserver_selector, f'{self.s.cluster_label}=~"$cluster"', extra)

    def webhooks(self, extra: str = "") -> str:
        """One series per webhook, value 1."""
        return f"max by ({self.webhook}) (admission_webhook_info{self.exp(extra)})"

    def endpoints(self, extra: str = "") -> str:
        """One series per probed endpoint (endpoint "" for a webhook with nothing to dial), value 1."""
        return f"max by ({self.endpoint}) (admission_webhook_probe_success{self.exp(extra)}) * 0 + 1"

    def fill(self, primary: str, *, per: str = "webhook", extra: str = "") -> str:
        """``primary`` plus a NaN row for every webhook (or endpoint) it has no row for; see the module doc."""
        keys, rows = (self.webhook, self.webhooks(extra)) if per == "webhook" else (self.endpoint,
                                                                                   self.endpoints(extra))
        return f"{primary}\n{self.fill_suffix(keys, rows)}"

    @staticmethod
    def fill_suffix(keys: str, rows: str) -> str:
        return f"or on ({keys}) ({rows} * NaN)"

    def join_apiserver(self, by_apikey: str, extra: str = "") -> str:
        """An expression keyed by (cluster, name, type) onto the exporter's webhooks (adds configuration)."""
        return f"{by_apikey}\n* on ({self.apikey}) group_right ()\n  {self.webhooks(extra)}"

    def api_rate(self, metric: str, extra: str = "", by: str = "") -> str:
        keys = ", ".join(k for k in (self.apikey, by) if k)
        return f"sum by ({keys}) (rate({metric}{self.api(extra)}[$__rate_interval]))"

    def api_quantile(self, q: float, extra: str = "", by: str = "") -> str:
        keys = ", ".join(k for k in (self.apikey, by, "le") if k)
        return (f"histogram_quantile({q}, sum by ({keys}) (rate("
                f"apiserver_admission_webhook_admission_duration_seconds_bucket{self.api(extra)}[$__rate_interval])))")


ZERO = " or vector(0)"  # a stat's fill: 0 rather than "No data" when nothing matches


def without_fill(expr: str) -> str:
    """``expr`` without the trailing fill (``Queries.fill``'s, or a stat's ``or vector(0)``): the part that must
    return data by itself, or the panel would show only what the fill makes up."""
    if expr.endswith(ZERO):
        return expr[: -len(ZERO)]
    head, sep, tail = expr.rpartition("\nor on (")
    return head if sep and tail.endswith(" * NaN)") else expr


# ------------------------------------------------------------------------------------------------ panels


def steps(*pairs: tuple[float | None, str]) -> cogbuilder.Builder[dm.ThresholdsConfig]:
    """Absolute thresholds: the first pair's value is None (the base colour)."""
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=v, color=c) for v, c in pairs])


def thresholds_value(*pairs: tuple[float | None, str]) -> dm.ThresholdsConfig:
    return steps(*pairs).build()


def target(expr: str, ref: str, *, legend: str = "", instant: bool = False,
           table_format: bool = False) -> pb.Dataquery:
    q = pb.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    q = q.instant() if instant else q.range()
    if table_format:
        q = q.format(pm.PromQueryFormat.TABLE)
    if legend:
        q = q.legend_format(legend)
    return q


@dataclass(frozen=True)
class Column:
    """One column of a merged table: a query, or (``value=False``) a query whose labels are the column."""

    ref: str
    title: str
    expr: str
    unit: str = ""
    decimals: int | None = None
    thresholds: tuple[tuple[float | None, str], ...] = ()
    mappings: tuple[Any, ...] = ()
    cell: str = ""  # custom.cellOptions type: color-background, color-text, gauge
    value: bool = True
    width: int | None = None
    min: float | None = None
    max: float | None = None


@dataclass
class Layout:
    """Panel ids in order of creation (Grafana needs unique ids for links and view mode)."""

    next_id: int = 1
    seen: list[str] = field(default_factory=list)

    def id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def _props(c: Column) -> list[dm.DynamicConfigValue]:
    props = [dm.DynamicConfigValue(id_val="displayName", value=c.title)]
    if c.unit:
        props.append(dm.DynamicConfigValue(id_val="unit", value=c.unit))
    if c.decimals is not None:
        props.append(dm.DynamicConfigValue(id_val="decimals", value=c.decimals))
    if c.thresholds:
        props.append(dm.DynamicConfigValue(id_val="thresholds", value=thresholds_value(*c.thresholds)))
        props.append(dm.DynamicConfigValue(id_val="color", value={"mode": "thresholds"}))
    if c.mappings:  # a column's mappings replace the panel's: keep the NaN one
        props.append(dm.DynamicConfigValue(id_val="mappings", value=[*c.mappings, *NOTHING]))
    if c.cell:
        props.append(dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": c.cell}))
    if c.width is not None:
        props.append(dm.DynamicConfigValue(id_val="custom.width", value=c.width))
    if c.min is not None:
        props.append(dm.DynamicConfigValue(id_val="min", value=c.min))
    if c.max is not None:
        props.append(dm.DynamicConfigValue(id_val="max", value=c.max))
    return props


def value_field(ref: str, queries: int) -> str:
    return f"Value #{ref}" if queries > 1 else "Value"


def merged_table(layout: Layout, title: str, description: str, columns: Sequence[Column], *,
                 labels: Sequence[tuple[str, str]], links: dict[str, str] | None = None, height: int = 10,
                 no_value: str = "", mapped: dict[str, Sequence[dm.ValueMapping]] | None = None) -> table.Panel:
    """A table of instant queries merged on their shared labels.

    ``labels``: (label, header) of the label columns to show, in order; other labels are hidden; ``mapped``: the
    value mappings of some of them (coloured text: a label cell has no value to colour by). Each value
    column is the field Grafana's Prometheus data source names ``Value #<ref>`` (``Value`` when the panel has a
    single query), renamed by a displayName override matched on that name, so the match does not depend on
    how a rename is applied. That naming counts the queries that returned a frame: one more reason for the
    fill, which makes every query return one.
    """
    panel = (table.Panel().id(layout.id()).title(title).description(description).datasource(DATASOURCE)
             .height(height).span(24).cell_height(cm.TableCellHeight.SM).mappings(NOTHING))
    if no_value:
        panel = panel.no_value(no_value)
    order: dict[str, int] = {}
    exclude: dict[str, bool] = {"Time": True}
    for label, header in labels:
        order[label] = len(order)
        props = [dm.DynamicConfigValue(id_val="displayName", value=header)] if header != label else []
        if links and label in links:
            props.append(dm.DynamicConfigValue(id_val="links", value=[
                {"title": f"Open {header} {{}}".replace("{}", "${__value.raw}"), "url": links[label]}]))
        if mapped and label in mapped:
            props += [dm.DynamicConfigValue(id_val="mappings", value=list(mapped[label])),
                      dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"})]
        if props:
            panel = panel.override_by_name(label, props)
    for c in columns:
        panel = panel.with_target(target(c.expr, c.ref, instant=True, table_format=True))
        field_name = value_field(c.ref, len(columns))
        if c.value:
            order[field_name] = len(order)
            panel = panel.override_by_name(field_name, _props(c))
        else:
            exclude[field_name] = True
    exclude.update({"__name__": True, "job": True, "instance": True})
    panel = panel.with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
    panel = panel.with_transformation(dm.DataTransformerConfig(id_val="organize", options={
        "excludeByName": exclude, "indexByName": order, "renameByName": {}, "includeByName": {}}))
    return panel


def stat_panel(layout: Layout, title: str, description: str, expr: str, *, unit: str = "none",
               thresholds: Sequence[tuple[float | None, str]] = ((None, GREEN),), mappings: Sequence[Any] = (),
               legend: str = "", text_mode: cm.BigValueTextMode = cm.BigValueTextMode.VALUE,
               decimals: int | None = None, no_value: str = "", span: int = 4) -> stat.Panel:
    panel = (stat.Panel().id(layout.id()).title(title).description(description).datasource(DATASOURCE)
             .with_target(target(expr, "A", legend=legend, instant=True)).unit(unit).height(4).span(span)
             .thresholds(steps(*thresholds)).mappings([*mappings, *NOTHING]).graph_mode(cm.BigValueGraphMode.NONE)
             .color_mode(cm.BigValueColorMode.BACKGROUND).text_mode(text_mode)
             .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    if decimals is not None:
        panel = panel.decimals(decimals)
    if no_value:
        panel = panel.no_value(no_value)
    return panel


def series_panel(layout: Layout, title: str, description: str, targets: Sequence[tuple[str, str]], *,
                 unit: str = "none", thresholds: Sequence[tuple[float | None, str]] = (),
                 span: int = 12, height: int = 8, bars: bool = False, stacked: bool = False,
                 overrides: Iterable[tuple[str, list[dm.DynamicConfigValue]]] = (),
                 min_value: float | None = None) -> timeseries.Panel:
    """A time series of range queries; ``targets`` are (expr, legend)."""
    panel = (timeseries.Panel().id(layout.id()).title(title).description(description).datasource(DATASOURCE)
             .unit(unit).height(height).span(span).fill_opacity(10 if not bars else 80).show_points(
                 cm.VisibilityMode.NEVER).line_width(1)
             .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                     .placement(cm.LegendPlacement.BOTTOM).show_legend(True).calcs(["lastNotNull", "max"]))
             .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)))
    for i, (expr, legend) in enumerate(targets):
        panel = panel.with_target(target(expr, chr(ord("A") + i), legend=legend))
    if bars:
        panel = panel.draw_style(cm.GraphDrawStyle.BARS)
    if stacked:
        panel = panel.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    if thresholds:
        panel = (panel.thresholds(steps(*thresholds))
                 .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.LINE_AND_AREA)))
    if min_value is not None:
        panel = panel.min(min_value)
    for name, props in overrides:
        panel = panel.override_by_name(name, props)
    return panel


def timeout_line() -> tuple[str, list[dm.DynamicConfigValue]]:
    """The override that draws the series named ``timeoutSeconds`` as a dashed red limit."""
    return ("timeoutSeconds", [
        dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": RED}),
        dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
        dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0)])


def datasource_variable() -> db.DatasourceVariable:
    return (db.DatasourceVariable("datasource").label("Data source").type("prometheus")
            .description("The Prometheus that scrapes the exporter and the kube-apiserver."))


def cluster_variable(q: Queries) -> db.QueryVariable:
    label = q.s.cluster_label
    return (db.QueryVariable("cluster").label("cluster").datasource(DATASOURCE)
            .description(f"Values of the external `{label}` label. All (`.*`) also matches series without the "
                         "label, so a single cluster without it needs no choice here.")
            .query({"query": f"label_values(admission_webhook_exporter_build_info{{{q.s.exporter_selector}}}, "
                             f"{label})", "refId": "cluster"})
            .include_all(True).all_value(".*").current(dm.VariableOption(selected=True, text="All",
                                                                           value="$__all"))
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC))


def webhook_variable(q: Queries) -> db.QueryVariable:
    return (db.QueryVariable("webhook").label("webhook").datasource(DATASOURCE)
            .description("The webhook's name (the apiserver's `name` label).")
            .query({"query": f"label_values(admission_webhook_info{q.exp()}, name)", "refId": "webhook"})
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC))


def detail_link(label: str = "name") -> str:
    return (f"/d/{DETAIL_UID}/admission-webhook-detail?var-datasource=${{datasource}}&var-cluster=${{cluster}}"
            f"&var-webhook=${{__data.fields.{label}}}&${{__url_time_range}}")


def base(title: str, uid: str, description: str) -> db.Dashboard:
    return (db.Dashboard(title).uid(uid).description(description).tags(TAGS).refresh("30s")
            .time("now-6h", "now").timezone("browser").editable().tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .link(db.DashboardLink("Admission webhook dashboards").type(dm.DashboardLinkType.DASHBOARDS)
                  .tags(["admission-webhook-exporter"]).as_dropdown(True).include_vars(True).keep_time(True)))


# ------------------------------------------------------------------------------------------------ overview


def overview(s: Settings) -> db.Dashboard:
    q = Queries(s)
    layout = Layout()
    w = q.webhook
    crit, warn = s.cert_critical_days, s.cert_warning_days
    days = ((None, RED), (crit, ORANGE), (warn, GREEN))
    ca_days = ((None, RED), (s.ca_bundle_critical_days, ORANGE), (s.ca_bundle_warning_days, GREEN))
    fail, calling = 'failure_policy="Fail"', 'error_type="calling_webhook_error"'
    d = base("Admission webhooks / Overview", OVERVIEW_UID,
             "Every admission webhook the exporter probes: its verdict, endpoints, certificates and latency, beside "
             "the kube-apiserver's own view of the same webhook, and the configuration audit's findings.")
    d = d.with_variable(datasource_variable()).with_variable(cluster_variable(q))

    d = d.with_row(db.Row("Now").id(layout.id()))
    d = d.with_panel(stat_panel(
        layout, "Exporters up", "Exporter targets Prometheus scrapes successfully. At 0 nothing below is current "
        "and no webhook alert can fire (AdmissionWebhookExporterDown).",
        f"sum(up{q.exp()})" + ZERO, thresholds=((None, RED), (1, GREEN))))
    d = d.with_panel(stat_panel(
        layout, "Fail webhooks failing", "failurePolicy Fail webhooks with at least one failing endpoint (or nothing "
        "to dial): the apiserver rejects the requests they match. Pages (AdmissionWebhookProbeFailing, "
        "AdmissionWebhookNoReadyEndpoints).",
        f"count(admission_webhook:probe_success:min{q.rec(fail)} == 0)" + ZERO,
        thresholds=((None, GREEN), (1, RED))))
    d = d.with_panel(stat_panel(
        layout, "Webhooks without ready endpoints", "service webhooks whose Service has no ready endpoint: every "
        "call fails at once with `no endpoints available for service`.",
        f"count(min by ({w}) (admission_webhook_endpoints_ready{q.exp()}) == 0)" + ZERO,
        thresholds=((None, GREEN), (1, RED))))
    d = d.with_panel(stat_panel(
        layout, f"Certificates expiring < {crit:g} days", f"Webhooks whose served certificate or caBundle CA "
        f"expires within {crit:g} days (the critical band of AdmissionWebhookCertificateExpiring and "
        "AdmissionWebhookCABundleExpiring), or has expired.",
        f"count(\n  min by ({w}) (admission_webhook_endpoint:tls_certificate_expiry_seconds:min{q.rec()}) "
        f"< {crit:g} * {DAY}\n  or admission_webhook:ca_bundle_expiry_seconds:min{q.rec()} < {crit:g} * {DAY}\n)"
        + ZERO,
        thresholds=((None, GREEN), (1, RED))))
    d = d.with_panel(stat_panel(
        layout, "Apiserver: failed calls", "Requests/s the kube-apiserver rejected because calling a webhook failed "
        "(rejection_count, error_type calling_webhook_error): users see `failed calling webhook`.",
        f"sum(rate(apiserver_admission_webhook_rejection_count{q.api(calling)}[$__rate_interval]))" + ZERO,
        unit="reqps", decimals=2, thresholds=((None, GREEN), (0.0001, RED))))
    d = d.with_panel(stat_panel(
        layout, "Apiserver: failing open", "Requests/s the kube-apiserver admitted without a failurePolicy Ignore "
        "webhook's decision because calling it failed (fail_open_count): its policy was skipped.",
        f"sum(rate(apiserver_admission_webhook_fail_open_count{q.api()}[$__rate_interval]))" + ZERO,
        unit="reqps", decimals=2, thresholds=((None, GREEN), (0.0001, ORANGE))))

    d = d.with_row(db.Row("Webhooks").id(layout.id()))
    columns = [
        Column("A", "policy", f"max by ({w}, failure_policy, backend) (admission_webhook_info{q.exp()})",
               value=False),
        Column("B", "ready endpoints", q.fill(f"min by ({w}) (admission_webhook_endpoints_ready{q.exp()})"),
               thresholds=((None, RED), (1, GREEN)), cell="color-background", decimals=0, width=90),
        Column("C", "verdict", q.fill(f"min by ({w}) (admission_webhook:probe_success:min{q.rec()})"),
               mappings=tuple(VERDICT), cell="color-background", width=90),
        Column("D", "reason", q.fill(f"max by ({w}, reason) (admission_webhook_probe_failure_info{q.exp()})"),
               value=False),
        # The canary (opt-in): the apiserver's own path to the webhook, beside the probe's verdict. Its reasons
        # go in a label of their own (`canary_reason`): the merge would otherwise mix them with the probe's.
        Column("P", "canary", q.fill(f"min by ({w}) (admission_webhook:canary_success:min{q.rec()})"),
               mappings=tuple(VERDICT), cell="color-background", width=90),
        # label_join copies `reason` (label_replace's "$1" would read as a Grafana variable); the three reason
        # sets do not overlap (docs/metrics.md), so the value alone says which kind it is.
        Column("Q", "canary reason", q.fill("\nor ".join(
            f'max by ({w}, canary_reason) (label_join({family}{q.exp()}, "canary_reason", "", "reason"))'
            for family in ("admission_webhook_canary_failure_info", "admission_webhook_canary_inconclusive_info",
                           "admission_webhook_not_canaried_info"))), value=False),
        Column("E", "served cert (days)", q.fill(
            f"min by ({w}) (admission_webhook_endpoint:tls_certificate_expiry_seconds:min{q.rec()}) / {DAY}"),
               unit="d", decimals=1, thresholds=days, cell="color-background", width=110),
        Column("F", "caBundle CA (days)", q.fill(
            f"min by ({w}) (admission_webhook:ca_bundle_expiry_seconds:min{q.rec()}) / {DAY}"),
               unit="d", decimals=1, thresholds=ca_days, cell="color-background", width=110),
        Column("G", "last probe", q.fill(f"max by ({w}) (admission_webhook_probe_duration_seconds{q.exp()})"),
               unit="s", decimals=3, width=90),
        Column("H", "timeout", f"max by ({w}) (admission_webhook_timeout_seconds{q.exp()})", unit="s", width=80),
        Column("I", "latency / timeout", q.fill(
            f"max by ({w}) (admission_webhook_probe_duration_seconds{q.exp()})\n/ on ({w})\n"
            f"max by ({w}) (admission_webhook_timeout_seconds{q.exp()})"), unit="percentunit", cell="gauge",
               thresholds=((None, GREEN), (s.latency_timeout_ratio, RED)), min=0, max=1, width=130),
        Column("J", "apiserver req/s", q.fill(q.join_apiserver(
            q.api_rate("apiserver_admission_webhook_request_total"))), unit="reqps", decimals=3),
        Column("K", "rejected/s", q.fill(q.join_apiserver(
            q.api_rate("apiserver_admission_webhook_rejection_count"))), unit="reqps", decimals=3,
               thresholds=((None, TEXT), (0.0001, ORANGE)), cell="color-text"),
        Column("L", "call errors/s", q.fill(q.join_apiserver(q.api_rate(
            "apiserver_admission_webhook_rejection_count", calling))), unit="reqps", decimals=3,
               thresholds=((None, TEXT), (0.0001, RED)), cell="color-text"),
        Column("M", "fail-open/s", q.fill(q.join_apiserver(q.api_rate("apiserver_admission_webhook_fail_open_count"))),
               unit="reqps", decimals=3, thresholds=((None, TEXT), (0.0001, ORANGE)), cell="color-text"),
        Column("N", "admission p50", q.fill(q.join_apiserver(q.api_quantile(0.5))), unit="s", decimals=3),
        Column("O", "admission p99", q.fill(q.join_apiserver(q.api_quantile(0.99))), unit="s", decimals=3),
    ]
    d = d.with_panel(merged_table(
        layout, "Webhook health", "One row per webhook. Exporter: failurePolicy and backend, ready endpoints behind a "
        "service webhook (red at 0), the probe verdict (FAILING when any endpoint fails) and its reason, the "
        "canary's verdict (opt-in: whether the kube-apiserver itself could call the webhook for a dry run; FAILING "
        "while the probe is OK means the control plane's path is broken) and its reason (why it failed, why its "
        "answer said nothing, or why the webhook is not canaried), days "
        f"until the served certificate and the caBundle CA expire (red under {crit:g}, orange under "
        f"{warn:g} / {s.ca_bundle_warning_days:g}), the slowest endpoint's last probe against timeoutSeconds "
        f"(red from {s.latency_timeout_ratio:.0%}). Apiserver, joined on name and type: calls/s, rejected/s (all "
        "error types), calls that failed (calling_webhook_error), fail-open/s, admission latency p50/p99. "
        "- means nothing to show (a url webhook has no Service; no call seen). Click a name for its detail.",
        columns, labels=[(s.cluster_label, "cluster"), ("configuration", "configuration"), ("name", "webhook"),
                         ("type", "type"), ("failure_policy", "policy"), ("backend", "backend"),
                         ("reason", "reason"), ("canary_reason", "canary reason")],
        links={"name": detail_link()}, height=12))

    d = d.with_row(db.Row("Apiserver").id(layout.id()))
    d = d.with_panel(series_panel(
        layout, "Rejections by error_type", "Requests/s the kube-apiserver rejected, per webhook and error_type: "
        "calling_webhook_error (the call failed under failurePolicy Fail), no_error (the webhook denied), "
        "apiserver_internal_error.",
        [(q.api_rate("apiserver_admission_webhook_rejection_count", by="error_type"),
          "{{name}} ({{type}}) {{error_type}}")], unit="reqps", span=8))
    d = d.with_panel(series_panel(
        layout, "Failing open", "Requests/s admitted without a failurePolicy Ignore webhook's decision because "
        "calling it failed.", [(q.api_rate("apiserver_admission_webhook_fail_open_count"), "{{name}} ({{type}})")],
        unit="reqps", span=8))
    d = d.with_panel(series_panel(
        layout, "Admission latency p99", "99th percentile of the time the kube-apiserver spent in each webhook "
        "(admission_duration_seconds), against the webhooks' timeoutSeconds.",
        [(q.api_quantile(0.99), "{{name}} ({{type}})")], unit="s", span=8))

    d = d.with_row(db.Row("Configuration risks").id(layout.id()))
    d = d.with_panel(merged_table(
        layout, "Risk findings", "Findings of the exporter's configuration audit (admission_webhook_risk_info): "
        "configurations that can wedge the cluster when their backend fails, such as a failurePolicy Fail webhook "
        "that matches kube-system or its own pods. Nothing is failing yet; see the "
        "AdmissionWebhookConfigurationRisk runbook for the fix.",
        [Column("A", "findings", f"max by ({w}, risk, severity) (admission_webhook_risk_info{q.exp()})",
                value=False)],
        labels=[(s.cluster_label, "cluster"), ("configuration", "configuration"), ("name", "webhook"),
                ("type", "type"), ("risk", "risk"), ("severity", "severity")],
        links={"name": detail_link()}, height=8, no_value="No risk findings", mapped={"severity": SEVERITY}))
    return d


# ------------------------------------------------------------------------------------------------ detail


def detail(s: Settings) -> db.Dashboard:
    q = Queries(s)
    layout = Layout()
    hook = 'name="$webhook"'
    w, ep = q.webhook, q.endpoint
    crit, warn = s.cert_critical_days, s.cert_warning_days
    days = ((None, RED), (crit, ORANGE), (warn, GREEN))
    d = base("Admission webhooks / Webhook", DETAIL_UID,
             "One admission webhook: its endpoints, certificates, probe history, the canary through the "
             "kube-apiserver's own path and the kube-apiserver's view.")
    d = d.with_variable(datasource_variable()).with_variable(cluster_variable(q)).with_variable(webhook_variable(q))

    d = d.with_row(db.Row("Status").id(layout.id()))
    d = d.with_panel(stat_panel(
        layout, "Failure policy", "failurePolicy: with Fail the apiserver rejects what the webhook matches while it "
        "cannot be called; with Ignore it admits without it (fail open).",
        f"max by (failure_policy) (admission_webhook_info{q.exp(hook)})", legend="{{failure_policy}}",
        text_mode=cm.BigValueTextMode.NAME, thresholds=((None, BLUE),)))
    d = d.with_panel(stat_panel(
        layout, "Verdict", "OK when every endpoint passed its last probe (connect, TLS verified against caBundle "
        "for the apiserver's server name, dry-run AdmissionReview answered); FAILING otherwise.",
        f"min(admission_webhook:probe_success:min{q.rec(hook)})", mappings=VERDICT,
        thresholds=((None, RED), (1, GREEN))))
    d = d.with_panel(stat_panel(
        layout, "Ready endpoints", "Ready endpoints behind the webhook's Service (service webhooks only): at 0 every "
        "call fails with `no endpoints available for service`.",
        f"min(admission_webhook_endpoints_ready{q.exp(hook)})", thresholds=((None, RED), (1, GREEN)),
        no_value="url webhook", decimals=0))
    d = d.with_panel(stat_panel(
        layout, "timeoutSeconds", "The apiserver gives up on a call after this (10 s when unset).",
        f"max(admission_webhook_timeout_seconds{q.exp(hook)})", unit="s", thresholds=((None, BLUE),)))
    d = d.with_panel(stat_panel(
        layout, "Served certificate expires in", f"Days until the earliest served certificate's notAfter, across "
        f"endpoints (red under {crit:g}, orange under {warn:g}).",
        f"min(admission_webhook_endpoint:tls_certificate_expiry_seconds:min{q.rec(hook)}) / {DAY}", unit="d",
        decimals=1, thresholds=days, no_value="no certificate served"))
    d = d.with_panel(stat_panel(
        layout, "caBundle CA expires in", "Days until the earliest notAfter of the CAs in the webhook's caBundle "
        f"(red under {s.ca_bundle_critical_days:g}, orange under {s.ca_bundle_warning_days:g}).",
        f"min(admission_webhook:ca_bundle_expiry_seconds:min{q.rec(hook)}) / {DAY}", unit="d", decimals=1,
        thresholds=((None, RED), (s.ca_bundle_critical_days, ORANGE), (s.ca_bundle_warning_days, GREEN)),
        no_value="no caBundle"))

    d = d.with_row(db.Row("Endpoints and certificates").id(layout.id()))
    d = d.with_panel(merged_table(
        layout, "Endpoints", "Every endpoint probed (empty endpoint: nothing to dial, see reason): the last verdict "
        "and its reason, how long the last probe took and when it finished, and the served certificate's notAfter "
        f"with the days left (red under {crit:g}). An endpoint that wants the apiserver's client certificate "
        "(reason client_auth_required) has no verdict (-): not an outage.",
        [
            Column("A", "verdict", q.fill(f"min by ({ep}) (admission_webhook_endpoint:probe_success:min"
                                          f"{q.rec(hook)})", per="endpoint", extra=hook),
                   mappings=tuple(VERDICT), cell="color-background", width=90),
            Column("B", "reason", q.fill(f"max by ({ep}, reason) (admission_webhook_probe_failure_info"
                                         f"{q.exp(hook)})", per="endpoint", extra=hook), value=False),
            Column("C", "last probe took", q.fill(f"max by ({ep}) (admission_webhook_probe_duration_seconds"
                                                  f"{q.exp(hook)})", per="endpoint", extra=hook),
                   unit="s", decimals=3),
            Column("D", "last probe", q.fill(f"max by ({ep}) (admission_webhook_probe_timestamp_seconds"
                                             f"{q.exp(hook)}) * 1000", per="endpoint", extra=hook),
                   unit="dateTimeFromNow"),
            Column("E", "served notAfter", q.fill(
                f"min by ({ep}) (admission_webhook_tls_certificate_not_after_timestamp_seconds{q.exp(hook)}) * 1000",
                per="endpoint", extra=hook), unit="dateTimeAsIso"),
            Column("F", "days left", q.fill(
                f"min by ({ep}) (admission_webhook_endpoint:tls_certificate_expiry_seconds:min{q.rec(hook)}) / {DAY}",
                per="endpoint", extra=hook), unit="d", decimals=1, thresholds=days, cell="color-background"),
        ],
        labels=[(s.cluster_label, "cluster"), ("configuration", "configuration"), ("endpoint", "endpoint"),
                ("reason", "reason")], height=8))
    d = d.with_panel(merged_table(
        layout, "caBundle", "The CA certificates the apiserver verifies the webhook's serving certificate "
        f"against: earliest notAfter and days left (red under {s.ca_bundle_critical_days:g}). A webhook without "
        "caBundle is verified against the system roots and has no row.",
        [
            Column("A", "caBundle notAfter", f"min by ({w}) (admission_webhook_ca_bundle_not_after_timestamp_seconds"
                                             f"{q.exp(hook)}) * 1000", unit="dateTimeAsIso"),
            Column("B", "days left", f"min by ({w}) (admission_webhook:ca_bundle_expiry_seconds:min{q.rec(hook)}) "
                                     f"/ {DAY}", unit="d", decimals=1, cell="color-background",
                   thresholds=((None, RED), (s.ca_bundle_critical_days, ORANGE), (s.ca_bundle_warning_days, GREEN))),
        ],
        labels=[(s.cluster_label, "cluster"), ("configuration", "configuration")], height=5,
        no_value="No caBundle"))

    d = d.with_row(db.Row("Probe history").id(layout.id()))
    d = d.with_panel(
        statetimeline.Panel().id(layout.id()).title("Probe result per endpoint").description(
            "Each endpoint's probe verdict over time: green OK, red FAILING (an endpoint that wants the apiserver's "
            "client certificate, reason client_auth_required, has none).").datasource(DATASOURCE)
        .with_target(target(f"min by (configuration, endpoint) (admission_webhook_endpoint:probe_success:min"
                            f"{q.rec(hook)})", "A", legend="{{endpoint}} ({{configuration}})"))
        .mappings([*VERDICT, *NOTHING]).thresholds(steps((None, RED), (1, GREEN)))
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .show_value(cm.VisibilityMode.NEVER).merge_values(True).height(8).span(12))
    d = d.with_panel(series_panel(
        layout, "Probe duration vs timeoutSeconds", "Each endpoint's probe duration; the red line is the webhook's "
        "timeoutSeconds, beyond which the apiserver's call fails with `context deadline exceeded`.",
        [(f"max by (configuration, endpoint) (admission_webhook_probe_duration_seconds{q.exp(hook)})",
          "{{endpoint}} ({{configuration}})"),
         (f"max by (configuration) (admission_webhook_timeout_seconds{q.exp(hook)})", "timeoutSeconds")],
        unit="s", min_value=0, overrides=[timeout_line()]))
    d = d.with_panel(series_panel(
        layout, "Failing endpoints by reason", "How many endpoints failed their last probe, by reason (named after "
        "the apiserver's error: connection_refused, timeout, x509_expired, no_endpoints, ...).",
        [(f"count by (reason) (admission_webhook_probe_failure_info{q.exp(hook)})", "{{reason}}")],
        bars=True, stacked=True, min_value=0))
    d = d.with_panel(series_panel(
        layout, "Ready endpoints and days until expiry", "Ready endpoints behind the Service (service webhooks), and "
        "days until the served certificates and the caBundle CA expire.",
        [(f"min(admission_webhook_endpoints_ready{q.exp(hook)})", "ready endpoints"),
         (f"min by (endpoint) (admission_webhook_endpoint:tls_certificate_expiry_seconds:min{q.rec(hook)}) / {DAY}",
          "served cert {{endpoint}} (days)"),
         (f"min(admission_webhook:ca_bundle_expiry_seconds:min{q.rec(hook)}) / {DAY}", "caBundle CA (days)")],
        min_value=0))

    d = canary_row(d, layout, q, hook)

    d = d.with_row(db.Row("Apiserver's view").id(layout.id()))
    d = d.with_panel(series_panel(
        layout, "Calls by operation", "Requests/s the kube-apiserver sent to this webhook, by operation and whether "
        "it rejected them (request_total).",
        [(q.api_rate("apiserver_admission_webhook_request_total", hook, by="operation, rejected"),
          "{{operation}} rejected={{rejected}}")], unit="reqps", span=6))
    d = d.with_panel(series_panel(
        layout, "Rejections by error_type", "Requests/s rejected: calling_webhook_error (the call failed under Fail), "
        "no_error (the webhook denied), apiserver_internal_error.",
        [(q.api_rate("apiserver_admission_webhook_rejection_count", hook, by="error_type"), "{{error_type}}")],
        unit="reqps", span=6))
    d = d.with_panel(series_panel(
        layout, "Failing open", "Requests/s admitted without this webhook's decision because calling it failed "
        "(failurePolicy Ignore).",
        [(q.api_rate("apiserver_admission_webhook_fail_open_count", hook), "fail open")], unit="reqps", span=6))
    d = d.with_panel(series_panel(
        layout, "Admission latency", "p50 and p99 of the time the kube-apiserver spent calling this webhook.",
        [(q.api_quantile(0.5, hook), "p50"), (q.api_quantile(0.99, hook), "p99")], unit="s", span=6))
    return d


def canary_row(d: db.Dashboard, layout: Layout, q: Queries, hook: str) -> db.Dashboard:
    """The canary (opt-in): whether the kube-apiserver itself can call the webhook, beside the probe's verdict."""
    s, w = q.s, q.webhook
    stale = s.canary_for_seconds

    def reasons(family: str, label: str) -> str:
        # Each family's `reason` copied into a label of its own, so the three are separate columns of one row;
        # label_join, since label_replace's "$1" would read as a Grafana variable.
        return q.fill(f'max by ({w}, {label}) (label_join({family}{q.exp(hook)}, "{label}", "", "reason"))',
                      extra=hook)

    took = f"max by ({w}) (admission_webhook_canary_duration_seconds{q.exp(hook)})"
    timeout = f"max by ({w}) (admission_webhook_timeout_seconds{q.exp(hook)})"
    d = d.with_row(db.Row("Canary: the kube-apiserver's own path").id(layout.id()))
    d = d.with_panel(merged_table(
        layout, "Canary", "The canary (opt-in, --canary-namespace or the chart's canary.enabled) sends the "
        "kube-apiserver a dry-run create (nothing is stored) that this webhook selects, so the apiserver calls it "
        "over its own path: its network, Konnectivity or egress proxy, caBundle and timeout. Verdict OK: the "
        "apiserver called it (admitted, or this webhook denied: both mean the path works). FAILING: `failed calling "
        "webhook`, with why (red). While the probe's verdict above is OK, a FAILING canary means the control "
        "plane's path is broken: a firewall between the control plane and the nodes (managed control planes often "
        "admit only 443 and 10250), Konnectivity or the egress proxy, a NetworkPolicy that admits the exporter but "
        "not the control plane; see the AdmissionWebhookCanaryFailing runbook. Inconclusive (orange, verdict -): "
        "the answer said nothing about this webhook (RBAC, quota, another webhook first); fix what it names, it is "
        "not a webhook failure. Not canaried (blue): why the canary cannot reach this webhook, with what to change "
        "if you want it canaried. Last dry run took: the round trip as the exporter measured it (an upper bound of "
        f"the apiserver's call), against timeoutSeconds (red from {s.latency_timeout_ratio:.0%}). Last canary: "
        f"seconds since the last dry run finished, normally under --canary-interval (60 s); past {stale:g} s "
        "(orange, AdmissionWebhookCanaryFailing's for:) the verdict is stale: the canary is stuck (see the "
        "exporter's log) or the interval is longer. Every cell - : the canary is off.",
        [
            Column("A", "verdict", q.fill(f"min by ({w}) (admission_webhook:canary_success:min{q.rec(hook)})",
                                          extra=hook), mappings=tuple(VERDICT), cell="color-background", width=90),
            Column("B", "failed", reasons("admission_webhook_canary_failure_info", "canary_failure"), value=False),
            Column("C", "inconclusive", reasons("admission_webhook_canary_inconclusive_info",
                                                "canary_inconclusive"), value=False),
            Column("D", "not canaried", reasons("admission_webhook_not_canaried_info", "not_canaried"),
                   value=False),
            Column("E", "last dry run took", q.fill(took, extra=hook), unit="s", decimals=3, width=130),
            Column("F", "timeout", timeout, unit="s", width=80),
            Column("G", "took / timeout", q.fill(f"{took}\n/ on ({w})\n{timeout}", extra=hook), unit="percentunit",
                   cell="gauge", thresholds=((None, GREEN), (s.latency_timeout_ratio, RED)), min=0, max=1,
                   width=130),
            Column("H", "last canary", q.fill(
                f"time() - max by ({w}) (admission_webhook_canary_timestamp_seconds{q.exp(hook)})", extra=hook),
                   unit="s", decimals=0, thresholds=((None, TEXT), (stale, ORANGE)), cell="color-text", width=110),
        ],
        labels=[(s.cluster_label, "cluster"), ("configuration", "configuration"), ("canary_failure", "failed"),
                ("canary_inconclusive", "inconclusive"), ("not_canaried", "not canaried")],
        mapped={"canary_failure": hints(FAILURE_HINTS, RED), "canary_inconclusive": hints(INCONCLUSIVE_HINTS, ORANGE),
                "not_canaried": hints(NOT_CANARIED_HINTS, BLUE)}, height=5))
    d = d.with_panel(
        statetimeline.Panel().id(layout.id()).title("Canary and probe verdicts").description(
            "The canary's verdict (the kube-apiserver's own call) above the probe's (the exporter's call) over "
            "time: green OK, red FAILING, empty while the canary's answer is inconclusive or the webhook is not "
            "canaried. Canary red while the probe is green: the control plane's path to the webhook is broken "
            "(firewall, Konnectivity, egress proxy, NetworkPolicy), not the webhook; both red: the webhook itself.")
        .datasource(DATASOURCE)
        .with_target(target(f"min by (configuration) (admission_webhook:canary_success:min{q.rec(hook)})", "A",
                            legend="canary ({{configuration}})"))
        .with_target(target(f"min by (configuration) (admission_webhook:probe_success:min{q.rec(hook)})", "B",
                            legend="probe ({{configuration}})"))
        .mappings([*VERDICT, *NOTHING]).thresholds(steps((None, RED), (1, GREEN)))
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .show_value(cm.VisibilityMode.NEVER).merge_values(True).height(8).span(12))
    d = d.with_panel(series_panel(
        layout, "Canary dry run vs timeoutSeconds", "Each dry run's round trip through the kube-apiserver (the "
        "webhook calls plus the apiserver's small overhead: an upper bound of its call); the red line is the "
        "webhook's timeoutSeconds, where the apiserver gives up with `context deadline exceeded`. Near the line "
        "while the probe's duration is low: the control plane's path is slow (egress proxy, Konnectivity), not "
        "the backend. The apiserver's own latency over all calls is the Admission latency panel below.",
        [(f"max by (configuration) (admission_webhook_canary_duration_seconds{q.exp(hook)})",
          "canary dry run ({{configuration}})"),
         (f"max by (configuration) (admission_webhook_timeout_seconds{q.exp(hook)})", "timeoutSeconds")],
        unit="s", min_value=0, overrides=[timeout_line()]))
    return d


# ------------------------------------------------------------------------------------------------ output


def render(d: db.Dashboard) -> dict[str, Any]:
    """The dashboard as plain JSON data (what Grafana imports)."""
    data: dict[str, Any] = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    return data


def dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def panels(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel, rows' collapsed children included, in order."""
    out: list[dict[str, Any]] = []
    for p in data.get("panels", []):
        if p.get("type") == "row":
            out.extend(p.get("panels") or [])
        else:
            out.append(p)
    return out


def docs(dashboards: Sequence[tuple[Path, dict[str, Any]]]) -> str:
    lines = [
        "# Dashboards",
        "",
        "Generated by `python -m dashboards.build` from `dashboards/build.py` (thresholds and selectors from",
        "`alerts/config.yaml`); `python -m dashboards.build --check` fails when this file or the JSON is stale.",
        "Import the JSON files into Grafana (or let the Grafana sidecar load them); both use a Prometheus data",
        "source variable. `tests/test_dashboards.py` runs every query below against a real Prometheus that scrapes",
        "the exporter and a real kube-apiserver, and requires each to return data.",
        "",
        "Variables: `$datasource` (a Prometheus data source), `$cluster` (values of the external cluster label;",
        "All is `.*`, which also matches series without it), `$webhook` (detail dashboard: a webhook name).",
        "`$__rate_interval` is Grafana's rate window. Table columns end in a *fill* (`or on (...) (... * NaN)`)",
        "that gives every webhook a row, so that Grafana's merge of the columns never meets an empty query.",
        "",
    ]
    for path, data in dashboards:
        lines += [f"## {data['title']}", "", f"`{_shown(path)}`, uid `{data['uid']}`. "
                  f"{data.get('description', '')}", ""]
        for p in panels(data):
            lines += [f"### {p['title']} ({p['type']})", "", p.get("description", ""), ""]
            columns = {o["matcher"]["options"]: prop["value"] for o in p.get("fieldConfig", {}).get("overrides", [])
                       for prop in o["properties"] if prop["id"] == "displayName"}
            for t in p.get("targets", []):
                column = columns.get(value_field(t["refId"], len(p["targets"])))
                if column:
                    lines += [f"Column *{column}*:", ""]
                elif p["type"] == "table":
                    lines += ["Label columns:", ""]
                elif t.get("legendFormat"):
                    lines += [f"Series `{t['legendFormat']}`:", ""]
                lines += ["```promql", t["expr"], "```", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def outputs(settings: Settings | None = None) -> dict[Path, str]:
    """Every generated file and its content."""
    s = settings or Settings.load()
    built = [(OVERVIEW_FILE, render(overview(s))), (DETAIL_FILE, render(detail(s)))]
    files = {path: dump(data) for path, data in built}
    files[DOCS] = docs(built)
    return files


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file is stale")
    args = parser.parse_args(argv)
    files = outputs()
    if args.check:
        stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
        for p in stale:
            print(f"{_shown(p)} is stale: run `python -m dashboards.build`", file=sys.stderr)
        return 1 if stale else 0
    for p, text in files.items():
        if not p.exists() or p.read_text() != text:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            print(f"wrote {_shown(p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
