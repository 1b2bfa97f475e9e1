"""Turn an apiserver/kubectl admission webhook error into a diagnosis: what it means, why, what to run.

The apiserver's wording is stable and precise (`failed calling webhook "<name>": failed to call webhook: Post
"<url>": <cause>`, `admission webhook "<name>" denied the request: ...`), and its causes are the probe's
closed set of reasons (`exporter.reasons`, whose wording table recognises the cause), so an error pasted from
a terminal maps onto the same `reason` the exporter's metrics carry. Parsing is a pure function; the optional
live verdict reuses one probe round (`targets.plan` + `scheduler.probe_once` + `report.summarize`) for the
webhooks of that name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from .model import Inventory, Webhook, WebhookKey
from .reasons import recognise
from .report import WebhookStatus, summarize, to_table
from .scheduler import ProbeFn, probe_once
from .targets import plan

Kind = Literal["denial", "transport_failure", "unknown"]


@dataclass(frozen=True)
class Explanation:
    kind: Kind
    webhook: str  # the webhook's name as the apiserver printed it ("" when the text names none)
    url: str  # the URL the apiserver posted to
    service: str  # parsed from https://<service>.<namespace>.svc:<port>/<path>, or from the inventory
    namespace: str
    port: int | None
    path: str
    timeout: str  # the ?timeout= the apiserver put on the call (the webhook's timeoutSeconds)
    reason: str  # a probe reason (exporter/reasons.py); "" for a denial or an unknown text
    cause: str  # what the call failed with, or the webhook's denial message
    meaning: str
    likely_causes: tuple[str, ...]
    confirm: tuple[str, ...]  # commands, exact where the text or the inventory says enough
    fix: tuple[str, ...]
    break_glass: tuple[str, ...]  # transport failures of Fail webhooks: stop calling it until it is back
    configurations: tuple[WebhookKey, ...] = ()  # the webhooks of that name in the inventory, when given
    verdicts: tuple[WebhookStatus, ...] = ()  # their probe verdicts now, when a cluster or manifests are given


# -- Parsing -----------------------------------------------------------------------------------------------
_PREFIXES = re.compile(r"^(?:Error from server(?: \([A-Za-z]+\))?: |error when [a-z]+ \"[^\"]*\": "
                       r"|Internal error occurred: )+")
_CALL = re.compile(r'failed calling webhook "(?P<name>[^"]+)": (?:failed to call webhook: )?(?P<rest>.*)', re.S)
_POST = re.compile(r'^Post "?(?P<url>https?://[^"\s]+?)"?: (?P<cause>.*)$', re.S)
_DENIED = re.compile(r'admission webhook "(?P<name>[^"]+)" denied the request(?::\s*(?P<message>.*))?', re.S)
_NO_DRY_RUN = re.compile(r'admission webhook "(?P<name>[^"]+)" does not support dry run')
_NO_ENDPOINTS = re.compile(r'no endpoints available for service "(?P<service>[^"]+)"')

@dataclass(frozen=True)
class Parsed:
    kind: Kind
    webhook: str
    url: str
    cause: str
    diagnosis: str  # a key of DIAGNOSES
    reason: str


def strip_prefixes(text: str) -> str:
    """What kubectl and the apiserver wrap around the message: `Error from server (InternalError): ...`."""
    return _PREFIXES.sub("", text.strip())


def classify_cause(cause: str) -> tuple[str, str]:
    """(diagnosis key, probe reason) for a transport cause, from the one wording table (`exporter.reasons`);
    ("transport", "") when no wording there matches."""
    wording = recognise(cause)
    return (wording.diagnosis, wording.reason.value) if wording is not None else ("transport", "")


def parse_error(text: str) -> Parsed:
    """The webhook, URL and cause an error names, and whether the webhook refused or could not be called."""
    body = strip_prefixes(text)
    if (m := _DENIED.search(body)) is not None:
        return Parsed("denial", m["name"], "", (m["message"] or "").strip(), "denial", "")
    if (m := _NO_DRY_RUN.search(body)) is not None:
        return Parsed("denial", m["name"], "", m.group(0), "no_dry_run", "")
    webhook, url, cause = "", "", body
    if (m := _CALL.search(body)) is not None:
        webhook, cause = m["name"], m["rest"].strip()
        if (post := _POST.match(cause)) is not None:
            url, cause = post["url"], post["cause"].strip()
    diagnosis, reason = classify_cause(cause)
    if diagnosis == "transport" and not webhook:
        return Parsed("unknown", "", "", body, "unknown", "")
    return Parsed("transport_failure", webhook, url, cause, diagnosis, reason)


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
    timeout = parse_qs(parts.query).get("timeout", [""])[0]
    if len(labels) >= 3 and labels[2] == "svc":
        return Backend(name, labels[0], labels[1], port, parts.path, host, timeout)
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
        failure_policy="Fail" if "Fail" in policies else hook.failure_policy)


# -- Commands ----------------------------------------------------------------------------------------------
KIND_OF = {"validating": "validatingwebhookconfiguration", "admit": "mutatingwebhookconfiguration"}
UNKNOWN_CONFIG = "<validatingwebhookconfiguration|mutatingwebhookconfiguration> <configuration>"


def config_refs(b: Backend) -> list[str]:
    """`<kind> <name>` of every configuration holding the webhook, or a placeholder the locate command fills."""
    return [f"{KIND_OF[k.type]} {k.configuration}" for k in b.configurations] or [UNKNOWN_CONFIG]


def locate(b: Backend) -> str:
    pattern = re.sub(r"([.])", r"\\\1", b.name)
    return ("kubectl get validatingwebhookconfigurations,mutatingwebhookconfigurations -o jsonpath="
            "'{range .items[*]}{.kind}/{.metadata.name}{\" \"}{.webhooks[*].name}{\"\\n\"}{end}'"
            f" | grep -E ' {pattern}( |$)'")


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
    return s_client.format(addr=f"{b.host}:{b.port or 443}")


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


def apiserver_rejections(b: Backend) -> str:
    return (f"kubectl get --raw /metrics | grep '^apiserver_admission_webhook_rejection_count' "
            f"| grep -F 'name=\"{b.name}\"'")


def exporter_query(b: Backend) -> str:
    return f"# PromQL, what the exporter's probes see: admission_webhook_probe_failure_info{{name=\"{b.name}\"}}"


def break_glass(b: Backend) -> tuple[str, ...]:
    """Stop the apiserver calling a Fail webhook until its backend is back; reverted by the second patch."""
    patch = '{"webhooks":[{"name":"%s","failurePolicy":"%s"}]}'
    out: list[str] = []
    for ref in config_refs(b):
        backup = ref.split()[-1] if ref != UNKNOWN_CONFIG else "<configuration>"
        out += [f"kubectl get {ref} -o yaml > {backup}.backup.yaml",
                f"kubectl patch {ref} --type=strategic -p '{patch % (b.name, 'Ignore')}'",
                f"# when the backend is healthy again: kubectl patch {ref} --type=strategic "
                f"-p '{patch % (b.name, 'Fail')}'"]
    out.append("# an operator or chart that owns the configuration may revert the patch: scale it down first, "
               f"or delete the configuration (kubectl delete {config_refs(b)[0]}) and reinstall it afterwards")
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
        ("the CA was rotated or regenerated and caBundle still holds the old one (cert-manager's cainjector or "
         "the operator did not update it); `crypto/rsa: verification error` with a candidate authority "
         "means a CA of the same name but a new key",
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
    "tls_handshake": Diagnosis(
        "The TLS handshake with the backend failed before any certificate was judged.",
        ("the port serves plain HTTP, or another protocol",
         "no common TLS version or cipher (a backend that only accepts old or very new settings)",
         "the backend closed the connection (EOF): a crash, a proxy or a sidecar in front of it")),
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
    "transport": Diagnosis(
        "The apiserver could not complete the call to the webhook.",
        ("see the cause after the URL; the backend, its certificates and the network path are the usual "
         "suspects",)),
    "denial": Diagnosis(
        "The webhook answered and refused the object. This is a policy decision, not an outage: the message "
        "after `denied the request:` is the webhook's own.",
        ("the object violates the policy the message names",
         "the policy changed (or was newly enforced) since the manifests were written",
         "a mutating webhook earlier in the chain changed the object into something the policy refuses")),
    "no_dry_run": Diagnosis(
        "The apiserver refused a dry-run request because the webhook declares side effects "
        "(sideEffects Some or Unknown).",
        ("the webhook's sideEffects is not None/NoneOnDryRun", "the request was sent with --dry-run=server")),
    "unknown": Diagnosis(
        "This text does not look like an admission webhook error from the apiserver.",
        ("paste the whole message, starting at `Error from server` or `Internal error occurred`",)),
}


def confirm_commands(diagnosis: str, b: Backend) -> list[str]:
    """Commands that confirm the diagnosis, most telling first."""
    base = show_config(b)
    svc = bool(b.service and b.namespace)
    if diagnosis in ("no_endpoints", "connection_refused", "unreachable", "dial_timeout", "timeout"):
        if svc:
            base += [slices(b), pods(b), f"kubectl -n {b.namespace} describe service {b.service}"]
            if diagnosis in ("connection_refused", "timeout", "no_endpoints"):
                base.append(logs(b))
            if diagnosis in ("dial_timeout", "timeout"):
                base.append(f"kubectl -n {b.namespace} get networkpolicies")
        elif b.host:
            base.append(f"curl -sv --max-time 10 https://{b.host}:{b.port or 443}{b.path}  # from a control-plane "
                        "host")
    elif diagnosis == "service_not_found":
        base += [f"kubectl -n {b.namespace or '<namespace>'} get service {b.service or '<service>'}"]
    elif diagnosis.startswith("x509") or diagnosis == "tls_handshake":
        base += tls_commands(b)
    elif diagnosis == "tunnel":
        base += ["kubectl -n kube-system get pods -l k8s-app=konnectivity-agent -o wide",
                 "kubectl -n kube-system logs -l k8s-app=konnectivity-agent --tail=100 --prefix"]
        if svc:
            base.append(slices(b))
    elif diagnosis == "http_error" and svc:
        base.append(logs(b))
    elif diagnosis == "denial":
        if "kyverno" in b.name:
            base.append("kubectl get clusterpolicies,policies -A")
        if "gatekeeper" in b.name:
            base.append("kubectl get constraints")
        return base
    elif diagnosis in ("no_dry_run", "unknown"):
        return base if b.name else []
    return [*base, apiserver_rejections(b), exporter_query(b)]


def fix_commands(diagnosis: str, b: Backend) -> list[str]:
    """Commands (or the one change) that repair the cause; the break-glass path is separate."""
    ns, svc = b.namespace or "<namespace>", b.service or "<service>"
    if diagnosis == "no_endpoints":
        return [f"kubectl -n {ns} rollout restart deployment <deployment behind {svc}>  # if its pods are stuck",
                f"kubectl -n {ns} scale deployment <deployment behind {svc}> --replicas=2  # if it was scaled to 0",
                "# if its pods are refused by a failurePolicy Fail webhook (this one included): break glass below, "
                "then exclude the backend's namespace from that webhook's namespaceSelector"]
    if diagnosis == "service_not_found":
        return [f"kubectl delete {config_refs(b)[0]}  # an orphaned configuration whose chart is gone",
                "# or reinstall the component, or point clientConfig.service at the existing Service"]
    if diagnosis in ("connection_refused", "http_error"):
        return [f"kubectl -n {ns} rollout restart deployment <deployment behind {svc}>",
                f"# check that Service {ns}/{svc} targetPort is the port the webhook listens on, and its path"]
    if diagnosis in ("unreachable", "dial_timeout", "timeout"):
        return ["# allow the control plane to reach the webhook pods on their target port (NetworkPolicy ingress, "
                "cloud firewall / security group)",
                f"kubectl -n {ns} scale deployment <deployment behind {svc}> --replicas=3  # if it is overloaded"]
    if diagnosis == "x509_unknown_authority":
        return ["kubectl -n cert-manager rollout restart deployment cert-manager-cainjector  # cert-manager "
                "injects caBundle",
                f"kubectl patch {config_refs(b)[0]} --type=strategic -p '{{\"webhooks\":[{{\"name\":\"{b.name}\","
                "\"clientConfig\":{\"caBundle\":\"'\"$(base64 -w0 < ca.crt)\"'\"}}]}'  # ca.crt: the CA that signs "
                "the serving certificate"]
    if diagnosis in ("x509_expired", "x509_not_yet_valid", "x509_hostname_mismatch"):
        return [f"cmctl renew -n {ns} <certificate>  # cert-manager; else reissue the serving certificate for "
                f"{server_name(b) or '<service>.<namespace>.svc'}",
                f"kubectl -n {ns} rollout restart deployment <deployment behind {svc}>  # reload the new certificate"]
    if diagnosis == "tls_handshake":
        return [f"# serve TLS (1.2+) on the port Service {ns}/{svc} targets, with a certificate for "
                f"{server_name(b) or '<service>.<namespace>.svc'}"]
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
        return ["sideEffects: None  # on the webhook, if it has none (or NoneOnDryRun)",
                "# or run the request without --dry-run=server"]
    return []


def explain(text: str, inventory: Inventory | None = None) -> Explanation:
    """Parse the error and assemble its explanation; with an inventory, commands name the real configurations."""
    parsed = parse_error(text)
    b = with_inventory(backend_from_url(parsed.webhook, parsed.url), inventory, parsed.cause)
    if not b.service and (m := _NO_ENDPOINTS.search(parsed.cause)) is not None:
        b = replace(b, service=m["service"])
    d = DIAGNOSES[parsed.diagnosis]
    transport = parsed.kind == "transport_failure"
    glass = break_glass(b) if transport and b.name and b.failure_policy != "Ignore" else ()
    return Explanation(
        kind=parsed.kind, webhook=parsed.webhook, url=parsed.url, service=b.service, namespace=b.namespace,
        port=b.port, path=b.path, timeout=b.timeout, reason=parsed.reason, cause=parsed.cause, meaning=d.meaning,
        likely_causes=d.causes, confirm=tuple(confirm_commands(parsed.diagnosis, b)),
        fix=tuple(fix_commands(parsed.diagnosis, b)), break_glass=glass, configurations=b.configurations)


async def probe_verdicts(inventory: Inventory, name: str, *, concurrency: int = 64,
                         probe_fn: ProbeFn | None = None) -> tuple[WebhookStatus, ...]:
    """One probe round for the webhooks of that name: is it still failing, and with which reason?"""
    plans = [p for p in plan(inventory) if p.key.name == name]
    kwargs = {} if probe_fn is None else {"probe_fn": probe_fn}
    results = await probe_once(plans, concurrency=concurrency, **kwargs)
    return tuple(summarize(plans, results))


# -- People ------------------------------------------------------------------------------------------------
HEADLINES = {"denial": "Denied by webhook", "transport_failure": "Transport failure calling webhook",
             "unknown": "Not recognised"}


def _section(title: str, lines: Sequence[str], *, numbered: bool = False, commands: bool = False) -> list[str]:
    if not lines:
        return []
    out = ["", title]
    for i, line in enumerate(lines, 1):
        prefix = f"{i}. " if numbered else ("$ " if commands and not line.startswith("#") else "")
        out.append(f"  {prefix}{line}")
    return out


def to_text(e: Explanation) -> str:
    head = HEADLINES[e.kind] + (f' "{e.webhook}"' if e.webhook else "")
    lines = [head + (f" (reason {e.reason})" if e.reason else "")]
    if e.service:
        where = f"service {e.namespace}/{e.service}" + (f" port {e.port}" if e.port else "")
        lines.append(f"  backend: {where}" + (f", path {e.path}" if e.path else "")
                     + (f", timeout {e.timeout}" if e.timeout else ""))
    elif e.url:
        lines.append(f"  backend: url {e.url}")
    for key in e.configurations:
        lines.append(f"  configuration: {KIND_OF[key.type]} {key.configuration}")
    if e.cause:
        lines.append(f"  {'message' if e.kind == 'denial' else 'error'}: {e.cause}")
    lines += ["", "What it means", f"  {e.meaning}"]
    lines += _section("Likely causes, most likely first", e.likely_causes, numbered=True)
    lines += _section("Confirm", e.confirm, commands=True)
    lines += _section("Fix", e.fix, commands=True)
    lines += _section("Break glass (failurePolicy Fail: every matching request is refused until the backend is "
                      "back)", e.break_glass, commands=True)
    if e.verdicts:
        lines += ["", "Probe verdict now", *("  " + row for row in to_table(e.verdicts).splitlines())]
    return "\n".join(lines)


def to_json(e: Explanation) -> str:
    return json.dumps(asdict(e), indent=2)
