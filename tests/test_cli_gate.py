"""`check` and `audit` as pipeline gates: a gate that checked nothing, or not everything, fails; what was
skipped is named (the webhook, not its whole configuration) and counted per object; the table says which
certificate's expiry it shows."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from exporter.cli import load_inventory, main
from exporter.pki import CertificateAuthority
from tests import factories as f
from tests.cli import listening, ok_and_bad_webhook, run, write
from tests.conftest import Servers
from tests.helpers import inventory_of

Capture = pytest.CaptureFixture[str]
INVALID_OBJECTS = "admission_webhook_exporter_inventory_invalid_objects"


def run_here(capsys: Capture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def every_webhook_invalid() -> dict[str, Any]:
    return f.configuration(
        "cfg",
        f.webhook("no-client.example.com", {}),
        f.webhook("slow.example.com", {"url": "https://127.0.0.1:1/"}, timeout=99),
        {"clientConfig": {"url": "https://127.0.0.1:1/"}},  # no name at all
    )


@pytest.fixture
def nothing_to_check(tmp_path: Path) -> dict[str, Path]:
    """The inputs on which both gates used to pass: an empty folder, a folder with no manifest file, a file
    with only non-webhook objects, and a file whose every webhook is invalid."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "no-manifests").mkdir()
    (tmp_path / "no-manifests" / "README.txt").write_text("kind: ValidatingWebhookConfiguration\n")
    return {
        "empty folder": tmp_path / "empty",
        "folder without manifests": tmp_path / "no-manifests",
        "no webhook configuration": write(tmp_path / "svc.yaml", f.service("ns", "svc", [{"port": 443}])),
        "every webhook invalid": write(tmp_path / "invalid.yaml", every_webhook_invalid()),
    }


@pytest.mark.parametrize("command", ["check", "audit"])
def test_a_gate_that_checked_nothing_fails(command: str, nothing_to_check: dict[str, Path], capsys: Capture) -> None:
    for case, path in nothing_to_check.items():
        code, out, err = run_here(capsys, command, "--manifests", str(path), "--output", "json")
        assert code == 1, (case, out, err)
        doc = json.loads(out)
        assert doc["gate"]["passed"] is False, case
        assert doc["gate"]["failures"][0] == (f"nothing to check: no usable webhook in --manifests {path} "
                                              "(pass --allow-empty when that is expected)"), case
        assert f"admission-webhook-exporter: gate failed: {doc['gate']['failures'][0]}" in err.splitlines(), case


@pytest.mark.parametrize("command", ["check", "audit"])
def test_allow_empty_passes_an_expected_empty_inventory_but_not_skipped_objects(
        command: str, nothing_to_check: dict[str, Path], capsys: Capture) -> None:
    for case in ("empty folder", "folder without manifests", "no webhook configuration"):
        code, out, err = run_here(capsys, command, "--manifests", str(nothing_to_check[case]), "--allow-empty",
                                   "--output", "json")
        assert (code, err) == (0, ""), case
        assert json.loads(out)["gate"] == {"passed": True, "failures": []}
    # Every webhook invalid is not "empty as expected": what was skipped was not checked.
    code, out, _ = run_here(capsys, command, "--manifests", str(nothing_to_check["every webhook invalid"]),
                             "--allow-empty", "--output", "json")
    assert code == 1
    assert json.loads(out)["gate"]["failures"] == [
        "1 object skipped as malformed, in whole or in part: what was skipped was not checked"]


def test_audit_fail_on_never_still_fails_on_nothing_audited(nothing_to_check: dict[str, Path],
                                                            capsys: Capture) -> None:
    code, _, err = run_here(capsys, "audit", "--manifests", str(nothing_to_check["empty folder"]), "--fail-on", "never")
    assert code == 1 and "gate failed: nothing to check" in err


async def test_skipped_objects_fail_the_gate_and_are_listed_in_json(tmp_path: Path, servers: Servers,
                                                                     ca: CertificateAuthority, loopback_cert) -> None:
    ok = await servers.backend(loopback_cert)
    path = write(tmp_path / "m.yaml", ok_and_bad_webhook(ok.port, ca.ca_bundle))
    for command in ("check", "audit"):
        code, out, err = await run(command, "--manifests", str(path), "--output", "json")
        assert code == 1, (command, err)
        doc = json.loads(out)
        assert doc["skipped"] == [{
            "source": str(path), "kind": "ValidatingWebhookConfiguration", "name": "cfg",
            "reason": "webhook 'bad.example.com': timeoutSeconds 99 is outside 1-30",
            "webhooks": [{"name": "bad.example.com", "index": 1, "reason": "timeoutSeconds 99 is outside 1-30"}],
        }], command
        # audit adds its findings' verdict after it
        assert doc["gate"]["failures"][0] == \
            "1 object skipped as malformed, in whole or in part: what was skipped was not checked", command
    # The valid one was still probed, and alone it passes.
    good = write(tmp_path / "good.yaml", f.configuration(
        "cfg", f.webhook("ok.example.com", f.url_client(ok.port, ca.ca_bundle))))
    code, out, err = await run("check", "--manifests", str(good), "--output", "json")
    assert (code, err) == (0, "")
    assert json.loads(out)["gate"] == {"passed": True, "failures": []}


async def test_check_gate_lists_the_unhealthy_fail_webhooks(tmp_path: Path, ca: CertificateAuthority) -> None:
    from tests.servers import free_port

    dead = await free_port()
    path = write(tmp_path / "m.yaml", f.configuration(
        "cfg", f.webhook("dead.example.com", f.url_client(dead, ca.ca_bundle))))
    code, out, _ = await run("check", "--manifests", str(path), "--output", "json")
    assert code == 1
    assert json.loads(out)["gate"]["failures"] == [
        "cfg/dead.example.com (validating): failurePolicy Fail and down (connection_refused)"]


def test_skip_messages_name_the_webhook_not_the_whole_configuration(tmp_path: Path, capsys: Capture) -> None:
    """It said `skipped ValidatingWebhookConfiguration cfg in m.yaml: ...` for one bad webhook, as if the whole
    configuration had been dropped."""
    path = write(tmp_path / "m.yaml", every_webhook_invalid(),
                 f.configuration("other", f.webhook("ok.example.com", {"url": "https://127.0.0.1:1/"}),
                                 kind="MutatingWebhookConfiguration"),
                 {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "ns"}})
    code, _, err = run_here(capsys, "audit", "--manifests", str(path))
    assert code == 1
    assert err.splitlines() == [
        f"skipped Service in {path}: metadata.name is required",
        f"skipped webhook 'no-client.example.com' of ValidatingWebhookConfiguration cfg in {path}: "
        "clientConfig needs exactly one of url or service",
        f"skipped webhook 'slow.example.com' of ValidatingWebhookConfiguration cfg in {path}: "
        "timeoutSeconds 99 is outside 1-30",
        f"skipped webhooks[2] of ValidatingWebhookConfiguration cfg in {path}: name is required",
        "admission-webhook-exporter: gate failed: 2 objects skipped as malformed, in whole or in part: what was "
        "skipped was not checked",
    ]


def test_a_configuration_with_several_skipped_webhooks_is_one_invalid_object() -> None:
    """The metric is documented as objects; it counted each skipped webhook as one."""
    inventory = inventory_of(every_webhook_invalid(), f.configuration(
        "mixed", f.webhook("ok.example.com", {"url": "https://a.example.com"}),
        f.webhook("bad.example.com", {"url": "https://a.example.com"}, failurePolicy="Sometimes")))
    assert [(bad.name, [w.name for w in bad.webhooks]) for bad in inventory.invalid] == [
        ("cfg", ["no-client.example.com", "slow.example.com", ""]), ("mixed", ["bad.example.com"])]
    assert [w.key.name for w in inventory.webhooks] == ["ok.example.com"]


async def test_invalid_objects_metric_counts_objects(tmp_path: Path) -> None:
    """Through `serve` and /metrics, as Prometheus reads it: one configuration with three skipped webhooks."""
    path = write(tmp_path / "m.yaml", every_webhook_invalid())
    async with listening("serve", "--manifests", str(path), "--listen-address", "127.0.0.1:0") as (_, line):
        m = re.search(r"event=listening address=127\.0\.0\.1:(\d+)", line)
        assert m, line
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{m.group(1)}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
            text = await r.text()
        assert re.search(rf"^{INVALID_OBJECTS} 1\.0$", text, re.M), [
            line for line in text.splitlines() if INVALID_OBJECTS in line]


def test_a_configuration_defined_twice_is_used_whole_from_its_last_definition(tmp_path: Path) -> None:
    """Two definitions were merged webhook by webhook (one from each) and reported once per webhook."""
    first = write(tmp_path / "a.yaml", f.configuration(
        "cfg", f.webhook("one.example.com", {"url": "https://old.example.com"}),
        f.webhook("two.example.com", {"url": "https://old.example.com"})))
    second = write(tmp_path / "b.yaml", f.configuration(
        "cfg", f.webhook("one.example.com", {"url": "https://new.example.com"})))
    inventory = load_inventory([str(first), str(second)])
    assert [(w.key.name, w.url) for w in inventory.webhooks] == [("one.example.com", "https://new.example.com")]
    assert [(bad.source, bad.name, bad.reason) for bad in inventory.invalid] == [
        (str(first), "cfg", f"defined again in {second}; the later definition is used")]


async def test_check_shows_served_certificate_and_ca_bundle_expiry_apart(tmp_path: Path, servers: Servers) -> None:
    """CERT DAYS was the earlier of the served certificate and the caBundle, and did not say so: a CA expiring in
    20 days showed as the serving certificate's problem."""
    now = dt.datetime.now(dt.UTC)
    ca = CertificateAuthority.create("short-lived CA", valid_until=now + dt.timedelta(days=20, hours=1))
    backend = await servers.backend(ca.issue(["127.0.0.1"], valid_until=now + dt.timedelta(days=300, hours=1)))
    path = write(tmp_path / "m.yaml", f.configuration(
        "cfg", f.webhook("w.example.com", f.url_client(backend.port, ca.ca_bundle))))
    code, out, err = await run("check", "--manifests", str(path))
    assert code == 0, err
    header, row = out.splitlines()[:2]
    assert re.split(r"\s{2,}", header) == ["WEBHOOK", "TYPE", "POLICY", "ENDPOINTS", "VERDICT", "REASON",
                                           "SERVED CERT DAYS", "CABUNDLE DAYS", "LATENCY/TIMEOUT"]
    assert re.split(r"\s{2,}", row)[6:8] == ["300", "20"]
    code, out, _ = await run("check", "--manifests", str(path), "--output", "json")
    (hook,) = json.loads(out)["webhooks"]
    assert (hook["served_cert_days_left"], hook["ca_bundle_days_left"]) == (300, 20)
    assert hook["endpoints"][0]["served_cert_days_left"] == 300
    assert "cert_days_left" not in hook
