"""Flags and errors as an operator meets them: every numeric flag bounded, usage errors apart from bugs, and
addresses printed the way the flag takes them back (IPv6 in brackets)."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
from pathlib import Path

import pytest
import yaml

from exporter import cli, targets
from exporter.cli import Bounded, build_parser, main
from tests import factories as f
from tests.cli import EXE, listening

# Values no numeric flag may take: non-finite, zero, negative, absurdly small or huge, not a number at all.
REFUSED = ["inf", "-inf", "Infinity", "nan", "0", "-1", "1e-9", "0.0001", "1e400", "1e12", "99999999", "abc", "",
           "1,5"]


def numeric_flags() -> list[tuple[str, str, Bounded]]:
    """(command, flag, its type) for every flag of every command that takes a value through a `type`.

    Read from the parser itself, so a flag added later is covered without editing this test.
    """
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = []
    for command, p in sub.choices.items():
        for action in p._actions:  # argparse has no public listing of a parser's actions
            number_default = isinstance(action.default, (int, float)) and not isinstance(action.default, bool)
            if (action.type is None or action.type is cli.namespace_name) and not number_default:
                continue  # not a number (a namespace name has its own test, tests/test_audit_exporter.py)
            # Every typed flag is a Bounded number: a plain float/int (or any other callable) would accept
            # inf/nan or name itself in its error message.
            assert isinstance(action.type, Bounded), (command, action.option_strings, action.type)
            found.append((command, action.option_strings[0], action.type))
    return found


def test_the_numeric_flags_are_found() -> None:
    flags = {(c, flag) for c, flag, _ in numeric_flags()}
    assert {("serve", "--probe-interval"), ("serve", "--probe-concurrency"), ("check", "--probe-concurrency"),
            ("explain", "--probe-concurrency"), ("demo", "--probe-interval"), ("demo", "--probe-concurrency"),
            ("demo", "--duration")} <= flags


@pytest.mark.parametrize("value", REFUSED)
def test_every_numeric_flag_refuses_non_finite_zero_negative_tiny_and_huge_values(value: str) -> None:
    """`--probe-interval inf` was a probe storm (~2,000 probes/s against one backend); `--duration -1` and
    `--duration 0` were taken (0 silently meant forever)."""
    for command, flag, kind in numeric_flags():
        with pytest.raises(cli.UsageError) as refused:
            build_parser().parse_args([command, f"{flag}={value}"])
        message = str(refused.value)
        assert message == (f"argument {flag}: expected {'a number of seconds' if kind.unit else 'a whole number'} "
                           f"from {kind.low:g} to {kind.high:g}, got {value!r}{kind.hint}"), (command, message)


def test_boundaries_are_accepted_as_given_never_clamped() -> None:
    for command, flag, kind in numeric_flags():
        dest = flag.lstrip("-").replace("-", "_")
        for value in (kind.low, kind.high, (kind.low + kind.high) // 2):
            args = build_parser().parse_args([command, f"{flag}={value:g}"])
            assert getattr(args, dest) == value, (command, flag, value)
            assert type(getattr(args, dest)) is kind.kind


def test_flag_errors_go_out_as_one_line_that_names_no_function(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse prints `invalid <type function's name> value` when a type raises ValueError: it said
    `invalid _positive_int value: 'abc'`."""
    for argv in (["check", "--probe-concurrency", "abc"], ["serve", "--probe-interval", "soon"],
                 ["demo", "--duration", "1.5.2"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("admission-webhook-exporter: error: argument --"), err
        assert "invalid" not in err and "_" not in err.split(": ", 2)[2], err


def test_demo_duration_says_what_leaving_it_out_means(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["demo"]).duration is None
    assert main(["demo", "--duration", "0"]) == 2
    assert capsys.readouterr().err == ("admission-webhook-exporter: error: argument --duration: expected a number of "
                                       "seconds from 1 to 86400, got '0' (leave --duration out to run until "
                                       "interrupted)\n")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    assert "(default: run until interrupted)" in " ".join(capsys.readouterr().out.split())


def test_a_bug_is_reported_as_a_bug_not_as_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A ValueError from anywhere used to print `error: <message>` and exit 2, as if the operator had typed
    something wrong. Here a bug is injected (no real part can be made to have one on purpose)."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump(f.configuration("c", f.webhook("w.example.com", {"url": "https://x.test"}))))

    def broken(*_: object, **__: object) -> object:
        raise ValueError("math domain error")

    monkeypatch.setattr(targets, "plan", broken)  # what `check` plans with
    assert main(["check", "--manifests", str(manifest)]) == cli.EXIT_INTERNAL == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1] == ("admission-webhook-exporter: internal error: ValueError: math domain error "
                                    "(a bug: please report it with the traceback above)")


def test_real_usage_errors_still_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What used to reach the blanket `except ValueError` legitimately still reads as a usage error."""
    for argv, message in [
        (["serve", "--manifests", str(tmp_path), "--listen-address", "nonsense"],
         "--listen-address 'nonsense': expected [host]:port"),
        (["serve", "--manifests", str(tmp_path), "--listen-address", "127.0.0.1:99999"],
         "--listen-address '127.0.0.1:99999': expected [host]:port"),
        # its wording is the kubeconfig loader's; here only that it stays a usage error
        (["check", "--kubeconfig", str(tmp_path / "none")], "admission-webhook-exporter: error: "),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


async def test_explain_refuses_stdin_that_is_not_text() -> None:
    proc = await asyncio.create_subprocess_exec(
        *EXE, "explain", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    _out, err = await asyncio.wait_for(proc.communicate(b"failed calling webhook \xff\xfe\n"), 60)
    assert proc.returncode == 2, err
    assert err.decode() == "admission-webhook-exporter: error: stdin is not utf-8 text (invalid start byte)\n"


def test_cannot_listen_names_the_address_as_the_flag_takes_it(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # fd00::/8 is unique-local and not on this machine: bind fails with EADDRNOTAVAIL, nothing is dialled.
    assert main(["serve", "--manifests", str(tmp_path), "--listen-address", "[fd00::dead]:10047"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == ("admission-webhook-exporter: error: cannot listen on [fd00::dead]:10047: "
                                    "Cannot assign requested address"), err


async def _listening_line(*argv: str) -> str:
    """Start the exporter, return its `listening` log line, stop it with SIGTERM."""
    async with listening(*argv) as (proc, line):
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        return line


async def test_listen_addresses_are_logged_as_the_flag_takes_them(tmp_path: Path) -> None:
    """It logged `address=::1:PORT` (ambiguous: not an address anyone can paste back) and `0.0.0.0:PORT` for
    every interface, IPv6 ones included."""
    line = await _listening_line("serve", "--manifests", str(tmp_path), "--listen-address", "[::1]:0")
    assert re.search(r" address=\[::1\]:\d+ ", line), line
    line = await _listening_line("serve", "--manifests", str(tmp_path), "--listen-address", "127.0.0.1:0")
    assert re.search(r" address=127\.0\.0\.1:\d+ ", line), line
    line = await _listening_line("serve", "--manifests", str(tmp_path), "--listen-address", ":0")
    assert re.search(r" address=:\d+ ", line), line


async def test_demo_prints_bracketed_ipv6_urls() -> None:
    proc = await asyncio.create_subprocess_exec(*EXE, "demo", "--listen-address", "[::1]:0", "--duration", "1",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    assert re.search(r"^Metrics: +http://\[::1\]:\d+/metrics$", out.decode(), re.M), out.decode()
    assert re.search(r" address=\[::1\]:\d+ ", err.decode()), err.decode()
