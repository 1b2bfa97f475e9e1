"""A pytest plugin: every async test on uvloop, the event loop `serve` runs on (exporter.cli). Used by
tests/test_uvloop.py, which runs the probe's tests again with `-p tests.uvloop_loop`; the session's summary
says how many uvloop loops its tests ran on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

created = 0


def _new_loop() -> asyncio.AbstractEventLoop:
    global created
    created += 1
    return uvloop.new_event_loop()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                  ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": _new_loop}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(f"uvloop loops: {created}")
