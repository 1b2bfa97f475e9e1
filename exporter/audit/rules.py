"""The audit's rules: pure functions from a webhook (or all of them) and the inventory to findings.

Each per-webhook rule asks `matching.intercepts` about the requests a down backend would block (kube-system's
writes, its own backend's pods, the exporter's own pods when the caller says where it runs, the cluster's
bootstrap kinds); the cross-webhook rules find Fail webhooks that gate each other's backends (cycles) and
chains of webhooks one write may wait on past the apiserver's budget. `audit()` runs them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from ..model import Inventory, LabelSelector, Namespace, Webhook, WebhookKey
from ..resources import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    IP_ADDRESSES,
    LEASES,
    NAMESPACES,
    NODES,
    PODS,
    SERVICE_CIDRS,
    Resource,
)
from ..targets import WebhookPlan, plan
from .matching import (
    APISERVER,
    CATALOGUE,
    CONTROLLER_MANAGER,
    EXEMPT_GROUP,
    KUBE_SYSTEM_KINDS,
    NAME_LABEL,
    NODE,
    REPLICASET_CONTROLLER,
    VIRTUAL,
    WORKLOADS,
    Request,
    compile_condition,
    evaluate_conditions,
    intercepts,
    namespace_labels,
    resource_of,
    selector_matches,
    webhook_rules_match,
)
from .render import SEVERITIES, Finding, Severity, namespace_selector_fix, yaml_snippet

# The kube-apiserver bounds a write request's admission at 34 s (requestTimeoutUpperBound in
# k8s.io/apiserver/pkg/endpoints/handlers): a chain of webhooks that may take longer fails the write.
REQUEST_BUDGET_SECONDS = 34
# A Fail webhook that may hold every matching write this long is a cluster-wide slowdown before it is an
# outage; 15 s is half the API's 30 s maximum and leaves room for a mutating and a validating call in the
# 34 s budget. The API default (10 s) stays below it.
LONG_TIMEOUT_SECONDS = 15

# -- Rule ids (docs/audit.md documents each) ---------------------------------------------------------------
KUBE_SYSTEM = "fail_policy_matches_kube_system"
OWN_BACKEND = "fail_policy_matches_own_backend"
BOOTSTRAP = "fail_policy_matches_bootstrap_kinds"
CYCLE = "fail_policy_cycle"
TIMEOUT_BUDGET = "timeout_budget_exceeded"
SINGLE_ENDPOINT = "fail_policy_single_endpoint"
LONG_TIMEOUT = "fail_policy_long_timeout"
SIDE_EFFECTS = "side_effects_not_none"
VIRTUAL_RESOURCE = "virtual_resource"
MATCH_CONDITION = "match_condition_invalid"
FAIL_OPEN = "fail_open_security_webhook"
SERVICE_MISSING = "backend_service_not_found"
PORT_MISSING = "backend_service_port_not_found"
FIREWALL_PORT = "control_plane_firewall_port"
GATES_EXPORTER = "fail_policy_gates_exporter"

RULE_IDS: tuple[str, ...] = (KUBE_SYSTEM, OWN_BACKEND, BOOTSTRAP, CYCLE, TIMEOUT_BUDGET, SINGLE_ENDPOINT,
                             LONG_TIMEOUT, SIDE_EFFECTS, VIRTUAL_RESOURCE, MATCH_CONDITION, FAIL_OPEN,
                             SERVICE_MISSING, PORT_MISSING, FIREWALL_PORT, GATES_EXPORTER)
# The ports a managed control plane reaches the nodes on by default: GKE private clusters' firewall rule admits
# 443 and 10250 (the kubelet's) from the control plane; EKS node security groups are often built the same way.
CONTROL_PLANE_PORTS = (443, 10250)
# The README's namespace exclusion: the label an operator gives the exporter's namespace, for webhooks to skip it.
EXCLUDE_LABEL = "admission-webhook-exporter.io/exclude"


# -- The audit's context ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditContext:
    inventory: Inventory
    plans: Mapping[WebhookKey, WebhookPlan]
    backends_known: bool  # Services/Namespaces are in the inventory: a missing Service is really missing
    long_timeout_seconds: int = LONG_TIMEOUT_SECONDS
    namespaces: tuple[str, ...] = ()
    exporter_namespace: str | None = None  # where the exporter itself runs, when the caller knows


def _blocked(hook: Webhook, requests: Iterable[Request], ctx: AuditContext) -> tuple[list[Request], str]:
    """The requests a down Fail webhook would reject, and a note when matchConditions stayed undecided."""
    hits: list[Request] = []
    notes: list[str] = []
    for request in requests:
        verdict = intercepts(hook, request, ctx.inventory)
        if verdict is not None:
            hits.append(request)
            text = f"matchCondition {verdict.condition!r} {verdict.detail}"
            if verdict.outcome == "unknown" and text not in notes:
                notes.append(text)
    note = f" (matchConditions not evaluated: {notes[0]}; assumed to match)" if notes else ""
    return hits, note


def _kinds(requests: Sequence[Request]) -> str:
    seen: dict[str, None] = {}
    for r in requests:
        seen[r.resource.plural + (f"/{r.subresource}" if r.subresource else "")] = None
    return ", ".join(seen)


def _service_namespace(hook: Webhook) -> str | None:
    return hook.service.namespace if hook.service is not None else None


# -- Per-webhook rules -------------------------------------------------------------------------------------
def _namespaced_kinds(hook: Webhook) -> list[Resource]:
    """Every namespaced kind a request in a namespace can be for: the catalogue's, those the rules name, and for
    a rule on every resource of named groups (`cert-manager.io`, `*`), any kind of those groups."""
    kinds = {r: None for r in CATALOGUE if r.namespaced and r not in KUBE_SYSTEM_KINDS}
    for rule in hook.rules:
        groups = [g for g in rule.api_groups if g != "*" and g != EXEMPT_GROUP]
        versions = [v for v in rule.api_versions if v != "*"] or ["v1"]
        for name in rule.resources:
            if name.partition("/")[0] == "*" and rule.scope != "Cluster":
                for group in groups:  # a kind the catalogue cannot know: its plural only has to match `*`
                    kinds[Resource(group, versions[0], f"{group}/*", "Any", namespaced=True)] = None
                continue
            custom = resource_of(rule, name)
            if custom is not None and custom.namespaced and custom not in VIRTUAL and custom not in KUBE_SYSTEM_KINDS:
                kinds[custom] = None
    return list(kinds)


def rule_kube_system(hook: Webhook, ctx: AuditContext) -> Iterator[Finding]:
    """Fail and kube-system objects intercepted: a down backend stops kube-system from healing itself.

    Critical for what kube-system's own components write there; a warning for any other namespaced kind, which
    distributions also run there (CoreDNS, the CNI and ingress installed by Jobs, add-on CRs).
    """
    if hook.failure_policy != "Fail":
        return
    requests = [Request(r, op, "kube-system", user=REPLICASET_CONTROLLER if r == PODS else CONTROLLER_MANAGER)
                for r in KUBE_SYSTEM_KINDS for op in ("CREATE", "UPDATE")]
    hits, note = _blocked(hook, requests, ctx)
    severity: Severity = "critical"
    effect = "kube-system cannot create or update its own objects (CoreDNS, kube-proxy, leader election)"
    if not hits:
        others = [Request(r, op, "kube-system", user=CONTROLLER_MANAGER) for r in _namespaced_kinds(hook)
                  for op in ("CREATE", "UPDATE")]
        hits, note = _blocked(hook, others, ctx)
        severity = "warning"
        effect = ("nothing of those kinds can be created or updated in kube-system (distributions install CoreDNS, "
                  "the CNI and ingress there through Jobs and add-on objects)")
    if hits:
        exclude = ["kube-system", *filter(None, [_service_namespace(hook)])]
        yield Finding(KUBE_SYSTEM, severity, hook.key,
                      f"failurePolicy Fail and it intercepts {_kinds(hits)} in kube-system: while its backend is "
                      f"down, {effect}{note}", namespace_selector_fix(hook, exclude))


def rule_own_backend(hook: Webhook, ctx: AuditContext) -> Iterator[Finding]:
    """Fail and it gates the pods of its own backend: once down, the backend can never come back by itself."""
    namespace = _service_namespace(hook)
    if hook.failure_policy != "Fail" or namespace is None:
        return
    requests = [Request(PODS, "CREATE", namespace, user=REPLICASET_CONTROLLER),
                *(Request(w, op, namespace) for w in WORKLOADS for op in ("CREATE", "UPDATE"))]
    hits, note = _blocked(hook, requests, ctx)
    if hits:
        yield Finding(OWN_BACKEND, "critical", hook.key,
                      f"failurePolicy Fail and it intercepts {_kinds(hits)} in {namespace}, the namespace of its "
                      f"own backend: once the backend is down its pods cannot be recreated{note}",
                      namespace_selector_fix(hook, [namespace]))


def rule_gates_exporter(hook: Webhook, ctx: AuditContext) -> Iterator[Finding]:
    """Fail and it gates the Pods of the exporter's own namespace: an outage takes down its own monitoring.

    While the backend is down, an exporter Pod that goes away (an eviction, a node drain, a rollout) cannot be
    recreated, so nothing reports the outage. A warning, not critical: the cluster is no worse for it, and the
    exporter-down alert still fires. Runs only when the caller knows where the exporter runs.
    """
    namespace = ctx.exporter_namespace
    if hook.failure_policy != "Fail" or namespace is None:
        return
    hits, note = _blocked(hook, [Request(PODS, "CREATE", namespace, user=REPLICASET_CONTROLLER)], ctx)
    if hits:
        yield Finding(GATES_EXPORTER, "warning", hook.key,
                      f"failurePolicy Fail and it intercepts pods in {namespace}, the namespace the exporter runs in: "
                      "while its backend is down the exporter's Pod cannot be recreated (after an eviction, a node "
                      "drain, a rollout) and the outage's own monitoring goes down with it; the cluster is no worse "
                      f"for it and AdmissionWebhookExporterDown still fires{note}",
                      namespace_selector_fix(hook, [namespace])
                      + "\n# or the README's exclusion, for every webhook at once: kubectl label namespace "
                      f"{namespace} {EXCLUDE_LABEL}=true, and in each namespaceSelector's matchExpressions "
                      f'{{key: {EXCLUDE_LABEL}, operator: NotIn, values: ["true"]}}')


def bootstrap_requests() -> tuple[Request, ...]:
    """What the control plane and the nodes must write to start and stay alive, as its own users write it."""
    out = [Request(SERVICE_CIDRS, op, name="kubernetes", user=APISERVER) for op in ("CREATE", "UPDATE")]
    out.append(Request(IP_ADDRESSES, "CREATE", name="10.96.0.10", user=APISERVER))
    out += [Request(LEASES, op, "kube-node-lease", "node-1", user=NODE) for op in ("CREATE", "UPDATE")]
    out += [Request(LEASES, op, "kube-system", "kube-controller-manager", user=CONTROLLER_MANAGER)
            for op in ("CREATE", "UPDATE")]
    out += [Request(NODES, "CREATE", name="node-1", user=NODE),
            Request(NODES, "UPDATE", name="node-1", subresource="status", user=NODE)]
    out += [Request(NAMESPACES, "CREATE", ns, ns, user=APISERVER)
            for ns in ("default", "kube-system", "kube-public", "kube-node-lease")]
    out += [Request(r, op, "default", "kubernetes", user=APISERVER)
            for r in (ENDPOINT_SLICES, ENDPOINTS) for op in ("CREATE", "UPDATE")]
    return tuple(out)


def bootstrap_condition(hits: Sequence[Request]) -> str:
    """A CEL matchCondition that lets exactly these kinds through (namespaced ones only where intercepted)."""
    terms: dict[tuple[str, str], list[str]] = {}
    for r in hits:
        names = terms.setdefault((r.resource.group, r.resource.plural), [])
        if (r.resource.namespaced or r.resource == NAMESPACES) and r.namespace not in names:  # a Namespace: its name
            names.append(r.namespace)
    by_group: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (group, resource), seen in terms.items():
        by_group.setdefault((group, tuple(seen)), []).append(resource)
    parts = []
    for (group, namespaces), resources in by_group.items():
        res = (f"request.resource.resource == '{resources[0]}'" if len(resources) == 1 else
               "request.resource.resource in [" + ", ".join(f"'{r}'" for r in resources) + "]")
        term = f"request.resource.group == '{group}' && {res}"
        if namespaces:
            term += " && request.namespace in [" + ", ".join(f"'{n}'" for n in namespaces) + "]"
        parts.append(f"({term})")
    return "!(\n  " + " ||\n  ".join(parts) + "\n)" if len(parts) > 1 else "!" + parts[0]


BOOTSTRAP_EFFECTS = (
    (IP_ADDRESSES, "no Service can be created (every ClusterIP allocation creates an IPAddress)"),
    (SERVICE_CIDRS, "the default ServiceCIDR 'kubernetes' cannot be created or updated"),
    (NODES, "nodes cannot register or report status"),
    (LEASES, "node heartbeats and leader election fail"),
    (NAMESPACES, "the system namespaces cannot be created or re-created"),
    (ENDPOINT_SLICES, "the apiserver cannot publish the endpoints of the 'kubernetes' Service"),
    (ENDPOINTS, "the apiserver cannot publish the endpoints of the 'kubernetes' Service"),
)


def rule_bootstrap(hook: Webhook, ctx: AuditContext) -> Iterator[Finding]:
    """Fail on what the apiserver and nodes write to start: a down backend stops Services, nodes, leases."""
    if hook.failure_policy != "Fail":
        return
    hits, note = _blocked(hook, bootstrap_requests(), ctx)
    if not hits:
        return
    wildcard = any(r.startswith("*") for rule in hook.rules for r in rule.resources)
    kinds = {r.resource.plural for r in hits}
    effects = list(dict.fromkeys(effect for resource, effect in BOOTSTRAP_EFFECTS if resource.plural in kinds))
    why = (f"failurePolicy Fail and it intercepts cluster bootstrap kinds ({_kinds(hits)})"
           + (" through a wildcard rule" if wildcard else "")
           + f"; while its backend is down {'; '.join(effects)}{note}")
    expression = "\n".join("      " + line for line in bootstrap_condition(hits).splitlines())
    fix = ("# append to the webhook's matchConditions (Kubernetes 1.30+)\nmatchConditions:\n"
           f"  - name: exclude-cluster-bootstrap\n    expression: |-\n{expression}")
    yield Finding(BOOTSTRAP, "critical", hook.key, why, fix)


def rule_single_endpoint(hook: Webhook, ctx: AuditContext) -> Iterator[Finding]:
    """Fail and one ready endpoint: a rollout, an eviction or a node drain is an outage."""
    p = ctx.plans.get(hook.key)
    if hook.failure_policy != "Fail" or p is None or p.endpoints_ready != 1 or hook.service is None:
        return
    svc = hook.service
    fix = yaml_snippet({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                 "metadata": {"name": svc.name, "namespace": svc.namespace},
                 "spec": {"minAvailable": 1, "selector": {"matchLabels": "<spec.selector of Service "
                                                                          f"{svc.namespace}/{svc.name}>"}}})
    yield Finding(SINGLE_ENDPOINT, "warning", hook.key,
                  f"failurePolicy Fail and Service {svc.namespace}/{svc.name} has a single ready endpoint: any "
                  "restart, eviction or node drain of that pod rejects every matching request",
                  f"# scale the backend to 2+ replicas spread over nodes (spec.replicas: 2), then\n{fix}")


def rule_long_timeout(hook: Webhook, ctx: AuditContext) -> Iterator[Finding]:
    """Fail with a long timeout: a hung backend holds every matching write that long, then rejects it."""
    if hook.failure_policy == "Fail" and hook.timeout_seconds > ctx.long_timeout_seconds:
        yield Finding(LONG_TIMEOUT, "warning", hook.key,
                      f"failurePolicy Fail with timeoutSeconds {hook.timeout_seconds} (> "
                      f"{ctx.long_timeout_seconds}): a hung backend holds every matching write "
                      f"{hook.timeout_seconds} s before rejecting it, and clients and controllers back off",
                      "timeoutSeconds: 10")


def rule_side_effects(hook: Webhook, ctx: AuditContext) -> Iterator[Finding]:
    """Side effects make every dry-run request fail and keep the exporter from probing past the handshake."""
    if hook.side_effects not in ("None", "NoneOnDryRun"):
        shown = hook.side_effects or "unset"
        yield Finding(SIDE_EFFECTS, "warning", hook.key,
                      f"sideEffects {shown}: the apiserver rejects every dry-run request it matches (kubectl diff, "
                      "apply --dry-run=server) and the v1 API accepts only None/NoneOnDryRun",
                      "sideEffects: None  # or NoneOnDryRun if it skips its side effects when request.dryRun is true")


def rule_virtual_resource(hook: Webhook, ctx: AuditContext) -> Iterator[Finding]:
    """TokenReview/SubjectAccessReview are not stored: a webhook there sits in every delegated auth check."""
    named = sorted({v.plural for rule in hook.rules for r in rule.resources for v in VIRTUAL
                    if r.partition("/")[0] == v.plural and ("*" in rule.api_groups or v.group in rule.api_groups)})
    if named:
        rules = [{"apiGroups": list(rule.api_groups), "apiVersions": list(rule.api_versions),
                  "operations": list(rule.operations),
                  "resources": [r for r in rule.resources if r.partition("/")[0] not in named]}
                 for rule in hook.rules]
        yield Finding(VIRTUAL_RESOURCE, "warning", hook.key,
                      f"it intercepts {', '.join(named)}: virtual resources that are never stored; the webhook is "
                      "called on every delegated authentication/authorization check (kubelet, metrics-server, "
                      "aggregated APIs), which fail while it is down",
                      yaml_snippet({"rules": [r for r in rules if r["resources"]]}))


def condition_requests(hook: Webhook) -> list[Request]:
    """Requests the webhook's rules match, to evaluate its matchConditions on: each kind and operation once."""
    resources = {r: None for r in CATALOGUE}
    for rule in hook.rules:
        for name in rule.resources:
            custom = resource_of(rule, name)
            if custom is not None:
                resources[custom] = None
    out = []
    for res in resources:
        for op in ("CREATE", "UPDATE", "DELETE"):
            in_default = res.namespaced or res == NAMESPACES  # a Namespace's request.namespace is its name
            request = Request(res, op, "default" if in_default else "",
                              "default" if res == NAMESPACES else "example")
            if webhook_rules_match(hook, request):
                out.append(request)
    return out


def verdict_variables(hook: Webhook) -> set[str]:
    """The variables the webhook's (compiling) matchConditions read."""
    names: set[str] = set()
    for c in hook.match_conditions:
        program, _ = compile_condition(c.expression)
        if program is not None:
            names.update(program.variables())
    return names


def rule_match_conditions(hook: Webhook, ctx: AuditContext) -> Iterator[Finding]:
    """matchConditions that do not compile, or fail on a request the rules match: rejected under Fail."""
    problems: list[str] = []
    for c in hook.match_conditions:
        _, compiled = compile_condition(c.expression)
        if compiled is not None and compiled.outcome == "error":
            problems.append(f"matchCondition {c.name!r} does not compile: {compiled.detail}")
    if not problems:
        for request in condition_requests(hook):
            verdict = evaluate_conditions(hook, request, ctx.inventory)
            if verdict.outcome == "error":
                null = request.operation == "DELETE" and "object" in verdict_variables(hook)
                problems.append(f"matchCondition {verdict.condition!r} fails on {request.describe}: {verdict.detail}"
                                + (" (object is null on DELETE)" if null else ""))
                break
    if problems:
        severity: Severity = "critical" if hook.failure_policy == "Fail" else "warning"
        effect = ("the apiserver rejects the request" if hook.failure_policy == "Fail"
                  else "the webhook is silently skipped")
        yield Finding(MATCH_CONDITION, severity, hook.key, f"{problems[0]}: {effect}",
                      "# fix the expression; guard optional fields with has(...) and DELETE (object is null) "
                      "with request.operation, then check it with: kubectl apply --dry-run=server -f <file>")


def _broad(hook: Webhook) -> bool:
    """Wildcard groups or resources, or pods: the scope of a policy engine or a pod-security webhook."""
    for rule in hook.rules:
        if "*" in rule.api_groups or any(r.startswith("*") for r in rule.resources):
            return True
    return webhook_rules_match(hook, Request(PODS, "CREATE", "default"))


def rule_fail_open(hook: Webhook, ctx: AuditContext) -> Iterator[Finding]:
    """Ignore on a broad validating webhook: a policy that silently stops enforcing while its backend is down."""
    if hook.failure_policy == "Ignore" and hook.key.type == "validating" and _broad(hook):
        yield Finding(FAIL_OPEN, "info", hook.key,
                      "failurePolicy Ignore on a broad validating webhook: while its backend is down every request "
                      "is admitted unchecked; if it enforces security policy, alert on its probes",
                      "# keep Ignore, or switch with its scope narrowed first (kube-system, its own namespace and "
                      "bootstrap kinds excluded):\nfailurePolicy: Fail")


def rule_service(hook: Webhook, ctx: AuditContext) -> Iterator[Finding]:
    """A service reference to nothing: every call fails now (rejected under Fail)."""
    ref = hook.service
    if ref is None or not ctx.backends_known:
        return
    severity: Severity = "critical" if hook.failure_policy == "Fail" else "warning"
    service = ctx.inventory.services.get((ref.namespace, ref.name))
    if service is None:
        yield Finding(SERVICE_MISSING, severity, hook.key,
                      f"clientConfig.service {ref.namespace}/{ref.name} does not exist: every call fails now",
                      f"# create Service {ref.namespace}/{ref.name}, or point the webhook at the right one:\n"
                      + yaml_snippet({"clientConfig": {"service": {"namespace": ref.namespace, "name": "<service>",
                                                            "port": ref.port}}}))
        return
    if service.type == "ExternalName":
        return
    ports = [p.port for p in service.ports if p.protocol == "TCP"]
    if ref.port not in ports:
        yield Finding(PORT_MISSING, severity, hook.key,
                      f"clientConfig.service.port {ref.port} is not a port of Service {ref.namespace}/{ref.name} "
                      f"(it exposes {', '.join(map(str, ports)) or 'none'}): every call fails now",
                      yaml_snippet({"clientConfig": {"service": {"namespace": ref.namespace, "name": ref.name,
                                                          "port": ports[0] if len(ports) == 1 else "<port>"}}}))


def _container_ports(hook: Webhook, ctx: AuditContext) -> list[int]:
    """The ports the apiserver's calls land on in the backend's pods: the endpoints' (EndpointSlices resolve a
    named targetPort), else a numeric targetPort, else the Service port itself. Empty when unknown."""
    ref = hook.service
    p = ctx.plans.get(hook.key)
    if ref is None:
        return []
    if p is not None and p.targets:
        return sorted({t.port for t in p.targets})
    service = ctx.inventory.services.get((ref.namespace, ref.name))
    if service is None or service.type == "ExternalName":
        return []
    port = next((sp for sp in service.ports if sp.port == ref.port and sp.protocol == "TCP"), None)
    if port is None or isinstance(port.target_port, str):
        return []
    return [port.target_port or port.port]


def rule_firewall_port(hook: Webhook, ctx: AuditContext) -> Iterator[Finding]:
    """A service webhook served on a port managed control planes do not reach by default: the probes and
    port-forward work, the apiserver's calls time out."""
    ports = [p for p in _container_ports(hook, ctx) if p not in CONTROL_PLANE_PORTS]
    if not ports or hook.service is None:
        return
    ref = hook.service
    shown = ", ".join(map(str, ports))
    severity: Severity = "warning" if hook.failure_policy == "Fail" else "info"
    service = ctx.inventory.services.get((ref.namespace, ref.name))
    name = next((sp.name for sp in service.ports if sp.port == ref.port), "") if service is not None else ""
    fix = (f"# Either let the control plane reach port {ports[0]} on the nodes:\n"
           f"#   GKE private cluster: gcloud compute firewall-rules create allow-control-plane-{ports[0]} "
           f"--network NETWORK --direction INGRESS --source-ranges MASTER_IPV4_CIDR --target-tags NODE_TAG "
           f"--allow tcp:{ports[0]}\n"
           f"#   EKS: aws ec2 authorize-security-group-ingress --group-id NODE_SECURITY_GROUP --protocol tcp "
           f"--port {ports[0]} --source-group CLUSTER_SECURITY_GROUP\n"
           f"# or make the pods serve on 10250 (the webhook server's port flag and containerPort) and point "
           f"Service {ref.namespace}/{ref.name} at it:\n"
           + yaml_snippet({"spec": {"ports": [{**({"name": name} if name else {}), "port": ref.port,
                                               "targetPort": 10250}]}}))
    yield Finding(FIREWALL_PORT, severity, hook.key,
                  f"Service {ref.namespace}/{ref.name} sends the apiserver's calls to container port {shown}: a "
                  "managed control plane reaches the nodes only on the ports its firewall admits (GKE private "
                  "clusters admit 443 and 10250 by default, EKS node security groups often the same), so there the "
                  "calls time out while port-forward, in-cluster clients and the exporter's probes work; the canary "
                  "(--canary-namespace) confirms it", fix)


PER_WEBHOOK: tuple[Callable[[Webhook, AuditContext], Iterator[Finding]], ...] = (
    rule_kube_system, rule_own_backend, rule_gates_exporter, rule_bootstrap, rule_single_endpoint, rule_long_timeout,
    rule_side_effects, rule_virtual_resource, rule_match_conditions, rule_fail_open, rule_service, rule_firewall_port)


# -- Rules across webhooks ---------------------------------------------------------------------------------
def _backend(hook: Webhook) -> tuple[str, str] | None:
    return (hook.service.namespace, hook.service.name) if hook.service is not None else None


def gating_graph(hooks: Sequence[Webhook], ctx: AuditContext) -> dict[WebhookKey, set[WebhookKey]]:
    """u -> v when Fail webhook v, served by another backend, intercepts pod creation in u's backend namespace.

    Webhooks served by the same Service (a policy engine's validating and mutating hooks) share one fate:
    that is the own-backend finding, not a cycle.
    """
    fail = [h for h in hooks if h.failure_policy == "Fail" and h.service is not None]
    # Who gates pod creation depends only on the namespace, so ask once per backend namespace, not once per
    # pair of webhooks (2,000 webhooks: 4 million evaluations otherwise).
    gates: dict[str, list[Webhook]] = {}
    for namespace in sorted({h.service.namespace for h in fail if h.service is not None}):
        pod = Request(PODS, "CREATE", namespace, user=REPLICASET_CONTROLLER)
        gates[namespace] = [v for v in fail if intercepts(v, pod, ctx.inventory) is not None]
    gate_backends = {ns: [(v.key, _backend(v)) for v in gating] for ns, gating in gates.items()}
    edges: dict[WebhookKey, set[WebhookKey]] = {}
    for u in fail:
        assert u.service is not None
        own = _backend(u)
        edges[u.key] = {key for key, backend in gate_backends[u.service.namespace] if backend != own}
    return edges


def cycles(edges: Mapping[WebhookKey, set[WebhookKey]]) -> list[list[WebhookKey]]:
    """Strongly connected components with more than one webhook (Tarjan's, iterative: a chain of thousands
    of webhooks must not hit Python's recursion limit), each sorted."""
    index: dict[WebhookKey, int] = {}
    low: dict[WebhookKey, int] = {}
    stack: list[WebhookKey] = []
    on_stack: set[WebhookKey] = set()
    found: list[list[WebhookKey]] = []
    for root in sorted(edges):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[WebhookKey, Iterator[WebhookKey]]] = [(root, iter(edges.get(root, ())))]
        while work:
            v, successors = work[-1]
            descended = False
            for w in successors:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(edges.get(w, ()))))
                    descended = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)  # the components are the same whatever the visiting order; their order is made stable


def rule_cycles(hooks: Sequence[Webhook], ctx: AuditContext) -> Iterator[Finding]:
    """Fail webhooks gating each other's backend pods: when both go down neither can come back.

    A webhook gating its own backend is the own-backend finding, reported once there.
    """
    edges = gating_graph(hooks, ctx)
    by_key = {h.key: h for h in hooks}
    for component in cycles(edges):
        members = ", ".join(f"{k.configuration}/{k.name}" for k in component)
        for key in component:
            hook = by_key[key]
            gated = sorted({_service_namespace(by_key[u]) or "" for u in component if key in edges.get(u, ())})
            yield Finding(CYCLE, "critical", key,
                          f"failurePolicy Fail webhooks gate each other's backend pods ({members}): if they are down "
                          "together none can be recreated",
                          namespace_selector_fix(hook, gated))


@dataclass(frozen=True)
class Budget:
    request: Request
    seconds: int
    members: tuple[WebhookKey, ...]
    formula: str


def _budget(hooks: Sequence[Webhook], request: Request, inventory: Inventory) -> Budget | None:
    called = [h for h in hooks if intercepts(h, request, inventory) is not None]
    mutating = [h for h in called if h.key.type == "admit"]
    validating = [h for h in called if h.key.type == "validating"]
    # A mutating webhook with reinvocationPolicy IfNeeded may be called a second time in the same request.
    mutate = sum(h.timeout_seconds * (2 if h.reinvocation_policy == "IfNeeded" else 1) for h in mutating)
    validate = max((h.timeout_seconds for h in validating), default=0)  # validating webhooks run in parallel
    if mutate + validate <= REQUEST_BUDGET_SECONDS:
        return None
    terms = [f"{h.timeout_seconds}{'x2' if h.reinvocation_policy == 'IfNeeded' else ''}" for h in mutating]
    formula = (" + ".join(terms) or "0") + f" (mutating) + {validate} (validating, the longest)"
    longest = [max(validating, key=lambda h: h.timeout_seconds)] if validating else []  # the others overlap it
    return Budget(request, mutate + validate, tuple(h.key for h in (*mutating, *longest)), formula)


def budget_requests(hooks: Sequence[Webhook], ctx: AuditContext) -> list[Request]:
    """Each known kind (and every kind a rule names) x write operation, in one namespace per selector outcome."""
    resources = {r: None for r in CATALOGUE}
    for hook in hooks:
        for rule in hook.rules:
            for name in rule.resources:
                custom = resource_of(rule, name)
                if custom is not None and custom not in VIRTUAL:
                    resources[custom] = None
    representatives: dict[tuple[bool, ...], str] = {}
    for ns in ctx.namespaces:
        labels = namespace_labels(ctx.inventory, ns)
        outcome = tuple(selector_matches(h.namespace_selector, labels) for h in hooks)
        representatives.setdefault(outcome, ns)
    out = []
    for res in resources:
        for op in ("CREATE", "UPDATE", "DELETE"):
            if res == NAMESPACES:
                out += [Request(res, op, ns, ns) for ns in representatives.values()]
            elif res.namespaced:
                out += [Request(res, op, ns) for ns in representatives.values()]
            else:
                out.append(Request(res, op))
    return out


def rule_timeout_budget(hooks: Sequence[Webhook], ctx: AuditContext) -> Iterator[Finding]:
    """The webhooks one write may wait on add up past the apiserver's 34 s: the write times out."""
    worst: dict[WebhookKey, Budget] = {}
    for request in budget_requests(hooks, ctx):
        budget = _budget(hooks, request, ctx.inventory)
        if budget is None:
            continue
        for key in budget.members:
            if key not in worst or budget.seconds > worst[key].seconds:
                worst[key] = budget
    by_key = {h.key: h for h in hooks}
    for key, budget in sorted(worst.items()):
        # Every member scaled by the same factor: if each applies its own fix, the sum fits the budget. A
        # webhook already at the floor (1 s) has nothing to give: the finding goes to the others.
        suggested = max(1, by_key[key].timeout_seconds * REQUEST_BUDGET_SECONDS // budget.seconds)
        if suggested >= by_key[key].timeout_seconds:
            continue
        yield Finding(TIMEOUT_BUDGET, "warning", key,
                      f"on {budget.request.describe} the apiserver may wait {budget.formula} = {budget.seconds} s "
                      f"on webhooks, above its {REQUEST_BUDGET_SECONDS} s budget for a write: the write times out",
                      f"timeoutSeconds: {suggested}  # each webhook matching {budget.request.describe} scaled to "
                      f"fit {REQUEST_BUDGET_SECONDS} s")


CROSS_WEBHOOK: tuple[Callable[[Sequence[Webhook], AuditContext], Iterator[Finding]], ...] = (
    rule_cycles, rule_timeout_budget)


# -- Latent risks: namespaces that do not exist (yet), or whose labels the manifests do not give ---------------
def satisfying_labels(selector: LabelSelector, name: str, base: Mapping[str, str] | None = None
                      ) -> dict[str, str] | None:
    """Labels a namespace called `name` (with `base` labels) could carry for `selector` to match it; None when
    none can (a NotIn on its name, a value it already has)."""
    labels = {NAME_LABEL: name, **(base or {})}
    for key, value in selector.match_labels:
        if labels.setdefault(key, value) != value:
            return None
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "In" and not present and req.values:
            labels[req.key] = req.values[0]
        elif req.operator == "Exists" and not present:
            labels[req.key] = "true"
    return labels if selector_matches(selector, labels) else None


def _describe(labels: Mapping[str, str]) -> str:
    shown = [f"{k}={v}" for k, v in sorted(labels.items()) if k != NAME_LABEL]
    return "labeled " + ", ".join(shown) if shown else "of that name"


def new_namespaces(hooks: Sequence[Webhook], ctx: AuditContext) -> dict[str, dict[str, str]]:
    """One namespace, not in the cluster, per namespaceSelector that no namespace matches now, and one that
    matches as many of them at once as can be (their webhooks then add up on the same request)."""
    current = [namespace_labels(ctx.inventory, ns) for ns in ctx.namespaces]
    unmatched: dict[LabelSelector, None] = {}
    for hook in hooks:
        sel = hook.namespace_selector
        if not sel.is_empty and not any(selector_matches(sel, labels) for labels in current):
            unmatched[sel] = None
    found: dict[str, dict[str, str]] = {}
    union: dict[str, str] = {}
    for sel in unmatched:
        named = [r.values[0] for r in sel.match_expressions if r.key == NAME_LABEL and r.operator == "In" and r.values]
        name = dict(sel.match_labels).get(NAME_LABEL) or (named[0] if named else "")
        labels = satisfying_labels(sel, name or "new-namespace")
        if labels is None:
            continue
        label = name or f"(a new namespace {_describe(labels)})"
        found[label] = {**labels, NAME_LABEL: label} if not name else labels
        if not name and (merged := satisfying_labels(sel, "new-namespace", union)) is not None:
            union = merged
    if len(unmatched) > 1 and union and (label := f"(a new namespace {_describe(union)})") not in found:
        found[label] = {**union, NAME_LABEL: label}
    return found


def _latent(f: Finding, condition: str) -> Finding:
    return replace(f, severity="latent", why=f"latent, {f.severity} once {condition}: {f.why}")


def latent_findings(hooks: Sequence[Webhook], ctx: AuditContext) -> Iterator[Finding]:
    """What the rules find once namespaces their selectors match exist, beside those that do.

    A namespaceSelector that matches no namespace now hides the timeout budget (and any rule asking about a
    namespace): add such namespaces and run the cross-webhook rules again. With no Namespace objects (offline
    manifests) the labels of kube-system, the backends' and the exporter's namespaces are unknown: give each
    webhook the labels its selector wants there, and run its per-webhook rules again. Real findings win:
    `audit()` keeps one per rule.
    """
    extra = new_namespaces(hooks, ctx)
    if extra:
        added = {n: Namespace(n, tuple(sorted(v.items()))) for n, v in extra.items()}
        namespaces = {**ctx.inventory.namespaces, **added}
        grown = replace(ctx, inventory=replace(ctx.inventory, namespaces=namespaces),
                        namespaces=(*ctx.namespaces, *extra))
        for cross in CROSS_WEBHOOK:
            for f in cross(hooks, grown):
                where = next((n for n in extra if n in f.why), "")
                if where:
                    yield _latent(f, f"a namespace {_describe(extra[where])} exists (none does now)")
    for hook in hooks:
        if hook.namespace_selector.is_empty:
            continue
        asked = ("kube-system", *filter(None, [_service_namespace(hook), ctx.exporter_namespace]))
        for ns in dict.fromkeys(asked):
            if ns in ctx.inventory.namespaces:
                continue  # its labels are known
            labels = satisfying_labels(hook.namespace_selector, ns)
            if labels is None or labels == {NAME_LABEL: ns}:
                continue  # it cannot match there, or it already does
            grown = replace(ctx, inventory=replace(ctx.inventory, namespaces={
                **ctx.inventory.namespaces, ns: Namespace(ns, tuple(sorted(labels.items())))}))
            for rule in (rule_kube_system, rule_own_backend, rule_gates_exporter):
                for f in rule(hook, grown):
                    if ns in f.why:
                        yield _latent(f, f"namespace {ns} is {_describe(labels)} (no Namespace object says "
                                         "what it carries)")


# -- Entry points --------------------------------------------------------------------------------------------
def _namespaces(inventory: Inventory) -> tuple[str, ...]:
    names = {"default", "kube-system", *inventory.namespaces}
    names.update(h.service.namespace for h in inventory.webhooks if h.service is not None)
    return tuple(sorted(names))


def audit(inventory: Inventory, plans: Sequence[WebhookPlan] | None = None, *,
          long_timeout_seconds: int = LONG_TIMEOUT_SECONDS, backends_known: bool | None = None,
          exporter_namespace: str | None = None) -> tuple[Finding, ...]:
    """Every finding for every webhook, most severe first; one finding per (webhook, rule id).

    `backends_known` says whether a Service absent from the inventory is absent from the cluster: true for a
    live cluster (its Namespaces are listed) and for manifests that include Services; by default inferred so.
    `exporter_namespace`: where the exporter runs (`serve` in a Pod, `--exporter-namespace`); without it the rule
    on the exporter's own Pods does not run. Latent findings (`latent_findings`) come last and only where the
    rule found nothing real.
    """
    if backends_known is None:
        backends_known = bool(inventory.namespaces or inventory.services or inventory.endpoint_slices)
    ctx = AuditContext(inventory=inventory, plans={p.key: p for p in (plan(inventory) if plans is None else plans)},
                       backends_known=backends_known, long_timeout_seconds=long_timeout_seconds,
                       namespaces=_namespaces(inventory), exporter_namespace=exporter_namespace)
    findings: dict[tuple[WebhookKey, str], Finding] = {}
    for hook in inventory.webhooks:
        for rule in PER_WEBHOOK:
            for f in rule(hook, ctx):
                findings.setdefault((f.webhook, f.id), f)
    for cross in CROSS_WEBHOOK:
        for f in cross(inventory.webhooks, ctx):
            findings.setdefault((f.webhook, f.id), f)
    for f in latent_findings(inventory.webhooks, ctx):
        findings.setdefault((f.webhook, f.id), f)
    return tuple(sorted(findings.values(), key=lambda f: (SEVERITIES.index(f.severity), f.webhook, f.id)))


def at_or_above(findings: Iterable[Finding], threshold: Severity) -> list[Finding]:
    """Findings as severe as `threshold` or more: what fails a CI gate."""
    return [f for f in findings if SEVERITIES.index(f.severity) <= SEVERITIES.index(threshold)]
