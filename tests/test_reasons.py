"""The one wording table (exporter/reasons.py): every row recognised as itself, every diagnosis explained, the
docs' wordings recognised as the reason they are listed under, and what unifying the table changed."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from exporter import reasons
from exporter.explain import DIAGNOSES, explain
from exporter.reasons import WORDINGS, Reason, Wording, examples, recognise

DOC = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
SAMPLES = {"address": "10.96.0.10:443", "status": "503", "code": "503", "limit": "1048576", "host": "hook.ns.svc"}


def sample(w: Wording) -> str:
    """The row's words with each field filled in, as a real error would carry them."""
    fields = {name for _, name, _, _ in string.Formatter().parse(w.says) if name}
    return w.format(**{name: SAMPLES.get(name, "x") for name in fields})


@pytest.mark.parametrize("w", WORDINGS, ids=[w.says[:48] for w in WORDINGS])
def test_every_row_is_recognised_as_its_reason_and_diagnosis(w: Wording) -> None:
    found = recognise(sample(w))
    assert found is not None and (found.reason, found.diagnosis) == (w.reason, w.diagnosis), sample(w)


def test_every_diagnosis_is_explained() -> None:
    assert {w.diagnosis for w in WORDINGS} <= DIAGNOSES.keys()


def test_every_reason_has_apiserver_words() -> None:
    assert {r for r in Reason if examples(r)} == set(Reason)
    assert examples(Reason.NO_ENDPOINTS) == ('no endpoints available for service "..."',)


def test_docs_wordings_are_recognised_as_the_reason_they_are_listed_under() -> None:
    section = DOC.split("Failure `reason` values")[1].split("## ")[0]
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| (.*) \|$", section, re.M)
    checked = 0
    for reason, words in rows:
        for quoted in re.findall(r"`([^`]+)`", words):
            found = recognise(quoted)
            assert found is not None and found.reason == reason, (reason, quoted)
            checked += 1
    assert checked >= 12


@pytest.mark.parametrize(("cause", "diagnosis", "reason"), [
    # A reset has its own diagnosis: a path exists and the peer hung up (explain said "no network path", then
    # "the TLS handshake failed"); the probe's reason for it stays tls_handshake.
    ("read tcp 10.0.0.3:52814->10.244.1.7:8443: read: connection reset by peer", "connection_reset",
     "tls_handshake"),
    # Go's net/http for a plain-HTTP port, and the apiserver's check of the AdmissionReview it got back (neither
    # was known: "Not recognised" / reason "").
    ("http: server gave HTTP response to HTTPS client", "plain_http", "tls_handshake"),
    ("received invalid webhook response: expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, "
     "got admission.k8s.io/v1beta1, Kind=AdmissionReview", "review_mismatch", "http_error"),
    ("remote error: tls: certificate required", "client_auth_required", "client_auth_required"),
    # Go's errno words are lower-case, and any failed lookup is DNS, whatever the resolver said.
    ("dial tcp 10.244.1.7:8443: connect: cannot assign requested address", "unreachable", "unreachable"),
    ("dial tcp: lookup hooks.example.com: Temporary failure in name resolution", "dns", "dns"),
    # Go's HostnameError for an IP the certificate has no IP SAN for (explain used not to know it).
    ("tls: failed to verify certificate: x509: cannot validate certificate for 10.96.0.10 because it doesn't "
     "contain any IP SANs", "x509_hostname_mismatch", "x509_hostname_mismatch"),
    # client-go's words for a backend's 503 are the backend's answer, not the egress tunnel's "code 503".
    ("the server responded with the status code 503 but did not return more information", "http_error",
     "http_error"),
    # Unchanged: the first row wins, so a dial timeout is not any timeout, and a tunnel's pipe is not the backend.
    ("dial tcp 10.96.33.12:443: i/o timeout", "dial_timeout", "timeout"),
    ("write tcp 10.0.0.12:48526->10.0.0.40:8132: write: broken pipe", "tunnel", "unreachable"),
    ("tls: failed to verify certificate: x509: certificate signed by unknown authority", "x509_unknown_authority",
     "x509_unknown_authority"),
])
def test_explain_classifies_causes_with_the_table(cause: str, diagnosis: str, reason: str) -> None:
    text = f'Internal error occurred: failed calling webhook "h.example.com": failed to call webhook: Post ' \
           f'"https://hook.ns.svc:443/v?timeout=10s": {cause}'
    e = explain(text)
    assert (e.kind, e.reason, e.meaning) == ("transport_failure", reason, DIAGNOSES[diagnosis].meaning)


def test_the_probe_writes_the_table_s_words() -> None:
    assert reasons.REFUSED.format(address="127.0.0.1:1") == "dial tcp 127.0.0.1:1: connect: connection refused"
    assert reasons.NOT_YET_VALID.example == (
        "x509: certificate has expired or is not yet valid: current time ... is before ...")
