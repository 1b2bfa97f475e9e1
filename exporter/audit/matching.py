"""Which webhooks the apiserver calls for a request, decided the way the kube-apiserver decides it.

Rules with their `*`, `*/*` and `res/*` forms, scope, namespaceSelector against the namespace's labels,
objectSelector, and matchConditions evaluated as CEL against a synthetic AdmissionRequest. The requests are the
ones the control plane itself must get through, made by the users that make them (`Request`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import cel
import cel.stdlib

from ..model import Inventory, LabelSelector, LabelSelectorRequirement, Rule, Webhook
from ..resources import (
    CERTIFICATE_SIGNING_REQUESTS,
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    CONFIG_MAPS,
    CRON_JOBS,
    DAEMON_SETS,
    DEPLOYMENTS,
    ENDPOINT_SLICES,
    ENDPOINTS,
    EVENTS,
    INGRESSES,
    IP_ADDRESSES,
    JOBS,
    LEASES,
    LOCAL_SUBJECT_ACCESS_REVIEWS,
    NAMESPACES,
    NETWORK_POLICIES,
    NODES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    PODS,
    REPLICA_SETS,
    ROLE_BINDINGS,
    ROLES,
    SECRETS,
    SELF_SUBJECT_ACCESS_REVIEWS,
    SELF_SUBJECT_REVIEWS,
    SELF_SUBJECT_RULES_REVIEWS,
    SERVICE_ACCOUNTS,
    SERVICE_CIDRS,
    SERVICES,
    STATEFUL_SETS,
    SUBJECT_ACCESS_REVIEWS,
    TOKEN_REVIEWS,
    Resource,
    lookup,
)

NAME_LABEL = "kubernetes.io/metadata.name"

# -- What the apiserver sends: resources, requests --------------------------------------------------------
WORKLOADS = (DEPLOYMENTS, REPLICA_SETS, STATEFUL_SETS, DAEMON_SETS, JOBS, CRON_JOBS)
VIRTUAL = (TOKEN_REVIEWS, SELF_SUBJECT_REVIEWS, SUBJECT_ACCESS_REVIEWS, SELF_SUBJECT_ACCESS_REVIEWS,
           LOCAL_SUBJECT_ACCESS_REVIEWS, SELF_SUBJECT_RULES_REVIEWS)
# What kube-system's components and add-ons write there (CoreDNS, kube-proxy, leader election, CA publishing).
KUBE_SYSTEM_KINDS = (PODS, *WORKLOADS[:4], CONFIG_MAPS, SECRETS, SERVICE_ACCOUNTS, SERVICES, ENDPOINTS,
                     ENDPOINT_SLICES, LEASES)
# Common kinds a wildcard rule also catches: the candidates of the timeout budget.
CATALOGUE = (*KUBE_SYSTEM_KINDS, *WORKLOADS[4:], NAMESPACES, NODES, SERVICE_CIDRS, IP_ADDRESSES,
             PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, EVENTS, INGRESSES, NETWORK_POLICIES, ROLES, ROLE_BINDINGS,
             CLUSTER_ROLES, CLUSTER_ROLE_BINDINGS, CERTIFICATE_SIGNING_REQUESTS)
# The apiserver never sends its own admission configuration to webhooks (IsExemptAdmissionConfigurationResource).
EXEMPT_GROUP = "admissionregistration.k8s.io"

APISERVER = ("system:apiserver", ("system:authenticated", "system:masters"))
NODE = ("system:node:node-1", ("system:authenticated", "system:nodes"))
CONTROLLER_MANAGER = ("system:kube-controller-manager", ("system:authenticated",))
REPLICASET_CONTROLLER = ("system:serviceaccount:kube-system:replicaset-controller",
                         ("system:authenticated", "system:serviceaccounts", "system:serviceaccounts:kube-system"))
ADMIN = ("kubernetes-admin", ("system:authenticated", "system:masters"))


@dataclass(frozen=True)
class Request:
    """A synthetic admission request: the attributes the apiserver matches webhooks against."""

    resource: Resource
    operation: str
    namespace: str = ""  # "" for cluster-scoped objects; a Namespace's own name for namespaces
    name: str = "example"
    subresource: str = ""
    user: tuple[str, tuple[str, ...]] = ADMIN

    @property
    def describe(self) -> str:
        res = self.resource.plural + (f"/{self.subresource}" if self.subresource else "")
        where = f" in {self.namespace}" if self.namespace and self.resource != NAMESPACES else ""
        return f"{self.operation} {res}{where}"


def resource_of(rule: Rule, resource: str) -> Resource | None:
    """A resource a rule names (a custom resource, usually), or None for wildcards and exempt kinds."""
    base = resource.partition("/")[0]
    groups = [g for g in rule.api_groups if g != "*"]
    if base == "*" or not groups or groups[0] == EXEMPT_GROUP:
        return None
    versions = [v for v in rule.api_versions if v != "*"]
    return lookup(groups[0], versions[0] if versions else "v1", base, namespaced=rule.scope != "Cluster")


# -- Matching, as the apiserver does it --------------------------------------------------------------------
def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: every matchLabels pair and every requirement must hold; empty matches."""
    if any(labels.get(k) != v for k, v in selector.match_labels):
        return False
    return all(_requirement_holds(r, labels) for r in selector.match_expressions)


def _requirement_holds(req: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    present = req.key in labels
    if req.operator == "In":
        return present and labels[req.key] in req.values
    if req.operator == "NotIn":
        return not present or labels[req.key] not in req.values
    if req.operator == "Exists":
        return present
    return not present  # DoesNotExist (the parser admits no other operator)


def rule_matches(rule: Rule, request: Request, *, equivalent: bool = True) -> bool:
    """The apiserver's rules.Matcher: operation, group, version, resource/subresource and scope.

    matchPolicy Equivalent also sends a request made through another version of the same resource, so under
    it the version is not compared (our synthetic requests use the preferred version anyway).
    """
    res = request.resource
    if not ("*" in rule.operations or request.operation in rule.operations):
        return False
    if not ("*" in rule.api_groups or res.group in rule.api_groups):
        return False
    if not equivalent and not ("*" in rule.api_versions or res.version in rule.api_versions):
        return False
    if not any(_resource_matches(r, res.plural, request.subresource) for r in rule.resources):
        return False
    if rule.scope == "Namespaced":
        return res != NAMESPACES and bool(request.namespace)
    if rule.scope == "Cluster":
        return res == NAMESPACES or not request.namespace
    return True


def _resource_matches(pattern: str, resource: str, subresource: str) -> bool:
    # Exactly rules.Matcher.resource(): "*" is every main resource, "*/*" everything, "pods/*" pods and all
    # of its subresources, "*/status" every status subresource.
    res, _, sub = pattern.partition("/")
    return (res in ("*", resource)) and (sub in ("*", subresource))


def webhook_rules_match(hook: Webhook, request: Request) -> bool:
    if request.resource.group == EXEMPT_GROUP:
        return False
    equivalent = hook.match_policy != "Exact"
    return any(rule_matches(r, request, equivalent=equivalent) for r in hook.rules)


def namespace_labels(inventory: Inventory, name: str) -> dict[str, str]:
    """The live labels when discovery saw the Namespace, else the label the apiserver sets on every one."""
    ns = inventory.namespaces.get(name)
    return dict(ns.labels) if ns is not None else {NAME_LABEL: name}


def namespace_selector_matches(hook: Webhook, request: Request, inventory: Inventory) -> bool:
    """Cluster-scoped objects other than Namespaces are never exempted by a namespaceSelector."""
    if not request.namespace:
        return True
    return selector_matches(hook.namespace_selector, namespace_labels(inventory, request.namespace))


def object_labels(request: Request, inventory: Inventory) -> dict[str, str]:
    """Labels of the synthetic object: a Namespace has its own; other objects carry none we can know of."""
    return namespace_labels(inventory, request.name) if request.resource == NAMESPACES else {}


# -- matchConditions: CEL, evaluated --------------------------------------------------------------------
Outcome = Literal["call", "skip", "error", "unknown"]

# Kubernetes adds these CEL libraries and variables to matchConditions; the Python CEL library does not have
# them, so an expression that needs one is left undecided (and assumed to let the request through).
KUBERNETES_ONLY = frozenset({
    "authorizer", "path", "group", "resource", "subresource", "namespace", "check", "allowed", "reason",
    "errored", "error", "serviceAccount", "fieldSelector", "labelSelector", "isSorted", "find", "findAll",
    "url", "isURL", "getScheme", "getHost", "getHostname", "getPort", "getEscapedPath", "getQuery", "quantity",
    "isQuantity", "ip", "isIP", "cidr", "isCIDR", "semver", "isSemver", "format", "optional", "orValue",
    "hasValue", "value", "of", "none", "namespaceObject", "params", "variables",
})


@dataclass(frozen=True)
class ConditionVerdict:
    """What the apiserver does with a request after matchConditions: call, skip, or reject (error)."""

    outcome: Outcome
    detail: str = ""
    condition: str = ""  # the name of the matchCondition that decided an error or unknown


@functools.lru_cache(maxsize=1)
def _cel_functions() -> dict[str, Callable[..., Any]]:
    # Kubernetes enables cel-go's strings, lists, sets and math extensions in matchConditions.
    context = cel.Context()
    cel.stdlib.add_stdlib_to_context(context)
    return context.functions


@functools.lru_cache(maxsize=1024)
def compile_condition(expression: str) -> tuple[cel.Program | None, ConditionVerdict | None]:
    """A compiled program, or why not: `error` (the expression is invalid) or `unknown` (we cannot parse it)."""
    try:
        return cel.compile(expression), None
    except ValueError as err:
        message = str(err)
        # cel-go's own wording, as the apiserver prints it: "ERROR: <input>:1:38: Syntax error: ..."
        line = next((ln for ln in message.splitlines() if "ERROR: " in ln), message.splitlines()[0])
        detail = (line[line.index("ERROR: "):] if "ERROR: " in line else line).split(" expecting {")[0]
        if "unsupported syntax" in message:  # valid in Kubernetes (e.g. optional `.?`), not in this library
            return None, ConditionVerdict("unknown", f"uses syntax the Python CEL library cannot parse ({detail})")
        return None, ConditionVerdict("error", detail)


def evaluate_condition(expression: str, variables: Mapping[str, Any]) -> ConditionVerdict:
    """One expression against `request`/`object`/`oldObject`: call (true), skip (false), error or unknown."""
    program, problem = compile_condition(expression)
    if program is None:
        assert problem is not None
        return problem
    try:
        result = program.execute(cel.Context(variables=dict(variables), functions=_cel_functions()))
    except RuntimeError as err:
        name = re.search(r"Undefined variable or function: '([^']+)'", str(err))
        if name is not None and name.group(1) in KUBERNETES_ONLY:
            return ConditionVerdict("unknown", f"uses {name.group(1)}, a Kubernetes-only CEL library")
        return ConditionVerdict("error", f"undeclared reference to '{name.group(1)}'" if name else str(err))
    except KeyError as err:
        return ConditionVerdict("error", f"no such key: {err.args[0]}")
    except Exception as err:  # the library raises TypeError, ValueError, ZeroDivisionError...: all eval errors
        first = str(err).split(":")[0].split(". ")[0]
        return ConditionVerdict("error", first[:1].lower() + first[1:])
    if not isinstance(result, bool):
        return ConditionVerdict("error", f"must evaluate to bool, got {type(result).__name__}")
    return ConditionVerdict("call" if result else "skip")


def admission_variables(request: Request, inventory: Inventory) -> dict[str, Any]:
    """`request`, `object` and `oldObject` as the apiserver binds them for an AdmissionRequest (v1)."""
    res = request.resource
    labels = object_labels(request, inventory)
    metadata: dict[str, Any] = {"name": request.name}
    if res.namespaced and request.namespace:
        metadata["namespace"] = request.namespace
    if labels:
        metadata["labels"] = labels
    obj = {"apiVersion": f"{res.group}/{res.version}" if res.group else res.version, "kind": res.kind,
           "metadata": metadata}
    gvk = {"group": res.group, "version": res.version, "kind": res.kind}
    gvr = {"group": res.group, "version": res.version, "resource": res.plural}
    username, groups = request.user
    body = {
        "uid": "00000000-0000-0000-0000-000000000000", "kind": gvk, "resource": gvr,
        "subResource": request.subresource, "requestKind": gvk, "requestResource": gvr,
        "requestSubResource": request.subresource, "name": request.name, "namespace": request.namespace,
        "operation": request.operation, "userInfo": {"username": username, "uid": "", "groups": list(groups)},
        "dryRun": False,
    }
    new = None if request.operation == "DELETE" else obj  # object is null on DELETE, oldObject on CREATE
    old = obj if request.operation in ("UPDATE", "DELETE") else None
    return {"request": {**body, "object": new, "oldObject": old}, "object": new, "oldObject": old}


def evaluate_conditions(hook: Webhook, request: Request, inventory: Inventory) -> ConditionVerdict:
    """The apiserver's matchconditions.Matcher: any false skips; else any error rejects (Fail) or skips."""
    if not hook.match_conditions:
        return ConditionVerdict("call")
    variables = admission_variables(request, inventory)
    verdicts = [(c.name, evaluate_condition(c.expression, variables)) for c in hook.match_conditions]
    if any(v.outcome == "skip" for _, v in verdicts):
        return ConditionVerdict("skip")
    for outcome in ("error", "unknown"):
        failed = [(n, v) for n, v in verdicts if v.outcome == outcome]
        if failed:
            name, verdict = failed[0]
            return ConditionVerdict(outcome, verdict.detail, name)
    return ConditionVerdict("call")


def intercepts(hook: Webhook, request: Request, inventory: Inventory) -> ConditionVerdict | None:
    """None when the apiserver would not involve the webhook; else what matchConditions decided (not skip).

    An `error` means the apiserver rejects the request itself under Fail; `unknown` is assumed to call.
    """
    if not webhook_rules_match(hook, request) or not namespace_selector_matches(hook, request, inventory):
        return None
    if not selector_matches(hook.object_selector, object_labels(request, inventory)):
        return None
    verdict = evaluate_conditions(hook, request, inventory)
    if verdict.outcome == "skip" or (verdict.outcome == "error" and hook.failure_policy != "Fail"):
        return None
    return verdict
