"""Turn the admission webhook errors in a text into diagnoses: what each means, why, what to run.

The apiserver's wording is stable and precise (`failed calling webhook "<name>": failed to call webhook: Post
"<url>": <cause>`, `admission webhook "<name>" denied the request: ...`), and its causes are the probe's closed
set of reasons (`exporter.reasons`, whose wording table recognises the cause), so an error pasted from a
terminal maps onto the same `reason` the exporter's metrics carry. A pasted text often holds several errors
(`kubectl apply -f dir/ 2>&1`): each is found by the words that start it and explained on its own, in order.
Besides webhook calls and denials it knows the apiserver's log line for a call that failed open or closed, the
refusal of a dry run, and what the ServiceIP allocator says while a Fail webhook on `ipaddresses` is down.

Input is untrusted: echoes are bounded and control characters shown escaped, and the commands it prints are
built only from names that are valid Kubernetes names (a denial message cannot smuggle a command in). Every
line printed after `$` runs as printed; what needs filling in is a `#` comment, and YAML is a `change`.

Parsing is a pure function; the optional live verdict reuses one probe round (`targets.plan` +
`scheduler.probe_once` + `report.summarize`) for the webhooks of that name.
"""

from __future__ import annotations

import json
import re
import shlex
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .model import NO_PROVENANCE, Inventory, Provenance, Webhook, WebhookKey
from .reasons import recognise
from .resources import IP_ADDRESSES, SERVICE_CIDRS

if TYPE_CHECKING:  # the probe round's modules load only when a verdict is asked for: `explain <text>` starts fast
    from .report import WebhookStatus
    from .scheduler import ProbeFn

Kind = Literal["denial", "transport_failure", "configuration", "allocation_failure", "unknown"]

MAX_INPUT_CHARS = 1 << 20  # more text than any scroll-back of errors; the rest is not read
MAX_ECHO_CHARS = 2000  # one echoed cause or denial message
MAX_EXPLAINED = 50  # distinct errors explained in full; the count still counts them all


@dataclass(frozen=True)
class Explanation:
    kind: Kind
    webhook: str  # the webhook's name as the apiserver printed it ("" when the text names none)
    url: str  # the URL the apiserver posted to, as configured (without the `?timeout=` it appends)
    service: str  # parsed from https://<service>.<namespace>.svc:<port>/<path>, or from the inventory
    namespace: str
    port: int | None
    path: str
    timeout: str  # the ?timeout= the apiserver put on the call (the webhook's timeoutSeconds)
    reason: str  # a probe reason (exporter/reasons.py); "" for a denial, a configuration problem or unknown text
    cause: str  # what the call failed with, or the webhook's denial message (bounded, control characters escaped)
    meaning: str
    likely_causes: tuple[str, ...]
    confirm: tuple[str, ...]  # commands that run as printed, and `#` comments
    fix: tuple[str, ...]  # the same
    change: tuple[str, ...] = ()  # YAML to set in the webhook configuration: never a command
    break_glass: tuple[str, ...] = ()  # a Fail webhook's calls failing: stop calling it until it is back
    failure_policy: str = ""  # Fail | Ignore, from the text (the apiserver's log line) or the inventory
    allocating: str = ""  # the ClusterIP the apiserver was allocating when the call failed
    notes: tuple[str, ...] = ()  # what the text or the inventory left unsaid (a webhook the manifests lack, ...)
    occurrences: int = 1  # identical errors in the text, explained once
    configurations: tuple[WebhookKey, ...] = ()  # the webhooks of that name (or blocking the allocation) known
    verdicts: tuple[WebhookStatus, ...] = ()  # their probe verdicts now, when a cluster or manifests are given


@dataclass(frozen=True)
class Explained:
    """Every error found in one text, in order: `count` counts repeats, `errors` holds each distinct one."""

    count: int
    errors: tuple[Explanation, ...]
    omitted: int = 0  # distinct errors beyond MAX_EXPLAINED
    truncated: bool = False  # the text was longer than MAX_INPUT_CHARS
    unrecognised: Explanation | None = None  # set when nothing in the text was recognised


# -- Untrusted text ----------------------------------------------------------------------------------------
def neutralise(text: str, limit: int = MAX_ECHO_CHARS, *, lines: bool = False) -> str:
    """`text` safe to print: at most `limit` characters, control and format characters (ANSI escapes, bidi
    overrides, NULs) shown as `\\x1b`-style escapes; newlines kept only when `lines`."""
    out = []
    for ch in text[:limit]:
        if ch == "\n" and lines:
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch != "\t":
            out.append(ascii(ch)[1:-1])
        else:
            out.append(ch)
    more = len(text) - limit
    return "".join(out) + (f" ... [{more} more characters]" if more > 0 else "")


# Kubernetes object names (DNS subdomains): only these reach a printed command.
_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,251}[A-Za-z0-9])?"
_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")


# -- Finding the errors ------------------------------------------------------------------------------------
_ANCHORS = re.compile(
    rf"(?P<log>Failed calling webhook, failing (?P<open>open|closed) (?P<logname>{_NAME}): )"
    r"|(?P<alloc>failed to allocate IP (?P<ip>[0-9A-Fa-f.:]{2,45}): )"
    r"|(?P<full>failed to allocate a serviceIP: range is full)"
    rf'|(?P<call>failed calling webhook "(?P<name>{_NAME})": )'
    rf'|(?P<denied>admission webhook "(?P<dname>{_NAME})" denied the request)'
    rf'|(?P<dryrun>admission webhook "(?P<rname>{_NAME})" does not support dry run)')
_POST = re.compile(r'^(?:failed to call webhook: )?Post "?(?P<url>https?://[^"\s]+?)"?: (?P<cause>.*)$', re.S)
_NO_ENDPOINTS = re.compile(r'no endpoints available for service "(?P<service>[^"]+)"')
# Lines kubectl prints between errors that are not part of a multi-line denial message.
_NOT_MESSAGE = re.compile(r"^(?:Error from server|[Ee]rror(?: when [a-z]+)?:|Warning:|The \S+ \"[^\"]*\" is invalid"
                          r"|[\w.-]+/[\w.:-]+ (?:created|configured|unchanged|deleted|patched|serverside-applied)\b)")


@dataclass(frozen=True)
class Parsed:
    kind: Kind
    webhook: str
    url: str
    cause: str
    diagnosis: str  # a key of DIAGNOSES
    reason: str
    policy: str = ""  # what the text says of the failurePolicy: the log line's `failing open` is Ignore
    ip: str = ""  # the ClusterIP being allocated


def classify_cause(cause: str) -> tuple[str, str]:
    """(diagnosis key, probe reason) for a transport cause, from the one wording table (`exporter.reasons`);
    ("transport", "") when no wording there matches."""
    wording = recognise(cause)
    if wording is None:
        return "transport", ""
    return wording.diagnosis, wording.reason.value if wording.reason is not None else ""


def _line_end(text: str, at: int, limit: int) -> int:
    end = text.find("\n", at, limit)
    return limit if end < 0 else end


def _message_end(text: str, at: int, limit: int) -> int:
    """Where a denial message that may span lines ends: before the next error's line or kubectl's own lines."""
    end = _line_end(text, at, limit)
    while end < limit:
        start = end + 1
        nxt = _line_end(text, start, limit)
        if _NOT_MESSAGE.match(text[start:nxt]) or (nxt == limit and limit < len(text)):
            break
        end = nxt
    return end


# What kubectl and the apiserver put before an error, left at the end of the one before it on the same line.
_WRAPPERS = re.compile(r'(?:[\s,;\[]*(?:Error from server(?: \([A-Za-z]+\))?:|error when [a-z]+ "[^"]*":'
                       r"|Internal error occurred:))+\s*$")


def _cause(text: str) -> str:
    # An error list (`[a, b]`) or a next error on the same line leaves separators and wrappers behind.
    return _WRAPPERS.sub("", text.strip()).rstrip(",;] ").rstrip()


def find_errors(text: str) -> list[Parsed]:
    """Every admission webhook error in `text`, in order; a wrapping line (the apiserver's log line, an IP
    allocation) and the call it wraps are one error."""
    found = list(_ANCHORS.finditer(text))
    out: list[Parsed] = []
    i = 0
    while i < len(found):
        m = found[i]
        inner = None
        if (m["log"] or m["alloc"]) and i + 1 < len(found) and found[i + 1]["call"] \
                and "\n" not in text[m.end():found[i + 1].start()]:
            i += 1
            inner = found[i]
        limit = found[i + 1].start() if i + 1 < len(found) else len(text)
        body = (inner or m).end()
        if m["denied"]:
            end = _message_end(text, body, limit)
            message = text[body:end].removeprefix(":").strip()
            message = _cause(message) if end == limit < len(text) else message  # a next error on its line
            out.append(Parsed("denial", m["dname"], "", message, "denial", ""))
        elif m["dryrun"]:
            out.append(Parsed("configuration", m["rname"], "", m.group(0), "no_dry_run", ""))
        elif m["full"]:
            out.append(Parsed("allocation_failure", "", "", m.group(0), "ip_exhausted", ""))
        else:
            name = inner["name"] if inner is not None else (m["name"] or m["logname"] or "")
            cause, url = _cause(text[body:_line_end(text, body, limit)]), ""
            if (post := _POST.match(cause)) is not None:
                url, cause = post["url"], _cause(post["cause"])
            diagnosis, reason = classify_cause(cause)
            policy = ("Ignore" if m["open"] == "open" else "Fail") if m["log"] else ""
            kind: Kind = "transport_failure"
            if diagnosis in ("invalid_config",):
                kind = "configuration"
            out.append(Parsed(kind, name, url, cause, diagnosis, reason, policy, m["ip"] or ""))
        i += 1
    return out


def parse_error(text: str) -> Parsed:
    """The first error in `text` (an `unknown` one when there is none)."""
    errors = find_errors(text)
    return errors[0] if errors else Parsed("unknown", "", "", text.strip(), "unknown", "")


# -- Where the webhook lives -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """Where the webhook lives, as far as the error (and the inventory) says."""

    name: str
    service: str = ""
    namespace: str = ""
    port: int | None = None
    path: str = ""
    host: str = ""
    timeout: str = ""
    configurations: tuple[WebhookKey, ...] = ()
    failure_policy: str = ""
    provenance: Provenance = NO_PROVENANCE


def configured_url(url: str) -> str:
    """The URL without the `timeout` query parameter the apiserver appends to every call (a webhook's own URL
    may carry no query at all, but keep any other parameter rather than guess)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "timeout"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def backend_from_url(name: str, url: str) -> Backend:
    """`https://<service>.<namespace>.svc:<port>/<path>?timeout=10s`, the URL the apiserver builds."""
    if not url:
        return Backend(name)
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        return Backend(name)
    host = parts.hostname or ""
    labels = host.split(".")
    timeout = dict(parse_qsl(parts.query)).get("timeout", "")
    timeout = timeout if re.fullmatch(r"[0-9.]+m?s", timeout) else ""
    if len(labels) >= 3 and labels[2] == "svc" and all(_LABEL.fullmatch(x) for x in labels[:2]):
        return Backend(name, labels[0], labels[1], port, parts.path, host, timeout)
    host = host if re.fullmatch(r"[A-Za-z0-9.:_-]+", host) else ""
    return Backend(name, port=port, path=parts.path, host=host, timeout=timeout)


def with_inventory(backend: Backend, inventory: Inventory | None, cause: str) -> Backend:
    """Fill what the text left out from the webhooks of that name, and name their configurations."""
    if inventory is None:
        return backend
    hooks = [h for h in inventory.webhooks if h.key.name == backend.name]
    if backend.service:
        hooks = [h for h in hooks if h.service is None or h.service.name == backend.service] or hooks
    if not hooks:
        return backend
    hook: Webhook = hooks[0]
    svc = hook.service
    service = backend.service or (svc.name if svc else "")
    if not service and (m := _NO_ENDPOINTS.search(cause)) is not None:
        service = m["service"]
    policies = {h.failure_policy for h in hooks}
    return replace(
        backend, service=service, namespace=backend.namespace or (svc.namespace if svc else ""),
        port=backend.port or (svc.port if svc else None), path=backend.path or (svc.path or "" if svc else ""),
        timeout=backend.timeout or f"{hook.timeout_seconds}s", configurations=tuple(h.key for h in hooks),
        failure_policy="Fail" if "Fail" in policies else hook.failure_policy, provenance=hook.provenance)


def allocation_blockers(inventory: Inventory) -> tuple[Webhook, ...]:
    """The Fail webhooks the apiserver calls when it creates an IPAddress or a ServiceCIDR: while one of them
    cannot be called, no ClusterIP can be allocated."""
    from .audit.matching import APISERVER, Request, intercepts  # the audit (yaml, cryptography): with an inventory

    requests = [Request(IP_ADDRESSES, "CREATE", name="10.96.0.10", user=APISERVER),
                *(Request(SERVICE_CIDRS, op, name="kubernetes", user=APISERVER) for op in ("CREATE", "UPDATE"))]
    return tuple(h for h in inventory.webhooks if h.failure_policy == "Fail"
                 and any(intercepts(h, r, inventory) is not None for r in requests))


# -- Who manages the configuration -------------------------------------------------------------------------
@dataclass(frozen=True)
class Manager:
    """The tool that injects the webhook's caBundle (and often its serving certificate), from the evidence."""

    name: str
    evidence: str  # why we think so, shown with the advice
    ca_fix: tuple[str, ...]  # caBundle no longer matches the serving certificate
    cert_fix: tuple[str, ...]  # the serving certificate expired or names the wrong host


def _find(pairs: tuple[tuple[str, str], ...], key: str) -> str | None:
    return next((v for k, v in pairs if k == key), None)


def manager_of(b: Backend) -> Manager | None:
    """Read the configuration's own labels, annotations and owners (with an inventory), else the webhook's name
    and Service, for the tool that manages it; None when nothing says."""
    p, ns = b.provenance, b.namespace
    config = b.configurations[0].configuration if b.configurations else ""
    for key in ("cert-manager.io/inject-ca-from", "cert-manager.io/inject-ca-from-secret"):
        if (source := _find(p.annotations, key)) is not None:
            src_ns, _, src = source.partition("/")
            what = "certificate" if key.endswith("from") else "secret"
            renew = ([f"cmctl renew -n {shlex.quote(src_ns)} {shlex.quote(src)}"] if what == "certificate" and src
                     else [])
            return Manager(
                "cert-manager's cainjector", f"annotation {key}: {neutralise(source, 200)}",
                (f"kubectl get deployments -A -l app.kubernetes.io/component=cainjector  # cainjector injects "
                 f"caBundle from {what} {neutralise(source, 200)}: is it running?",
                 "kubectl rollout restart -n \"$(kubectl get deployments -A -l app.kubernetes.io/component=cainjector"
                 " -o jsonpath='{.items[0].metadata.namespace}')\" deployment -l "
                 "app.kubernetes.io/component=cainjector"),
                (*renew, "# the backend must reload the renewed certificate (a restart of its pods does)"))
    labels = dict(p.labels)
    gatekeeper = (labels.get("gatekeeper.sh/system") == "yes" or config.startswith("gatekeeper-")
                  or b.name.endswith(".gatekeeper.sh") or ns == "gatekeeper-system")
    if gatekeeper:
        gk_ns = shlex.quote(ns or "gatekeeper-system")
        restart = f"kubectl -n {gk_ns} rollout restart deployment gatekeeper-controller-manager"
        return Manager("Gatekeeper's certificate rotator", _evidence(labels, config, b, "gatekeeper"),
                       (f"{restart}  # its cert-controller rewrites caBundle and the serving certificate",),
                       (f"{restart}  # its cert-controller renews the serving certificate",))
    if labels.get("webhook.kyverno.io/managed-by") == "kyverno" or config.startswith("kyverno-") \
            or ".kyverno.svc" in b.name or ns == "kyverno":
        ky_ns = shlex.quote(ns or "kyverno")
        restart = f"kubectl -n {ky_ns} rollout restart deployment kyverno-admission-controller"
        return Manager("Kyverno's admission controller", _evidence(labels, config, b, "kyverno"),
                       (f"{restart}  # it manages its own CA and rewrites caBundle",),
                       (f"{restart}  # it renews its serving certificate",))
    if "istio.io/rev" in labels or config.startswith("istio-") or ns == "istio-system":
        restart = f"kubectl -n {shlex.quote(ns or 'istio-system')} rollout restart deployment istiod"
        return Manager("istiod", _evidence(labels, config, b, "istio"),
                       (f"{restart}  # istiod patches caBundle of its webhooks",), (restart,))
    if "olm.owner" in labels:
        return Manager("OLM", f"label olm.owner={labels['olm.owner']}",
                       ("# OLM injects caBundle for the operator's webhooks: delete the operator's webhook "
                        "certificate secret (OLM reissues it) or restart olm-operator",),
                       ("# OLM rotates the operator's webhook certificate: restart olm-operator",))
    if p.owners:
        kind, name = p.owners[0]
        return Manager(f"its owner, {kind} {name}", f"ownerReferences: {kind}/{name}",
                       (f"# {kind} {name} owns the configuration and rewrites it: fix caBundle through it",),
                       (f"# {kind} {name} owns the configuration: renew the certificate through it",))
    if labels.get("app.kubernetes.io/managed-by") == "Helm" or _find(p.annotations, "meta.helm.sh/release-name"):
        release = _find(p.annotations, "meta.helm.sh/release-name") or labels.get("app.kubernetes.io/instance", "")
        return Manager(f"Helm release {release}".rstrip(), "label app.kubernetes.io/managed-by=Helm",
                       ("# the chart renders caBundle (from its values, or a certificate it generated at install): "
                        "upgrade the release with the right CA, or patch it as below",),
                       ("# the chart issued the serving certificate: upgrade the release to reissue it",))
    return None


def _evidence(labels: dict[str, str], config: str, b: Backend, word: str) -> str:
    found = [f"label {k}={v}" for k, v in labels.items() if word in k or word in v][:1]
    found += [f"configuration {config}" for _ in [0] if config and word in config]
    found += [f"webhook {b.name}" for _ in [0] if word in b.name]
    found += [f"namespace {b.namespace}" for _ in [0] if b.namespace and word in b.namespace]
    return ", ".join(found[:2]) or word


# -- Commands ----------------------------------------------------------------------------------------------
KIND_OF = {"validating": "validatingwebhookconfiguration", "admit": "mutatingwebhookconfiguration"}
LOCATED = '"$ref"'  # set by the locate command; every command after it uses it


def config_refs(b: Backend) -> list[str]:
    """`<kind> <name>` of every configuration holding the webhook, or `"$ref"` that the locate command sets."""
    return [f"{KIND_OF[k.type]} {k.configuration}" for k in b.configurations] or [LOCATED]


def locate(b: Backend) -> str:
    """A command that prints `Kind/name webhook...` for the configuration holding the webhook."""
    pattern = re.sub(r"([.])", r"\\\1", b.name)
    return ("kubectl get validatingwebhookconfigurations,mutatingwebhookconfigurations -o jsonpath="
            "'{range .items[*]}{.kind}/{.metadata.name}{\" \"}{.webhooks[*].name}{\"\\n\"}{end}'"
            f" | grep -E ' {pattern}( |$)'")


def set_ref(b: Backend) -> str:
    """Find the configuration and remember it as `$ref` (`Kind/name`, which kubectl takes as is)."""
    return f"ref=$({locate(b)} | head -n1 | cut -d' ' -f1); echo \"$ref\""


def show_config(b: Backend) -> list[str]:
    if not b.configurations:
        return [locate(b)]
    return [f"kubectl get {ref} -o yaml" for ref in config_refs(b)]


def _selector(b: Backend) -> str:
    # The pods behind the Service, by its own selector (kubectl has no `get pods --for-service`).
    return (f"\"$(kubectl -n {b.namespace} get service {b.service} -o go-template="
            "'{{range $k, $v := .spec.selector}}{{$k}}={{$v}},{{end}}' | sed 's/,$//')\"")


def pods(b: Backend) -> str:
    return f"kubectl -n {b.namespace} get pods -o wide -l {_selector(b)}"


def logs(b: Backend) -> str:
    return f"kubectl -n {b.namespace} logs --tail=100 --prefix -l {_selector(b)}"


def restart_pods(b: Backend) -> str:
    """Restart the backend whatever controls its pods: delete them, their controller recreates them."""
    return f"kubectl -n {b.namespace} delete pods -l {_selector(b)}  # their controller recreates them"


def slices(b: Backend) -> str:
    return f"kubectl -n {b.namespace} get endpointslices -l kubernetes.io/service-name={b.service} -o wide"


def server_name(b: Backend) -> str:
    return f"{b.service}.{b.namespace}.svc" if b.service else b.host


def served_certificate(b: Backend, out: str) -> str:
    """Save the certificate the backend serves (through a port-forward for a service backend)."""
    s_client = (f"openssl s_client -connect {{addr}} -servername {server_name(b)} -showcerts </dev/null 2>/dev/null"
                f" | openssl x509 > {out}")
    if b.service:
        return (f"kubectl -n {b.namespace} port-forward service/{b.service} 18443:{b.port or 443} >/dev/null & "
                f"sleep 2; {s_client.format(addr='127.0.0.1:18443')}; kill $!")
    from .targets import format_endpoint  # targets loads cryptography: only when a command names an address

    return s_client.format(addr=format_endpoint(b.host, b.port or 443))


def ca_bundle(b: Backend, out: str) -> str:
    if b.configurations:
        return (f"kubectl get {config_refs(b)[0]} -o jsonpath="
                f"'{{.webhooks[?(@.name==\"{b.name}\")].clientConfig.caBundle}}' | base64 -d > {out}")
    return ("kubectl get validatingwebhookconfigurations,mutatingwebhookconfigurations -o jsonpath="
            f"'{{range .items[*].webhooks[?(@.name==\"{b.name}\")]}}{{.clientConfig.caBundle}}{{\"\\n\"}}{{end}}'"
            f" | head -n1 | base64 -d > {out}")


def tls_commands(b: Backend) -> list[str]:
    ca, served = "/tmp/webhook-ca.pem", "/tmp/webhook-served.pem"
    return [ca_bundle(b, ca), served_certificate(b, served),
            f"openssl x509 -in {served} -noout -subject -issuer -dates -ext subjectAltName",
            f"openssl x509 -in {ca} -noout -subject -dates",
            f"openssl verify -CAfile {ca} -verify_hostname {server_name(b)} {served}"]


def curl(b: Backend) -> str:
    from .targets import format_endpoint

    url = f"https://{format_endpoint(b.host, b.port or 443)}{b.path}"
    return f"curl -sv --globoff --max-time 10 {shlex.quote(url)}  # from a control-plane host"


def provenance_command(b: Backend) -> str:
    ref = config_refs(b)[0]
    return (f"kubectl get {ref} -o jsonpath='{{.metadata.labels}}{{\"\\n\"}}{{.metadata.annotations}}{{\"\\n\"}}"
            "{.metadata.ownerReferences}{\"\\n\"}'  # who manages it: cert-manager, Gatekeeper, Kyverno, a chart...")


def apiserver_rejections(b: Backend) -> str:
    return (f"kubectl get --raw /metrics | grep '^apiserver_admission_webhook_rejection_count' "
            f"| grep -F 'name=\"{b.name}\"'")


def exporter_query(b: Backend) -> str:
    return f"# PromQL, what the exporter's probes see: admission_webhook_probe_failure_info{{name=\"{b.name}\"}}"


BACKUP_PATCH = ('{"metadata":{"resourceVersion":null,"uid":null,"creationTimestamp":null,"generation":null,'
                '"managedFields":null,"annotations":{"kubectl.kubernetes.io/last-applied-configuration":null}}}')


def break_glass(b: Backend, manager: Manager | None = None) -> tuple[str, ...]:
    """Stop the apiserver calling a Fail webhook until its backend is back, as the runbooks do it: a backup
    without the fields the API server sets (so it can be written back), the patch, and the restore."""
    patch = '{"webhooks":[{"name":"%s","failurePolicy":"%s"}]}'
    out: list[str] = [] if b.configurations else [set_ref(b)]
    for ref in config_refs(b):
        backup = (ref.split()[-1] if ref != LOCATED else "webhook-configuration") + ".backup.yaml"
        out += [f"kubectl get {ref} -o yaml | kubectl patch --local -f - --type=merge -o yaml -p '{BACKUP_PATCH}' "
                f"> {backup}",
                f"kubectl patch {ref} --type=strategic -p '{patch % (b.name, 'Ignore')}'",
                f"# when the backend is healthy again: kubectl replace --force -f {backup}  (or patch failurePolicy "
                "back to Fail)"]
    owner = manager.name if manager is not None else "an operator or chart that owns the configuration"
    out.append(f"# {owner} may revert the patch: scale it down first, or delete the configuration "
               f"(kubectl delete {config_refs(b)[0]}) and restore it afterwards from the backup")
    return tuple(out)


# -- Diagnoses ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Diagnosis:
    meaning: str
    causes: tuple[str, ...]


DIAGNOSES: dict[str, Diagnosis] = {
    "no_endpoints": Diagnosis(
        "The Service behind the webhook has no ready endpoint: the apiserver had nowhere to send the call.",
        ("the backend pods are not Ready (crash-looping, failing their readiness probe, image pull errors)",
         "the backend was scaled to zero, evicted or drained, or its Deployment was deleted",
         "the backend's own pods cannot be created because this webhook (or another failurePolicy Fail webhook) "
         "intercepts them: a deadlock; `admission-webhook-exporter audit` names it",
         "the Service's selector no longer matches the pods' labels")),
    "service_not_found": Diagnosis(
        "The Service the webhook names does not exist.",
        ("the chart or operator was uninstalled and left its webhook configuration behind",
         "the Service was renamed or moved to another namespace and the configuration still names the old one")),
    "connection_refused": Diagnosis(
        "An endpoint exists but nothing accepts connections on its port.",
        ("the process is starting, restarting or crashed, and the readiness probe does not check the webhook port",
         "the Service's targetPort (or the named port) points at the wrong container port",
         "the server listens on 127.0.0.1 only, or on another port than the one declared")),
    "unreachable": Diagnosis(
        "The apiserver has no network path to the endpoint.",
        ("the endpoint's pod is gone and the EndpointSlice is stale, or its node is down",
         "routing from the control plane to the pod network is missing (private or managed control planes)",
         "a firewall or security group between the control plane and the nodes rejects the port")),
    "connection_reset": Diagnosis(
        "The backend, or something in front of it, accepted the connection and then reset it: there is a network "
        "path, and what answered hung up on the call.",
        ("the backend process crashed or was OOM-killed mid-request (see its restarts and last state)",
         "a service-mesh sidecar (Istio, Linkerd) intercepts the webhook port and refuses the apiserver, which is "
         "not in the mesh: exclude the port from inbound capture",
         "the backend requires a TLS client certificate the apiserver did not present (a TLS 1.3 server may reset "
         "instead of sending `certificate required`)",
         "a load balancer or NAT between the control plane and the nodes dropped an idle connection the apiserver "
         "reused")),
    "dial_timeout": Diagnosis(
        "The apiserver's TCP connection to the endpoint never completed: packets are dropped on the way.",
        ("a NetworkPolicy admits no traffic from the control plane to the webhook pods",
         "a cloud firewall rule between the control plane and the nodes does not open the webhook's target port "
         "(GKE private clusters open only 443 and 10250 by default; EKS security groups)",
         "the node or the CNI on it is unhealthy")),
    "timeout": Diagnosis(
        "The webhook did not answer within its timeoutSeconds; the apiserver gave up on the call.",
        ("the webhook is overloaded or slow (too few replicas, CPU throttling, calls to external APIs on each "
         "request)",
         "the network drops packets between the apiserver and the webhook (NetworkPolicy, firewall)",
         "timeoutSeconds is shorter than the webhook's normal latency")),
    "dns": Diagnosis(
        "The apiserver could not resolve the webhook's URL host.",
        ("the host exists only in cluster DNS, which the apiserver does not use: use a `service` reference",
         "the DNS record was removed or is not resolvable from the control plane's network")),
    "x509_unknown_authority": Diagnosis(
        "The backend serves a certificate that does not chain to the webhook's caBundle.",
        ("the CA was rotated or regenerated and caBundle still holds the old one: whatever injects caBundle "
         "(see Fix) did not update it; `crypto/rsa: verification error` with a candidate authority means a CA "
         "of the same name but a new key",
         "the backend generated a fresh self-signed certificate on restart without updating caBundle",
         "caBundle is empty, so the apiserver used its system roots")),
    "x509_expired": Diagnosis(
        "The certificate the backend serves has expired.",
        ("it was not renewed (the issuer or the renewal job failed)",
         "it was renewed but the backend did not reload it: a restart picks it up")),
    "x509_not_yet_valid": Diagnosis(
        "The certificate the backend serves is not valid yet.",
        ("clock skew between the issuer's host and the control plane",
         "a certificate issued with a notBefore in the future")),
    "x509_hostname_mismatch": Diagnosis(
        "The served certificate is not valid for the name the apiserver checks (<service>.<namespace>.svc).",
        ("the certificate was issued for another Service name or namespace (after a rename or a copy)",
         "the certificate has no `<service>.<namespace>.svc` subjectAltName (a CN-only certificate is rejected "
         "by Go)")),
    "plain_http": Diagnosis(
        "The webhook's port answered in plain HTTP: the apiserver calls every webhook over HTTPS.",
        ("the backend could not load its certificate and fell back to (or was configured for) plain HTTP",
         "the Service's targetPort points at another port of the pod that speaks HTTP (metrics, health)",
         "a sidecar or proxy that should terminate TLS is missing or forwards plain HTTP on this port")),
    "tls_handshake": Diagnosis(
        "The TLS handshake with the backend failed before any certificate was judged.",
        ("the port serves another protocol than TLS",
         "no common TLS version or cipher (a backend that only accepts old or very new settings)",
         "the backend closed the connection (EOF): a crash, a proxy or a sidecar in front of it",
         "the backend wants a client certificate the apiserver did not present (`remote error: tls: bad "
         "certificate` or `handshake failure` from a TLS 1.2 server)")),
    "client_auth_required": Diagnosis(
        "The backend requires a TLS client certificate, and the apiserver presented none: it finds the "
        "certificate to present in its AdmissionConfiguration kubeConfigFile, by the webhook's host.",
        ("the kubeConfigFile has no users entry for this webhook: it is named `<service>.<namespace>.svc` (or "
         "`*.<namespace>.svc`, `*`) for a service webhook, the URL's `host:port` for a url webhook",
         "the file was changed but the apiserver not restarted (it reads the file once, at start)",
         "(for the exporter: give it the same file with --webhook-client-config, or its probes of this backend "
         "say `client_auth_required` instead of a verdict)")),
    "tunnel": Diagnosis(
        "The connection through the apiserver's egress tunnel (Konnectivity or an HTTP CONNECT egress proxy) "
        "broke or was refused before the webhook answered.",
        ("the konnectivity-agent pods are down, restarting or too few for the load",
         "an idle connection in the tunnel was closed and reused (`write: broken pipe`, "
         "`http2: client connection lost`)",
         "the egress proxy cannot reach the webhook endpoint (its own `code 503`)",
         "note: the exporter probes from inside the cluster, not through the tunnel, so its probes may succeed "
         "while the apiserver fails")),
    "http_error": Diagnosis(
        "The webhook answered, but not with a valid AdmissionReview for the request.",
        ("the path is wrong (404) or the handler crashed (5xx)",
         "the webhook does not speak an admissionReviewVersions the configuration promises",
         "a proxy or sidecar in front of the webhook answered instead")),
    "review_mismatch": Diagnosis(
        "The webhook answered with an AdmissionReview the apiserver cannot match to its request: another "
        "apiVersion or kind than it sent, or another uid.",
        ("the webhook speaks only admission.k8s.io/v1beta1 (or answers without apiVersion and kind) while "
         "admissionReviewVersions lists v1 first: the apiserver sends v1 and requires v1 back",
         "the webhook does not copy request.uid into response.uid",
         "a proxy or cache in front of the webhook answered with another request's review")),
    "transport": Diagnosis(
        "The apiserver could not complete the call to the webhook.",
        ("see the cause after the URL; the backend, its certificates and the network path are the usual "
         "suspects",)),
    "invalid_config": Diagnosis(
        "The apiserver refused to call the webhook: its configuration cannot be used as written.",
        ("admissionReviewVersions lists no version the apiserver speaks (v1, v1beta1)",
         "sideEffects is unset, which only a configuration stored before admissionregistration.k8s.io/v1 can be")),
    "denial": Diagnosis(
        "The webhook answered and refused the object. This is a policy decision, not an outage: the message "
        "after `denied the request:` is the webhook's own.",
        ("the object violates the policy the message names",
         "the policy changed (or was newly enforced) since the manifests were written",
         "a mutating webhook earlier in the chain changed the object into something the policy refuses")),
    "no_dry_run": Diagnosis(
        "A configuration problem, not a denial: a dry-run request (`--dry-run=server`, `kubectl diff`) matched a "
        "webhook whose sideEffects is Some or Unknown, and the apiserver refuses a dry run rather than let the "
        "webhook act on an object that will not be stored. The object itself was not judged.",
        ("the configuration predates admissionregistration.k8s.io/v1, which accepts only None and NoneOnDryRun: "
         "it was created through v1beta1 (Kubernetes 1.21 or older) and never updated",
         "the webhook really has side effects and does not skip them on dry run")),
    "ip_exhausted": Diagnosis(
        "The apiserver found no ClusterIP it could allocate. Since Kubernetes 1.33 every ClusterIP is an IPAddress "
        "object the apiserver creates; while a failurePolicy Fail webhook that intercepts `ipaddresses` cannot be "
        "called, each create is refused, the allocator takes every refusal for a taken address, tries the whole "
        "range and reports it full. No Service can be created then, the webhook's own included: a deadlock.",
        ("a failurePolicy Fail webhook intercepts networking.k8s.io `ipaddresses` (often through a `*` rule) and "
         "its backend is down; the apiserver's log says `can not create IPAddress <ip>: ... failed calling "
         "webhook \"<name>\"`",
         "the Service range really is full: `kubectl get ipaddresses` counts as many addresses as the ServiceCIDRs "
         "hold")),
    "unknown": Diagnosis(
        "This text does not look like an admission webhook error from the apiserver.",
        ("paste the whole message, starting at `Error from server` or `Internal error occurred`",)),
}

ALLOCATION_CONDITION = ("matchConditions:\n"
                        "  - name: exclude-service-ip-allocation\n"
                        "    expression: \"!(request.resource.group == 'networking.k8s.io' && "
                        "request.resource.resource in ['ipaddresses', 'servicecidrs'])\"")
FAIL_ON_ALLOCATION = ("kubectl get validatingwebhookconfigurations,mutatingwebhookconfigurations -o jsonpath="
                      "'{range .items[*]}{range .webhooks[?(@.failurePolicy==\"Fail\")]}{.name}{\" \"}"
                      "{.rules[*].resources}{\"\\n\"}{end}{end}' | grep -E 'ipaddresses|servicecidrs|\"\\*'")


def confirm_commands(diagnosis: str, b: Backend) -> list[str]:
    """Commands that confirm the diagnosis, most telling first."""
    if diagnosis == "ip_exhausted":
        return [FAIL_ON_ALLOCATION + "  # Fail webhooks that intercept IPAddress or ServiceCIDR objects",
                "kubectl get servicecidrs", "kubectl get ipaddresses --no-headers | wc -l  # taken addresses",
                "# the apiserver's log: can not create IPAddress <ip>: ... failed calling webhook \"<name>\""]
    base = show_config(b)
    svc = bool(b.service and b.namespace)
    if diagnosis in ("no_endpoints", "connection_refused", "unreachable", "dial_timeout", "timeout",
                     "connection_reset", "plain_http"):
        if svc:
            base += [slices(b), pods(b), f"kubectl -n {b.namespace} describe service {b.service}"]
            if diagnosis in ("connection_refused", "timeout", "no_endpoints", "connection_reset", "plain_http"):
                base.append(logs(b))
            if diagnosis in ("dial_timeout", "timeout"):
                base.append(f"kubectl -n {b.namespace} get networkpolicies")
        elif b.host:
            base.append(curl(b))
    elif diagnosis == "service_not_found":
        if b.service and b.namespace:
            base.append(f"kubectl -n {b.namespace} get service {b.service}")
    elif diagnosis.startswith("x509") or diagnosis in ("tls_handshake", "client_auth_required"):
        base += tls_commands(b)
        if diagnosis.startswith("x509"):
            base.append(provenance_command(b))
    elif diagnosis == "tunnel":
        base += ["kubectl -n kube-system get pods -l k8s-app=konnectivity-agent -o wide",
                 "kubectl -n kube-system logs -l k8s-app=konnectivity-agent --tail=100 --prefix"]
        if svc:
            base.append(slices(b))
    elif diagnosis in ("http_error", "review_mismatch") and svc:
        base.append(logs(b))
    elif diagnosis == "denial":
        if "kyverno" in b.name:
            base.append("kubectl get clusterpolicies,policies -A")
        if "gatekeeper" in b.name:
            base.append("kubectl get constraints")
        return base
    elif diagnosis in ("no_dry_run", "invalid_config", "unknown"):
        return base if b.name else []
    return [*base, apiserver_rejections(b), exporter_query(b)]


def _patch_ca(b: Backend) -> str:
    return (f"kubectl patch {config_refs(b)[0]} --type=strategic -p '{{\"webhooks\":[{{\"name\":\"{b.name}\","
            "\"clientConfig\":{\"caBundle\":\"'\"$(base64 -w0 < ca.crt)\"'\"}}]}'  # ca.crt: the CA that signs "
            "the serving certificate")


def fix_commands(diagnosis: str, b: Backend, manager: Manager | None = None) -> list[str]:
    """Commands (or `#` steps) that repair the cause; the break-glass path and YAML changes are separate."""
    svc = bool(b.service and b.namespace)
    where = f"Service {b.namespace}/{b.service}" if svc else "the webhook's Service"
    restart = [restart_pods(b)] if svc else ["# restart the webhook's backend"]
    if diagnosis == "no_endpoints":
        return [*restart, f"# if it was scaled to 0: scale the Deployment behind {where} back up",
                "# if its pods are refused by a failurePolicy Fail webhook (this one included): break glass below, "
                "then exclude the backend's namespace from that webhook's namespaceSelector"]
    if diagnosis == "service_not_found":
        return [f"kubectl delete {config_refs(b)[0]}  # an orphaned configuration whose chart is gone",
                "# or reinstall the component, or point clientConfig.service at the existing Service"]
    if diagnosis in ("connection_refused", "http_error", "connection_reset"):
        return [*restart, f"# check that {where} targetPort is the port the webhook listens on, and its path"]
    if diagnosis in ("unreachable", "dial_timeout", "timeout"):
        return ["# allow the control plane to reach the webhook pods on their target port (NetworkPolicy ingress, "
                "cloud firewall / security group)",
                f"# if it is overloaded: more replicas of the Deployment behind {where}"]
    name = server_name(b) or "<service>.<namespace>.svc"
    if diagnosis == "x509_unknown_authority":
        if manager is None:
            return ["# find what injects caBundle (the provenance command above), then have it re-inject; "
                    "or set it by hand:", _patch_ca(b)]
        return [f"# {manager.name} manages this webhook ({manager.evidence}):", *manager.ca_fix, _patch_ca(b)]
    if diagnosis in ("x509_expired", "x509_not_yet_valid", "x509_hostname_mismatch"):
        reissue = f"# reissue the serving certificate for {name}"
        if manager is not None:
            return [f"# {manager.name} manages this webhook ({manager.evidence}):", *manager.cert_fix, *restart]
        return [f"{reissue} (find its issuer with the provenance command above), then reload it:", *restart]
    if diagnosis in ("tls_handshake", "plain_http"):
        return [f"# serve TLS (1.2+) on the port {where} targets, with a certificate for {name}", *restart]
    if diagnosis == "client_auth_required":
        return [f"# add a users entry named {name} (or *.{b.namespace}.svc, or *) with the client certificate "
                "the backend trusts to the kubeConfigFile of the apiserver's AdmissionConfiguration "
                "(--admission-control-config-file), then restart the apiserver"
                if svc else "# add a users entry named after the URL's host:port to the kubeConfigFile of the "
                            "apiserver's AdmissionConfiguration, then restart the apiserver"]
    if diagnosis == "review_mismatch":
        return ["# list in admissionReviewVersions only the versions the webhook answers in (v1beta1 first if "
                "that is all it speaks), or upgrade the webhook", *restart]
    if diagnosis == "dns":
        return [f"# make {b.host or 'the URL host'} resolvable from the control plane's hosts, or serve the webhook "
                "in the cluster and reference it with clientConfig.service (the apiserver does not use cluster DNS)"]
    if diagnosis == "tunnel":
        return ["kubectl -n kube-system rollout restart daemonset konnectivity-agent  # or deployment, per install",
                "# managed clusters: check the provider's control-plane-to-node connectivity status"]
    if diagnosis == "denial":
        return ["# change the object to satisfy the message, or ask the policy owner for an exception; "
                "a denial is not a reason to disable the webhook"]
    if diagnosis == "no_dry_run":
        return [f"kubectl patch {config_refs(b)[0]} --type=strategic -p '{{\"webhooks\":[{{\"name\":\"{b.name}\","
                "\"sideEffects\":\"NoneOnDryRun\"}]}'  # only if the webhook skips its side effects on dry run",
                "# or run the request without --dry-run=server"]
    if diagnosis == "invalid_config":
        return ["# set admissionReviewVersions (e.g. [v1, v1beta1]) and sideEffects (None or NoneOnDryRun) on "
                "the webhook"]
    if diagnosis == "ip_exhausted":
        return ["# bring the blocking webhook's backend back (break glass below if it cannot start), then exclude "
                "IPAddress and ServiceCIDR objects from its rules or matchConditions (below)",
                "# if the range really is full: add a ServiceCIDR (networking.k8s.io/v1) with a free range"]
    return []


def change_yaml(diagnosis: str, allocating: bool) -> tuple[str, ...]:
    """YAML to set in the webhook's configuration (shown as YAML, never as a command)."""
    if diagnosis == "no_dry_run":
        return ("# on the webhook, if it has no side effects (None) or skips them on dry run (NoneOnDryRun):",
                "sideEffects: NoneOnDryRun")
    if diagnosis == "ip_exhausted" or allocating:
        return ("# append to the webhook's matchConditions (Kubernetes 1.30+), so the apiserver never waits on it "
                "to allocate a Service IP:", *ALLOCATION_CONDITION.splitlines())
    return ()


# -- Assembling explanations -------------------------------------------------------------------------------
def _explain_one(p: Parsed, inventory: Inventory | None, source: str) -> Explanation:
    b = with_inventory(backend_from_url(p.webhook, p.url), inventory, p.cause)
    if not b.service and (m := _NO_ENDPOINTS.search(p.cause)) is not None and _LABEL.fullmatch(m["service"]):
        b = replace(b, service=m["service"])
    policy = b.failure_policy if b.configurations else (p.policy or b.failure_policy)
    d = DIAGNOSES[p.diagnosis]
    manager = manager_of(b)
    notes: list[str] = []
    meaning, causes = d.meaning, d.causes
    if inventory is not None and p.webhook and not b.configurations:
        notes.append(f"webhook {p.webhook!r} is not in {source} ({len(inventory.webhooks)} webhooks there): the "
                     "commands below find its configuration first")
    glass: tuple[str, ...] = ()
    configurations = b.configurations
    if p.diagnosis == "ip_exhausted" or p.ip:
        blockers = allocation_blockers(inventory) if inventory is not None else ()
        if p.ip:
            meaning = (f"Allocating ClusterIP {p.ip} for the Service failed: the apiserver creates an IPAddress "
                       f"object for it, and calling webhook {p.webhook!r}, which intercepts it, failed. "
                       + d.meaning)
            causes = ("a failurePolicy Fail webhook on `ipaddresses` blocks every Service while its backend is "
                      "down, the Service of its own backend included: a deadlock", *d.causes)
        if inventory is not None and not blockers and p.diagnosis == "ip_exhausted":
            notes.append(f"no failurePolicy Fail webhook in {source} intercepts ipaddresses or servicecidrs: the "
                         "range may really be full")
        configurations = tuple(dict.fromkeys((*b.configurations, *(h.key for h in blockers))))
        names = list(dict.fromkeys([*([b.name] if b.name else []), *(h.key.name for h in blockers)]))
        for name in names:
            keys = tuple(k for k in configurations if k.name == name)
            glass += break_glass(replace(b, name=name, configurations=keys), manager if name == b.name else None)
        if not names:
            glass = ("# find the Fail webhooks on ipaddresses (Confirm, first command), or run explain again with "
                     "--kubeconfig to have them named with their commands; for each, back it up and switch it to "
                     "Ignore as the break glass of docs/runbooks/AdmissionWebhookProbeFailing.md says:",
                     "#   kubectl patch <kind> <configuration> --type=strategic -p "
                     "'{\"webhooks\":[{\"name\":\"<webhook>\",\"failurePolicy\":\"Ignore\"}]}'")
    elif p.kind == "transport_failure" and b.name and policy != "Ignore":
        glass = break_glass(b, manager)
    if p.kind == "transport_failure" and policy == "Ignore":
        meaning += (" Its failurePolicy is Ignore: the apiserver admitted the request without it (its policy not "
                    "enforced, its mutation not applied); nothing was refused, so there is no glass to break.")
    return Explanation(
        kind=p.kind, webhook=p.webhook, url=configured_url(p.url), service=b.service, namespace=b.namespace,
        port=b.port, path=b.path, timeout=b.timeout, reason=p.reason,
        cause=neutralise(p.cause, lines=p.kind == "denial"), meaning=meaning, likely_causes=causes,
        confirm=tuple(confirm_commands(p.diagnosis, b)), fix=tuple(fix_commands(p.diagnosis, b, manager)),
        change=change_yaml(p.diagnosis, bool(p.ip)), break_glass=glass, failure_policy=policy, allocating=p.ip,
        notes=tuple(notes), configurations=configurations)


def explain_all(text: str, inventory: Inventory | None = None, *, source: str = "the inventory") -> Explained:
    """Every error in `text`, each explained on its own in order (repeats once, counted); `source` names where
    the inventory came from, for the notes."""
    truncated = len(text) > MAX_INPUT_CHARS
    text = text[:MAX_INPUT_CHARS]
    errors = find_errors(text)
    if not errors:
        d = DIAGNOSES["unknown"]
        unknown = Explanation(kind="unknown", webhook="", url="", service="", namespace="", port=None, path="",
                              timeout="", reason="", cause=neutralise(text.strip()), meaning=d.meaning,
                              likely_causes=d.causes, confirm=(), fix=())
        return Explained(count=0, errors=(), truncated=truncated, unrecognised=unknown)
    seen: dict[Parsed, int] = {}
    for p in errors:
        seen[p] = seen.get(p, 0) + 1
    shown = list(seen.items())[:MAX_EXPLAINED]
    explained = tuple(replace(_explain_one(p, inventory, source), occurrences=n) for p, n in shown)
    return Explained(count=len(errors), errors=explained, omitted=len(seen) - len(shown), truncated=truncated)


def explain(text: str, inventory: Inventory | None = None) -> Explanation:
    """The first error of `text` explained (the whole text's `unknown` explanation when it holds none)."""
    result = explain_all(text, inventory)
    first = result.errors[0] if result.errors else result.unrecognised
    assert first is not None
    return first


async def probe_verdicts(inventory: Inventory, names: Sequence[str], *, concurrency: int = 64,
                         probe_fn: ProbeFn | None = None) -> dict[str, tuple[WebhookStatus, ...]]:
    """One probe round for the webhooks of these names: are they still failing, and with which reason?"""
    from .report import summarize
    from .scheduler import probe_once
    from .targets import plan

    wanted = set(names)
    plans = [p for p in plan(inventory) if p.key.name in wanted]
    kwargs = {} if probe_fn is None else {"probe_fn": probe_fn}
    results = await probe_once(plans, concurrency=concurrency, **kwargs)
    statuses = summarize(plans, results)
    return {name: tuple(s for s in statuses if s.name == name) for name in names}


def webhooks_to_probe(result: Explained) -> list[str]:
    return list(dict.fromkeys(k.name for e in result.errors for k in e.configurations))


def with_verdicts(result: Explained, verdicts: dict[str, tuple[WebhookStatus, ...]]) -> Explained:
    errors = tuple(replace(e, verdicts=tuple(v for k in dict.fromkeys(k.name for k in e.configurations)
                                             for v in verdicts.get(k, ())))
                   for e in result.errors)
    return replace(result, errors=errors)


# -- People ------------------------------------------------------------------------------------------------
HEADLINES = {"denial": "Denied by webhook", "transport_failure": "Transport failure calling webhook",
             "configuration": "Configuration problem of webhook", "allocation_failure": "Service IP allocation failed",
             "unknown": "Not recognised"}


def _section(title: str, lines: Sequence[str], *, commands: bool = False, numbered: bool = False) -> list[str]:
    if not lines:
        return []
    out = ["", title]
    for i, line in enumerate(lines, 1):
        prefix = f"{i}. " if numbered else ("$ " if commands and not line.startswith("#") else "")
        out.append(f"  {prefix}{line}")
    return out


def _one(e: Explanation) -> list[str]:
    head = HEADLINES[e.kind] + (f' "{e.webhook}"' if e.webhook else "")
    lines = [head + (f" (reason {e.reason})" if e.reason else "")
             + (f" while allocating ClusterIP {e.allocating}" if e.allocating else "")
             + (f", {e.occurrences} times" if e.occurrences > 1 else "")]
    if e.service:
        where = f"service {e.namespace}/{e.service}" + (f" port {e.port}" if e.port else "")
        lines.append(f"  backend: {where}" + (f", path {neutralise(e.path, 200)}" if e.path else "")
                     + (f", timeout {e.timeout}" if e.timeout else ""))
    elif e.url:
        lines.append(f"  backend: url {neutralise(e.url, 300)}" + (f", timeout {e.timeout}" if e.timeout else ""))
    if e.failure_policy:
        lines.append(f"  failurePolicy: {e.failure_policy}")
    for key in e.configurations:
        lines.append(f"  configuration: {KIND_OF[key.type]} {key.configuration} (webhook {key.name})")
    if e.cause:
        label = "message" if e.kind == "denial" else "error"
        lines.append(f"  {label}: " + e.cause.replace("\n", "\n    "))
    lines += [f"  note: {n}" for n in e.notes]
    lines += ["", "What it means", f"  {e.meaning}"]
    lines += _section("Likely causes, most likely first", e.likely_causes, numbered=True)
    lines += _section("Confirm", e.confirm, commands=True)
    lines += _section("Fix", e.fix, commands=True)
    lines += _section("Change in the webhook configuration (YAML)", e.change)
    lines += _section("Break glass (failurePolicy Fail: every matching request is refused until the backend is "
                      "back)", e.break_glass, commands=True)
    if e.verdicts:
        from .report import to_table

        lines += ["", "Probe verdict now", *("  " + row for row in to_table(e.verdicts).splitlines())]
    return lines


def _summary(r: Explained) -> Iterator[str]:
    if r.truncated:
        yield f"(only the first {MAX_INPUT_CHARS} characters of the input were read)"
    if len(r.errors) + r.omitted > 1 or r.count > 1:
        distinct = len(r.errors) + r.omitted
        yield (f"{r.count} admission webhook error{'s' if r.count != 1 else ''} in the input"
               + (f" ({distinct} distinct)" if distinct != r.count else "") + ", each explained below in order"
               + (f"; the last {r.omitted} distinct ones are not shown" if r.omitted else "") + ".")


def to_text(result: Explained | Explanation) -> str:
    if isinstance(result, Explanation):
        return "\n".join(_one(result))
    lines = list(_summary(result))
    if result.unrecognised is not None:
        return "\n".join([*lines, *_one(result.unrecognised)])
    for i, e in enumerate(result.errors, 1):
        if len(result.errors) > 1:
            lines += [*([""] if lines else []), f"== {i} of {len(result.errors)} =="]
        lines += _one(e)
    return "\n".join(lines)


@dataclass(frozen=True)
class _Doc:
    count: int
    distinct: int
    omitted: int
    truncated: bool
    errors: list[dict[str, object]] = field(default_factory=list)
    unrecognised: dict[str, object] | None = None


def to_json(result: Explained | Explanation) -> str:
    if isinstance(result, Explanation):
        return json.dumps(asdict(result), indent=2)
    doc = _Doc(count=result.count, distinct=len(result.errors) + result.omitted, omitted=result.omitted,
               truncated=result.truncated, errors=[asdict(e) for e in result.errors],
               unrecognised=asdict(result.unrecognised) if result.unrecognised is not None else None)
    return json.dumps(asdict(doc), indent=2)
