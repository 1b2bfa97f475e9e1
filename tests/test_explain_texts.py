"""`explain` on the texts people really paste: several errors at once, the apiserver's own log lines, the v1.34
ServiceIP allocator deadlock, wordings Go prints, configuration problems, and hostile input.

Texts marked "real" were printed by the v1.34 kube-apiserver of tests/controlplane (`test_explain_live.py`
reproduces them); the others are the wording in k8s.io/apiserver's source, cited where used.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import load_inventory
from exporter.explain import DIAGNOSES, MAX_ECHO_CHARS, explain, explain_all, to_json, to_text
from exporter.reasons import WORDINGS
from tests import factories as f

FIXTURES = Path(__file__).parent / "fixtures" / "audit"

CALL = ('Error from server (InternalError): error when creating "{file}": Internal error occurred: failed calling '
        'webhook "{name}": failed to call webhook: Post "https://{svc}.{ns}.svc:443/{path}?timeout=10s": {cause}')
DENIAL = ('Error from server (Forbidden): error when creating "{file}": admission webhook "{name}" denied the '
          'request: {message}')
REFUSED = CALL.format(file="a.yaml", name="mutate.kyverno.svc-fail", svc="kyverno-svc", ns="kyverno",
                      path="mutate/fail", cause="dial tcp 10.96.12.4:443: connect: connection refused")
DENIED = DENIAL.format(file="b.yaml", name="validation.gatekeeper.sh",
                       message="[psp-privileged] Privileged container is not allowed: nginx")
TIMED_OUT = CALL.format(file="c.yaml", name="validation.gatekeeper.sh", svc="gatekeeper-webhook-service",
                        ns="gatekeeper-system", path="v1/admit", cause="context deadline exceeded")
# real: a Service while a Fail webhook on ipaddresses is down (HTTP 500), and one with a fixed ClusterIP (422)
RANGE_FULL = ('Error from server (InternalError): error when creating "svc.yaml": Internal error occurred: failed to '
              'allocate a serviceIP: range is full')
FIXED_IP = ('The Service "fixed" is invalid: spec.clusterIPs: Invalid value: ["10.0.0.77"]: failed to allocate IP '
            '10.0.0.77: Internal error occurred: failed calling webhook "validate.netpol-guard.example.com": failed '
            'to call webhook: Post "https://netpol-guard-webhook.netpol-guard.svc:443/validate?timeout=5s": dial tcp '
            '10.96.7.7:443: connect: connection refused')
# real: the apiserver's log line (klog prefix included) for an Ignore webhook it could not call
FAILING_OPEN = ('W1201 16:00:11.122252   13286 dispatcher.go:205] Failed calling webhook, failing open '
                'ipam.example.com: failed calling webhook "ipam.example.com": failed to call webhook: Post '
                '"https://127.0.0.1:55617/validate?timeout=3s": dial tcp 127.0.0.1:55617: connect: connection refused')


# -- Several errors in one text --------------------------------------------------------------------------------
def test_a_transport_failure_followed_by_a_denial_is_two_errors_in_order() -> None:
    """Before: only the denial was reported, which hid the outage."""
    result = explain_all(f"{REFUSED}\ndeployment.apps/web created\n{DENIED}\n")
    assert result.count == 2
    assert [(e.kind, e.webhook, e.reason) for e in result.errors] == [
        ("transport_failure", "mutate.kyverno.svc-fail", "connection_refused"),
        ("denial", "validation.gatekeeper.sh", "")]
    assert result.errors[1].cause == "[psp-privileged] Privileged container is not allowed: nginx"
    assert result.errors[0].break_glass and not result.errors[1].break_glass


def test_two_transport_failures_keep_each_its_own_webhook_and_reason() -> None:
    """Before: the webhook name came from the first error and the reason from the second."""
    result = explain_all(REFUSED + "\n" + TIMED_OUT)
    assert [(e.webhook, e.service, e.reason) for e in result.errors] == [
        ("mutate.kyverno.svc-fail", "kyverno-svc", "connection_refused"),
        ("validation.gatekeeper.sh", "gatekeeper-webhook-service", "timeout")]


def test_errors_on_one_line_are_separate_and_repeats_are_counted() -> None:
    aggregate = f"[{DENIED.split(': ', 2)[2]}, {TIMED_OUT.split(': ', 2)[2]}]"
    result = explain_all("\n".join([aggregate, REFUSED, REFUSED, REFUSED]))
    assert result.count == 5
    assert [(e.webhook, e.occurrences) for e in result.errors] == [
        ("validation.gatekeeper.sh", 1), ("validation.gatekeeper.sh", 1), ("mutate.kyverno.svc-fail", 3)]
    assert result.errors[0].cause == "[psp-privileged] Privileged container is not allowed: nginx"
    assert "connection refused" not in result.errors[1].cause and result.errors[1].reason == "timeout"


def test_a_multi_line_denial_message_stays_one_message() -> None:
    kyverno = ('Error from server: error when creating "pod.yaml": admission webhook "validate.kyverno.svc-fail" '
               'denied the request: \n\nresource Pod/default/nginx was blocked due to the following policies\n\n'
               "disallow-latest-tag:\n  require-image-tag: 'validation error: An image tag is required.'\n")
    result = explain_all(kyverno + "pod/other created\n" + REFUSED)
    assert result.count == 2
    assert result.errors[0].cause.endswith("require-image-tag: 'validation error: An image tag is required.'")
    assert "pod/other created" not in result.errors[0].cause


async def test_exit_status_and_json_say_how_many(tmp_path: Path) -> None:
    from tests.test_audit import run_cli

    code, out, _ = await run_cli("explain", "--output", "json", f"{REFUSED}\n{DENIED}\n{REFUSED}")
    doc = json.loads(out)
    assert (code, doc["count"], doc["distinct"], len(doc["errors"])) == (3, 3, 2, 2)
    code, out, _ = await run_cli("explain", DENIED)
    assert code == 1 and out.startswith('Denied by webhook "validation.gatekeeper.sh"')
    code, out, _ = await run_cli("explain", REFUSED + "\n" + DENIED)
    assert code == 2 and out.startswith("2 admission webhook errors in the input, each explained below in order.")
    code, out, _ = await run_cli("explain", "--output", "json", "The connection to the server was refused")
    doc = json.loads(out)
    assert (code, doc["count"], doc["errors"], doc["unrecognised"]["kind"]) == (0, 0, [], "unknown")


# -- The v1.34 IPAddress deadlock -----------------------------------------------------------------------------
def test_range_is_full_is_the_ipaddress_deadlock() -> None:
    """Before: "Not recognised"."""
    e = explain(RANGE_FULL)
    assert (e.kind, e.reason) == ("allocation_failure", "")
    assert "IPAddress" in e.meaning and "ipaddresses" in e.meaning and "deadlock" in e.meaning
    assert any("ipaddresses|servicecidrs" in c for c in e.confirm)
    assert e.break_glass and e.change[-1].startswith("    expression:")  # the matchCondition that ends it


def test_with_manifests_the_blocking_fail_webhooks_are_named_with_their_break_glass() -> None:
    inventory = load_inventory([str(FIXTURES / "servicecidr-no-exclusion.yaml"), str(FIXTURES / "cycle.yaml"),
                                str(FIXTURES / "gatekeeper-ignore.yaml")])
    e = explain(RANGE_FULL, inventory)
    assert [(k.configuration, k.name) for k in e.configurations] == [
        ("netpol-guard", "validate.netpol-guard.example.com")]
    assert ("kubectl patch validatingwebhookconfiguration netpol-guard --type=strategic -p '{\"webhooks\":[{\"name\":"
            "\"validate.netpol-guard.example.com\",\"failurePolicy\":\"Ignore\"}]}'") in e.break_glass
    quiet = explain(RANGE_FULL, load_inventory([str(FIXTURES / "servicecidr-excluded.yaml")]))
    assert quiet.configurations == () and "the range may really be full" in quiet.notes[0]


def test_a_fixed_cluster_ip_names_the_webhook_and_the_deadlock() -> None:
    e = explain(FIXED_IP, load_inventory([str(FIXTURES / "servicecidr-no-exclusion.yaml")]))
    assert (e.kind, e.webhook, e.reason, e.allocating) == (
        "transport_failure", "validate.netpol-guard.example.com", "connection_refused", "10.0.0.77")
    assert e.meaning.startswith("Allocating ClusterIP 10.0.0.77") and "deadlock" in e.likely_causes[0]
    assert e.break_glass and e.change
    assert to_text(e).startswith('Transport failure calling webhook "validate.netpol-guard.example.com" (reason '
                                 'connection_refused) while allocating ClusterIP 10.0.0.77')


# -- Wording Go really prints ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("cause", "reason", "diagnosis"), [
    # before: "Not recognised"
    ("http: server gave HTTP response to HTTPS client", "tls_handshake", "plain_http"),
    # before: reason "" alone, and the generic http_error advice behind client-go's prefix
    ("expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got /, Kind=", "http_error",
     "review_mismatch"),
    ("received invalid webhook response: expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, "
     "got /, Kind=", "http_error", "review_mismatch"),
    # before: "The apiserver has no network path to the endpoint.", then the TLS handshake's meaning
    ("read tcp 10.0.0.3:52814->10.244.1.7:8443: read: connection reset by peer", "tls_handshake",
     "connection_reset"),
])
def test_wordings_go_prints_are_recognised(cause: str, reason: str, diagnosis: str) -> None:
    e = explain(CALL.format(file="x.yaml", name="h.example.com", svc="hook", ns="team", path="v", cause=cause))
    assert (e.kind, e.reason, e.meaning) == ("transport_failure", reason, DIAGNOSES[diagnosis].meaning)
    assert "no network path" not in e.meaning


# -- The fail-open log line --------------------------------------------------------------------------------
def test_the_fail_open_log_line_is_an_ignore_webhook_without_break_glass() -> None:
    """Before: it got the Fail-policy break-glass advice."""
    e = explain(FAILING_OPEN)
    assert (e.kind, e.webhook, e.failure_policy, e.reason) == (
        "transport_failure", "ipam.example.com", "Ignore", "connection_refused")
    assert e.break_glass == () and "admitted the request without it" in e.meaning
    closed = explain(FAILING_OPEN.replace("failing open", "failing closed"))
    assert closed.failure_policy == "Fail" and closed.break_glass


# -- does not support dry run ---------------------------------------------------------------------------------
DRY_RUN = 'Error from server (BadRequest): admission webhook "audit.example.com" does not support dry run'


def test_dry_run_is_a_configuration_problem_and_yaml_is_not_a_command() -> None:
    """k8s.io/apiserver errors/statuserror.go NewDryRunUnsupportedErr. Before: "Denied by webhook", and
    `$ sideEffects: None` printed as a shell command."""
    e = explain(DRY_RUN)
    text = to_text(e)
    assert text.startswith('Configuration problem of webhook "audit.example.com"') and "Denied" not in text
    assert "sideEffects" in e.meaning
    assert "$ sideEffects" not in text and "  sideEffects: NoneOnDryRun" in text
    assert not [line for line in e.fix if line.startswith("sideEffects")]


# -- The URL --------------------------------------------------------------------------------------------------
def test_the_timeout_the_apiserver_appends_is_not_the_configured_url() -> None:
    e = explain('Internal error occurred: failed calling webhook "h.example.com": failed to call webhook: Post '
                '"https://hooks.example.com:8443/check?timeout=5s": dial tcp 10.1.1.1:8443: i/o timeout')
    assert (e.url, e.timeout) == ("https://hooks.example.com:8443/check", "5s")
    assert "backend: url https://hooks.example.com:8443/check, timeout 5s" in to_text(e)


def test_ipv6_url_backends_are_bracketed_in_commands() -> None:
    refused = explain('Internal error occurred: failed calling webhook "h.example.com": failed to call webhook: '
                      'Post "https://[fd00::7]:8443/check?timeout=5s": dial tcp [fd00::7]:8443: connect: connection '
                      'refused')
    assert "curl -sv --globoff --max-time 10 'https://[fd00::7]:8443/check'  # from a control-plane host" in \
        refused.confirm
    untrusted = explain('Internal error occurred: failed calling webhook "h.example.com": failed to call webhook: '
                        'Post "https://[fd00::7]:8443/check?timeout=5s": tls: failed to verify certificate: x509: '
                        'certificate signed by unknown authority')
    assert any("openssl s_client -connect [fd00::7]:8443 -servername fd00::7" in c for c in untrusted.confirm)


# -- Fix advice follows the webhook's own provenance -------------------------------------------------------------
UNKNOWN_CA = ("tls: failed to verify certificate: x509: certificate signed by unknown authority")


def _config(name: str, webhook: str, svc: str, ns: str, **metadata: Any) -> dict[str, Any]:
    config = f.configuration(name, f.webhook(webhook, f.service_client(ns, svc, "")))
    config["metadata"].update(metadata)
    return config


@pytest.mark.parametrize(("config", "first", "evidence", "second"), [
    (_config("gatekeeper-validating-webhook-configuration", "validation.gatekeeper.sh", "gatekeeper-webhook-service",
             "gatekeeper-system", labels={"gatekeeper.sh/system": "yes"}),
     "# Gatekeeper's certificate rotator manages this webhook", "label gatekeeper.sh/system=yes",
     "kubectl -n gatekeeper-system rollout restart deployment gatekeeper-controller-manager"),
    (_config("kyverno-resource-validating-webhook-cfg", "validate.kyverno.svc-fail", "kyverno-svc", "kyverno",
             labels={"webhook.kyverno.io/managed-by": "kyverno"}),
     "# Kyverno's admission controller manages this webhook", "label webhook.kyverno.io/managed-by=kyverno",
     "kubectl -n kyverno rollout restart deployment kyverno-admission-controller"),
    (_config("cert-manager-webhook", "webhook.cert-manager.io", "cert-manager-webhook", "cert-manager",
             annotations={"cert-manager.io/inject-ca-from-secret": "cert-manager/cert-manager-webhook-ca"}),
     "# cert-manager's cainjector manages this webhook", "annotation cert-manager.io/inject-ca-from-secret",
     "kubectl get deployments -A -l app.kubernetes.io/component=cainjector"),
    (_config("acme-policy", "check.acme.example.com", "policy", "acme"),
     "# find what injects caBundle", "", "kubectl patch "),
])
def test_x509_fix_follows_the_configuration_s_provenance(tmp_path: Path, config: dict[str, Any], first: str,
                                                         evidence: str, second: str) -> None:
    """Before: every x509 unknown-authority fix started by restarting cert-manager's cainjector, gatekeeper's too."""
    path = tmp_path / "hooks.yaml"
    path.write_text(yaml.safe_dump(config))
    hook = config["webhooks"][0]
    svc = hook["clientConfig"]["service"]
    text = CALL.format(file="x.yaml", name=hook["name"], svc=svc["name"], ns=svc["namespace"], path="v",
                       cause=UNKNOWN_CA)
    e = explain(text, load_inventory([str(path)]))
    assert e.fix[0].startswith(first) and evidence in e.fix[0], e.fix
    assert e.fix[1].startswith(second), e.fix
    assert "cainjector" not in "\n".join(e.fix) or "cert-manager" in first
    # From the text alone: the webhook's name and namespace are evidence too, but no annotation is seen, so
    # nothing says cert-manager's cainjector injects it.
    alone = explain(text)
    assert "cainjector" not in "\n".join(alone.fix)
    assert alone.fix[0].startswith(first if "cert-manager" not in first else "# find what injects caBundle")


# -- Input ----------------------------------------------------------------------------------------------------
def test_input_is_bounded_and_terminal_escapes_are_neutralised() -> None:
    hostile = DENIAL.format(file="x.yaml", name="v.example.com", message="\x1b[2J\x1b]0;pwned\x07" + "A" * 50_000
                            + "\u202e")
    e = explain(hostile)
    assert "\x1b" not in to_text(e) and "\\x1b[2J" in e.cause and "\x07" not in e.cause
    assert len(e.cause) < MAX_ECHO_CHARS + 100 and e.cause.endswith("more characters]")
    huge = explain_all(REFUSED + "\n" + "x" * (20 << 20))
    assert huge.truncated and len(to_text(huge)) < 20_000 and len(to_json(huge)) < 40_000
    many = explain_all("\n".join(CALL.format(file=f"{i}.yaml", name=f"h{i}.example.com", svc="s", ns="n", path="v",
                                             cause="context deadline exceeded") for i in range(500)))
    assert many.count == 500 and len(many.errors) == 50 and many.omitted == 450


def test_a_pasted_text_cannot_put_a_command_in_the_advice() -> None:
    evil = ('admission webhook "ok.example.com" denied the request: failed calling webhook "x\'; rm -rf ~; echo \'": '
            'failed to call webhook: Post "https://a.b.svc:443/$(reboot)?timeout=1s": connection refused')
    for e in explain_all(evil).errors:
        assert "rm -rf" not in "\n".join(e.confirm + e.fix + e.break_glass)
    url = explain('Internal error occurred: failed calling webhook "h.example.com": failed to call webhook: Post '
                  '"https://hooks.example.com:8443/$(reboot)?timeout=5s": dial tcp 1.2.3.4:8443: connect: no route '
                  'to host')
    assert "'https://hooks.example.com:8443/$(reboot)'" in "\n".join(url.confirm)


def _sample(cause: str) -> str:
    return re.sub(r"\.\.\.", "x", cause)


COMMAND_WORDS = ("kubectl ", "openssl ", "curl ", "cmctl ", "ref=$(")


@pytest.mark.parametrize("inventory", [False, True], ids=["text only", "with manifests"])
def test_every_printed_command_runs_as_printed(inventory: bool) -> None:
    """Every `$` line of every diagnosis is a command (no YAML, no `<placeholder>` the shell reads as a
    redirection); what needs filling in is a `#` comment."""
    inv = load_inventory([str(FIXTURES / "policy-engine-all-resources.yaml")]) if inventory else None
    texts = [CALL.format(file="x.yaml", name="validate.kyverno.svc-fail", svc="kyverno-svc", ns="kyverno",
                         path="validate/fail", cause=_sample(w.example)) for w in WORDINGS]
    texts += [DRY_RUN, DENIED, RANGE_FULL, FIXED_IP, FAILING_OPEN]
    for text in texts:
        for line in to_text(explain(text, inv)).splitlines():
            if line.startswith("  $ "):
                command = line[4:]
                assert command.startswith(COMMAND_WORDS), command
                assert not re.search(r"(?<![<'\"])<[a-z][^>]*>", command.split("  # ")[0]), command


async def test_manifests_without_the_named_webhook_say_so(tmp_path: Path) -> None:
    """Before: the commands silently fell back to placeholders."""
    from tests.test_audit import run_cli

    path = tmp_path / "hooks.yaml"
    path.write_text(yaml.safe_dump(_config("other", "other.example.com", "svc", "ns")))
    _, out, _ = await run_cli("explain", "--manifests", str(path), "--output", "json", REFUSED)
    (e,) = json.loads(out)["errors"]
    assert e["notes"] == [f"webhook 'mutate.kyverno.svc-fail' is not in --manifests {path} (1 webhooks there): the "
                          "commands below find its configuration first"]
    assert e["configurations"] == [] and e["break_glass"][0].startswith("ref=$(kubectl get ")


# -- Piping into head -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("command", "code"), [
    (["explain", REFUSED + "\n" + DENIED], 141),
    (["audit", "--manifests", str(FIXTURES / "policy-engine-all-resources.yaml"), "--fail-on", "never"], 141),
    (["check", "--manifests", str(FIXTURES / "cert-manager.yaml")], 141),
    (["--help"], 0),  # argparse ignores a failed write of its help
], ids=["explain", "audit", "check", "help"])
async def test_a_reader_that_goes_away_ends_the_command_quietly(command: list[str], code: int) -> None:
    """Before: `... | head -n1` printed a BrokenPipeError traceback. The reader here is gone before the command
    writes (as `head` is once it has its line, whatever the command's output size and speed)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "exporter", *command, stdout=write,
                                                    stderr=asyncio.subprocess.PIPE)
    finally:
        os.close(write)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert proc.returncode == code, err.decode()  # 141: as a process SIGPIPE killed
