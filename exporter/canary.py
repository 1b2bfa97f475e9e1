"""The canary (opt-in): a server-side dry-run create through the apiserver's own path to each webhook.

The probes dial a webhook's endpoints from the exporter's Pod; the apiserver dials them from the control plane's
network, with its own client, caBundle, timeout and egress (Konnectivity, an egress proxy, a firewall that admits
only some ports). The canary asks the apiserver itself: for each webhook it can reach, it sends a `dryRun=All`
create of an object built so that the webhook's rules, namespaceSelector, objectSelector and matchConditions
select it (decided with the audit's matcher), and reads the answer:

- created (dry run) or denied by that webhook: the apiserver called it, the path works;
- `failed calling webhook "<that webhook>": ...`: the path is broken, in the apiserver's own words, mapped to the
  probe's closed set of reasons (`exporter.reasons`);
- anything else (RBAC, validation, a quota, another webhook failing or denying first) says nothing about this
  webhook: its own `Inconclusive` reason, never a webhook failure.

A webhook it cannot reach gets a `NotCanaried` reason instead, never silence. `failurePolicy: Ignore` webhooks are
among them: the apiserver admits the object whatever the call did and tells the client nothing (only its log,
audit annotations and `fail_open_count`), so a canary of one would always read "works".

Timing: the duration is the dry-run request's round trip as the exporter sees it. The apiserver reports its own
time per call only in `apiserver_admission_webhook_admission_duration_seconds` (a histogram per webhook that
cannot single out the canary's calls: it has no dry-run label) and in its audit log and traces, none of which a
Role in one namespace can read; a dry run stores nothing, so the round trip is the webhook calls plus the
apiserver's own small overhead, an upper bound on the call's time.

Load: one request per webhook per interval (60 s by default, +0-10% jitter, measured start to start, kept when a
webhook's plan changes), a bounded number in flight, and the first round spread over one interval.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import aiohttp

from .audit.matching import (
    Request,
    admission_variables,
    evaluate_condition,
    namespace_selector_matches,
    selector_matches,
    webhook_rules_match,
)
from .log import event
from .model import Inventory, LabelSelector, Webhook, WebhookKey
from .reasons import Reason, recognise
from .resources import CONFIG_MAPS, PODS, SELF_SUBJECT_REVIEWS, Resource

log = logging.getLogger("exporter.canary")

CANARY_LABEL = "admission-webhook-exporter.io/canary"
FOR_ANNOTATION = "admission-webhook-exporter.io/canary-for"
# Never pulled: a dry run schedules nothing. The pause image is what every node already has.
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
ALLOWED: Mapping[str, Resource] = {r.plural: r for r in (CONFIG_MAPS, PODS)}
DEFAULT_RESOURCES = (CONFIG_MAPS, PODS)  # in order of preference: a ConfigMap is the cheapest object to admit
DEFAULT_INTERVAL = 60.0
JITTER = 0.1  # added, never subtracted: the gap between two requests for one webhook is never below the interval
CONCURRENCY = 8  # dry runs in flight at most: 2,000 webhooks at 60 s need ~33/s, each a few milliseconds
REQUEST_SECONDS = 60.0  # the apiserver's own default request timeout; a webhook call is bounded at 30 s
UNRECOGNISED = "unrecognised"  # a failed call whose text has no row in exporter.reasons' wording table


class NotCanaried(StrEnum):
    """Why a webhook is not canaried. A closed set: `admission_webhook_not_canaried_info{reason}`."""

    SIDE_EFFECTS = "side_effects"  # sideEffects Some/Unknown/unset: the apiserver refuses it every dry run
    FAILURE_POLICY_IGNORE = "failure_policy_ignore"  # a failed call is admitted and hidden from the client
    NAMESPACE_MISSING = "namespace_missing"  # the canary namespace does not exist
    RESOURCE_NOT_ALLOWED = "resource_not_allowed"  # its rules match no CREATE of an allowed resource
    NAMESPACE_NOT_SELECTED = "namespace_not_selected"  # its namespaceSelector excludes the canary namespace
    OBJECT_NOT_SELECTED = "object_not_selected"  # objectSelector or matchConditions: no object we build is selected
    MATCH_CONDITIONS_UNDECIDED = "match_conditions_undecided"  # Kubernetes-only CEL: whether it calls is unknown


class Inconclusive(StrEnum):
    """An answer that says nothing about the webhook. A closed set: `admission_webhook_canary_inconclusive_info`."""

    FORBIDDEN = "forbidden"  # RBAC: the Role allowing `create` in the canary namespace is missing
    UNAUTHORIZED = "unauthorized"  # the apiserver did not accept the exporter's credentials
    QUOTA = "quota"  # a ResourceQuota of the namespace refused the object
    REJECTED = "rejected"  # another admission plugin refused it first (PodSecurity, LimitRanger, ...)
    INVALID = "invalid"  # object validation failed (after mutating, before validating webhooks)
    NAMESPACE_NOT_FOUND = "namespace_not_found"
    CONFLICT = "conflict"  # an object of the canary's name exists
    THROTTLED = "throttled"  # API Priority and Fairness: 429
    OTHER_WEBHOOK = "other_webhook"  # another webhook failed or denied first: this one may not have been called
    APISERVER_ERROR = "apiserver_error"  # any other answer of the apiserver
    APISERVER_UNREACHABLE = "apiserver_unreachable"  # no answer at all


Outcome = Literal["admitted", "denied", "failed", "inconclusive"]
OUTCOMES: tuple[Outcome, ...] = ("admitted", "denied", "failed", "inconclusive")


@dataclass(frozen=True)
class Identity:
    """Who the canary's requests come from, as matchConditions see `request.userInfo`."""

    username: str
    groups: tuple[str, ...]


UNKNOWN_IDENTITY = Identity("", ("system:authenticated",))


@dataclass(frozen=True)
class CanaryConfig:
    namespace: str
    resources: tuple[Resource, ...] = DEFAULT_RESOURCES
    interval: float = DEFAULT_INTERVAL
    jitter: float = JITTER
    concurrency: int = CONCURRENCY

    def __post_init__(self) -> None:
        if not self.namespace:
            raise ValueError("the canary needs a namespace")
        if not self.resources or any(r not in ALLOWED.values() for r in self.resources):
            raise ValueError(f"the canary's resources are a non-empty subset of {', '.join(ALLOWED)}")
        if self.interval <= 0 or self.jitter < 0 or self.concurrency < 1:
            raise ValueError("the canary's interval must be positive, its jitter not negative, its concurrency >= 1")


@dataclass(frozen=True)
class CanaryTarget:
    """One webhook's dry-run create: what to POST where. `body` is JSON (hashable, compared on re-plan)."""

    key: WebhookKey
    resource: Resource
    namespace: str
    body: str
    backend: str = ""  # host:port as the apiserver prints it in `Post "https://<backend>/..."`


def backend_of(hook: Webhook) -> str:
    """Where the apiserver posts the webhook's calls, as its error text shows it (the URL's netloc)."""
    if hook.service is not None:
        return f"{hook.service.server_name}:{hook.service.port}"
    try:
        return urlsplit(hook.url or "").netloc.rpartition("@")[2]
    except ValueError:
        return ""


@dataclass(frozen=True)
class Skipped:
    key: WebhookKey
    reason: NotCanaried
    detail: str


@dataclass(frozen=True)
class CanaryPlan:
    targets: tuple[CanaryTarget, ...] = ()
    skipped: tuple[Skipped, ...] = ()


# -- Planning: a pure function of the inventory ------------------------------------------------------------
def object_name(key: WebhookKey) -> str:
    """Stable per webhook (matchConditions may read it), unlikely to exist: a hash, not the webhook's name."""
    digest = hashlib.sha256(f"{key.configuration}/{key.name}/{key.type}".encode()).hexdigest()[:10]
    return f"awe-canary-{digest}"


def selector_labels(selector: LabelSelector) -> dict[str, str] | None:
    """Labels that `selector` matches, with the canary's own label where the selector leaves it free; None when
    no labels can match (e.g. `In [a]` and `NotIn [a]` on one key)."""
    labels = dict(selector.match_labels)
    keys = {k for k, _ in selector.match_labels} | {r.key for r in selector.match_expressions}
    for req in selector.match_expressions:
        if req.key in labels:
            continue
        if req.operator == "In":
            if not req.values:
                return None
            labels[req.key] = req.values[0]
        elif req.operator == "Exists":
            refused = {v for r in selector.match_expressions if r.key == req.key and r.operator == "NotIn"
                       for v in r.values}
            labels[req.key] = next(v for v in ("canary", "canary-1", "canary-2", "x") if v not in refused)
    if CANARY_LABEL not in keys:
        labels[CANARY_LABEL] = "true"
    return labels if selector_matches(selector, labels) else None


def build_object(resource: Resource, namespace: str, key: WebhookKey, labels: Mapping[str, str]) -> dict[str, Any]:
    """The object of the dry run. A Pod that the `restricted` Pod Security level admits, with tiny requests
    and limits, so neither PodSecurity nor a LimitRange refuses it before the webhooks are called."""
    metadata = {"name": object_name(key), "namespace": namespace, "labels": dict(labels),
                "annotations": {FOR_ANNOTATION: f"{key.configuration}/{key.name}"}}
    obj: dict[str, Any] = {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": metadata}
    if resource == CONFIG_MAPS:
        obj["data"] = {"purpose": "dry-run canary of admission-webhook-exporter; never stored"}
    elif resource == PODS:
        limits = {"cpu": "10m", "memory": "16Mi"}
        obj["spec"] = {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "canary", "image": PAUSE_IMAGE,
                "resources": {"requests": limits, "limits": limits},
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        }
    return obj


Stage = tuple[int, NotCanaried, str]  # how far a candidate object got, for the most telling reason


def _conditions(hook: Webhook, request: Request, obj: Mapping[str, Any], inventory: Inventory,
                identity: Identity) -> tuple[str, str]:
    """matchConditions on the real object and the canary's own user: ("call"|"skip"|"unknown", detail)."""
    if not hook.match_conditions:
        return "call", ""
    variables = admission_variables(request, inventory)
    body = dict(variables["request"])
    body.update(object=obj, dryRun=True,
                userInfo={"username": identity.username, "uid": "", "groups": list(identity.groups)})
    variables.update(request=body, object=obj)
    unknown = ""
    for condition in hook.match_conditions:
        verdict = evaluate_condition(condition.expression, variables)
        if verdict.outcome == "skip":
            return "skip", f"matchCondition {condition.name!r} is false for the canary's {request.resource.kind}"
        if verdict.outcome == "unknown" and not unknown:
            unknown = f"matchCondition {condition.name!r} {verdict.detail}"
        # "error": the apiserver calls nothing and rejects the request under Fail, in words the canary reads
    return ("unknown", unknown) if unknown else ("call", "")


def _candidate(hook: Webhook, resource: Resource, inventory: Inventory, config: CanaryConfig,
               identity: Identity) -> CanaryTarget | Stage:
    request = Request(resource, "CREATE", config.namespace, object_name(hook.key), user=(identity.username,
                                                                                         identity.groups))
    if not webhook_rules_match(hook, request):
        return 0, NotCanaried.RESOURCE_NOT_ALLOWED, (
            f"its rules match no CREATE of {', '.join(r.plural for r in config.resources)} in a namespace")
    if not namespace_selector_matches(hook, request, inventory):
        return 1, NotCanaried.NAMESPACE_NOT_SELECTED, (
            f"its namespaceSelector does not select namespace {config.namespace}")
    labels = selector_labels(hook.object_selector)
    if labels is None:
        return 2, NotCanaried.OBJECT_NOT_SELECTED, "no set of labels satisfies its objectSelector"
    obj = build_object(resource, config.namespace, hook.key, labels)
    outcome, detail = _conditions(hook, request, obj, inventory, identity)
    if outcome == "skip":
        return 2, NotCanaried.OBJECT_NOT_SELECTED, detail
    if outcome == "unknown":
        return 3, NotCanaried.MATCH_CONDITIONS_UNDECIDED, detail
    return CanaryTarget(hook.key, resource, config.namespace, json.dumps(obj, sort_keys=True), backend_of(hook))


def plan_webhook(hook: Webhook, inventory: Inventory, config: CanaryConfig,
                 identity: Identity = UNKNOWN_IDENTITY) -> CanaryTarget | Skipped:
    """The dry run that reaches `hook`, or why there is none."""
    if not hook.dry_run_safe:
        return Skipped(hook.key, NotCanaried.SIDE_EFFECTS,
                       f"sideEffects {hook.side_effects or 'unset'}: the apiserver refuses it every dry run")
    if hook.failure_policy != "Fail":
        return Skipped(hook.key, NotCanaried.FAILURE_POLICY_IGNORE,
                       "failurePolicy Ignore: the apiserver admits the object when the call fails and tells the "
                       "client nothing")
    if inventory.namespaces and config.namespace not in inventory.namespaces:
        return Skipped(hook.key, NotCanaried.NAMESPACE_MISSING, f"namespace {config.namespace} does not exist")
    best: Stage | None = None
    for resource in config.resources:
        found = _candidate(hook, resource, inventory, config, identity)
        if isinstance(found, CanaryTarget):
            return found
        if best is None or found[0] > best[0]:
            best = found
    assert best is not None  # CanaryConfig has at least one resource
    return Skipped(hook.key, best[1], best[2])


def plan_canary(inventory: Inventory, config: CanaryConfig, identity: Identity = UNKNOWN_IDENTITY) -> CanaryPlan:
    targets: list[CanaryTarget] = []
    skipped: list[Skipped] = []
    for hook in inventory.webhooks:
        planned = plan_webhook(hook, inventory, config, identity)
        if isinstance(planned, CanaryTarget):
            targets.append(planned)
        else:
            skipped.append(planned)
    return CanaryPlan(tuple(targets), tuple(skipped))


# -- Reading the answer: a pure function of the response ----------------------------------------------------
_CALLING = re.compile(r'failed calling webhook "(?P<name>[^"]+)"[:;] ?(?:failed to call webhook: )?(?P<rest>.*)',
                      re.S)
_POST = re.compile(r'^Post "https?://(?P<netloc>[^/"?]+)')
_DENIED = re.compile(r'admission webhook "(?P<name>[^"]+)" (?:denied the request|does not support dry run)')
# kube-apiserver's words for the failures that are not a webhook's (k8s.io/apiserver, k8s.io/kubernetes)
_RBAC = re.compile(r"cannot create resource")
_QUOTA = re.compile(r"exceeded quota")


def read_answer(webhook: str, status: int, body: Any, backend: str = "") -> tuple[Outcome, str, str]:
    """(outcome, reason, the apiserver's message) of a dry-run create meant to reach webhook `webhook` (its name,
    the name the apiserver prints) at `backend` (host:port). `status` 0: no answer, `body` says why.

    Validating webhooks are called in parallel and the apiserver returns the first error, so another webhook's
    failure can hide this one's call. When that other webhook's call failed on the way to the same host and port,
    for a reason of the way there (not of its own answer), the path to this backend is what is broken: a failure
    for this webhook too. Otherwise it says nothing about this webhook.
    """
    if 200 <= status < 300:
        return "admitted", "", ""
    message = str(body.get("message", "")) if isinstance(body, Mapping) else str(body)
    if status == 0:
        return "inconclusive", Inconclusive.APISERVER_UNREACHABLE, message
    if (m := _CALLING.search(message)) is not None:
        rest = m["rest"]
        if rest.startswith(("could not get REST client", "could not create admission objects")):
            reason: str = Reason.INVALID_CONFIG  # the apiserver cannot build the call (caBundle, ...)
        else:
            wording = recognise(rest)
            # A row without a reason is no webhook call's (the ServiceIP allocator's words): unrecognised here.
            reason = wording.reason if wording is not None and wording.reason is not None else UNRECOGNISED
        if m["name"] == webhook:
            return "failed", reason, message
        post = _POST.match(rest)
        same_way = backend and post is not None and post["netloc"] == backend
        if same_way and reason not in (Reason.HTTP_ERROR, Reason.INVALID_CONFIG, UNRECOGNISED):
            return "failed", reason, message
        return "inconclusive", Inconclusive.OTHER_WEBHOOK, message
    if (m := _DENIED.search(message)) is not None:
        if m["name"] != webhook:
            return "inconclusive", Inconclusive.OTHER_WEBHOOK, message
        if "does not support dry run" in message:  # its sideEffects changed since the plan
            return "inconclusive", Inconclusive.REJECTED, message
        return "denied", "", message
    if status == 401:
        return "inconclusive", Inconclusive.UNAUTHORIZED, message
    if status == 403:
        reason = (Inconclusive.FORBIDDEN if _RBAC.search(message) else
                  Inconclusive.QUOTA if _QUOTA.search(message) else Inconclusive.REJECTED)
        return "inconclusive", reason, message
    by_status = {404: Inconclusive.NAMESPACE_NOT_FOUND, 409: Inconclusive.CONFLICT, 422: Inconclusive.INVALID,
                 429: Inconclusive.THROTTLED}
    return "inconclusive", by_status.get(status, Inconclusive.APISERVER_ERROR), message


@dataclass(frozen=True)
class CanaryResult:
    outcome: Outcome
    reason: str  # failed: a Reason value or "unrecognised"; inconclusive: an Inconclusive value; else ""
    detail: str  # the apiserver's message, verbatim
    status: int
    resource: str  # plural of the object sent
    duration_seconds: float
    finished_at: float  # Unix time

    @property
    def success(self) -> bool | None:
        """True: the apiserver called the webhook; False: it could not; None: the answer does not say."""
        return {"admitted": True, "denied": True, "failed": False}.get(self.outcome)


# -- The live part -----------------------------------------------------------------------------------------
class CanaryApi(Protocol):
    """What the canary needs of the Kubernetes API (`exporter.kubeapi.KubeApi` is one)."""

    async def dry_run_create(self, resource: Resource, body: Mapping[str, Any], *, namespace: str | None = None,
                             request_seconds: float = 60) -> tuple[int, Any]: ...


@dataclass(frozen=True)
class CanaryStatus:
    """The canary as plain data, read once per scrape."""

    namespace: str
    results: Mapping[WebhookKey, CanaryResult]
    skipped: tuple[Skipped, ...]
    requests: Mapping[str, int] = field(default_factory=dict)  # by outcome, every outcome present


async def whoami(api: CanaryApi) -> Identity | None:
    """The exporter's own user, from a SelfSubjectReview (every authenticated user may create one; it is not
    stored, and it is sent as a dry run like every other request of the canary). None when the API says no."""
    try:
        status, body = await api.dry_run_create(SELF_SUBJECT_REVIEWS, {
            "apiVersion": SELF_SUBJECT_REVIEWS.api_version, "kind": SELF_SUBJECT_REVIEWS.kind})
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None
    user = (body.get("status") or {}).get("userInfo") if isinstance(body, Mapping) and status < 300 else None
    if not isinstance(user, Mapping) or not user.get("username"):
        return None
    return Identity(str(user["username"]), tuple(str(g) for g in user.get("groups") or ()))


class Canary:
    """One task per canaried webhook, each on its own schedule; plans made off the event loop."""

    def __init__(self, api: CanaryApi, config: CanaryConfig, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None) -> None:
        self.api = api
        self.config = config
        self.identity: Identity | None = None
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._semaphore = asyncio.Semaphore(config.concurrency)
        self._targets: dict[WebhookKey, CanaryTarget] = {}
        self._tasks: dict[WebhookKey, asyncio.Task[None]] = {}
        self._last_start: dict[WebhookKey, float] = {}
        self._due: dict[WebhookKey, float] = {}
        self._results: dict[WebhookKey, CanaryResult] = {}
        self._skipped: tuple[Skipped, ...] = ()
        self._requests: Counter[str] = Counter({o: 0 for o in OUTCOMES})
        self._inventory: Inventory | None = None
        self._wanted = asyncio.Event()
        self._planner: asyncio.Task[None] | None = None
        self.planned = asyncio.Event()  # set once the latest inventory's plan is in force

    # -- plans
    def adopt(self, inventory: Inventory) -> None:
        """A new inventory: re-plan in the background (the latest only, one plan at a time)."""
        self._inventory = inventory
        self.planned.clear()
        self._wanted.set()
        if self._planner is None:
            self._planner = asyncio.create_task(self._plan_latest(), name="canary plan")

    async def _plan_latest(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            inventory = self._inventory
            assert inventory is not None
            if self.identity is None:
                self.identity = await whoami(self.api)
                event(log, logging.INFO if self.identity else logging.WARNING, "canary_identity",
                      user=self.identity.username if self.identity else "unknown",
                      groups=",".join(self.identity.groups) if self.identity else "")
            try:
                planned = await asyncio.to_thread(plan_canary, inventory, self.config,
                                                  self.identity or UNKNOWN_IDENTITY)
            except Exception:  # a bug in planning must not stop the canary; the last plan stays in force
                log.exception("canary_plan_failed")
                continue
            if self._inventory is inventory:
                self.apply(planned)
                self.planned.set()

    def apply(self, plan: CanaryPlan) -> None:
        """Start the new and the changed targets, stop the gone; a changed one keeps its place in the schedule."""
        wanted = {t.key: t for t in plan.targets}
        for key in [k for k, t in self._targets.items() if wanted.get(k) != t]:
            self._tasks.pop(key).cancel()
            self._due.pop(key, None)
            del self._targets[key]
        for key, target in wanted.items():
            if key not in self._targets:
                self._targets[key] = target
                self._tasks[key] = asyncio.create_task(self._run(target), name=f"canary {key.name}")
        for key in [k for k in self._results if k not in wanted]:
            del self._results[key]
        horizon = self._clock() - 2 * self.config.interval * (1 + self.config.jitter)
        for key in [k for k, t in self._last_start.items() if k not in wanted and t < horizon]:
            del self._last_start[key]  # a webhook deleted and re-created at once keeps its bound
        self._skipped = plan.skipped

    # -- the schedule
    def _delay(self, key: WebhookKey) -> float:
        last = self._last_start.get(key)
        if last is None:  # the first round is spread over one interval, not sent at once
            return self._rng.uniform(0, self.config.interval)
        gap = self.config.interval * (1 + self._rng.uniform(0, self.config.jitter))
        return last + gap - self._clock()

    async def _run(self, target: CanaryTarget) -> None:
        key = target.key
        while True:
            delay = self._delay(key)
            if delay > 0:
                self._due[key] = self._clock() + delay
                await self._sleep(delay)
            async with self._semaphore:
                last = self._last_start.get(key)
                if last is not None and self._clock() - last < self.config.interval:
                    continue  # never two requests for one webhook within an interval
                self._last_start[key] = self._clock()
                self._due.pop(key, None)
                try:
                    result = await self._send(target)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug must not end this webhook's schedule
                    log.exception("canary_crashed", extra={"awe_fields": {"name": key.name}})
                    continue
            if self._targets.get(key) is not target:
                return  # replaced while in flight
            self._record(key, result)

    async def _send(self, target: CanaryTarget) -> CanaryResult:
        started = self._clock()
        try:
            status, body = await self.api.dry_run_create(target.resource, json.loads(target.body),
                                                         namespace=target.namespace, request_seconds=REQUEST_SECONDS)
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            status, body = 0, f"{type(err).__name__}: {err}".rstrip(": ")
        duration = self._clock() - started
        outcome, reason, detail = read_answer(target.key.name, status, body, target.backend)
        return CanaryResult(outcome, str(reason), detail, status, target.resource.plural, duration, self._wall())

    def _record(self, key: WebhookKey, result: CanaryResult) -> None:
        previous = self._results.get(key)
        self._results[key] = result
        self._requests[result.outcome] += 1
        changed = previous is None or (previous.outcome, previous.reason) != (result.outcome, result.reason)
        level = logging.DEBUG if not changed else logging.WARNING if result.outcome == "failed" else logging.INFO
        event(log, level, "canary_result", configuration=key.configuration, name=key.name, type=key.type,
              outcome=result.outcome, reason=result.reason, status=result.status, resource=result.resource,
              duration=f"{result.duration_seconds:.3f}", detail=result.detail)

    # -- reading
    @property
    def targets(self) -> Mapping[WebhookKey, CanaryTarget]:
        return self._targets

    def due(self) -> Mapping[WebhookKey, float]:
        """When each webhook's next dry run is due, on the canary's clock (absent while one is being sent)."""
        return dict(self._due)

    def status(self) -> CanaryStatus:
        # dict() copies are single C-level calls: whole under the GIL when a scrape reads from a worker thread.
        return CanaryStatus(namespace=self.config.namespace, results=dict(self._results), skipped=self._skipped,
                            requests=dict(self._requests))

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *([self._planner] if self._planner is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._targets.clear()
        self._planner = None


def parse_resources(names: Iterable[str]) -> tuple[Resource, ...]:
    """`configmaps,pods` as the flag takes it: a non-empty subset of ALLOWED, in the order given."""
    out: list[Resource] = []
    for name in names:
        if name not in ALLOWED:
            raise ValueError(f"the canary's resources are {' and '.join(ALLOWED)}; got {name!r}")
        if ALLOWED[name] not in out:
            out.append(ALLOWED[name])
    if not out:
        raise ValueError(f"the canary needs at least one of {', '.join(ALLOWED)}")
    return tuple(out)
