"""The exporter's command line in a process of its own, for the test_cli* modules: manifests written to run it
on, a one-shot run, and `serve` started up to its `listening` log line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from tests import factories as f

EXE = [sys.executable, "-m", "exporter"]


def write(path: Path, *objects: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(list(objects)))
    return path


def ok_and_bad_webhook(port: int, ca_bundle: str) -> dict[str, Any]:
    """One configuration `cfg`: `ok.example.com`, valid, on ``port``, and `bad.example.com`, skipped as malformed
    (timeoutSeconds 99 is outside 1-30)."""
    return f.configuration(
        "cfg", f.webhook("ok.example.com", f.url_client(port, ca_bundle)),
        f.webhook("bad.example.com", f.url_client(port, ca_bundle), timeoutSeconds=99))


async def run(*args: str, limit: float = 60) -> tuple[int, str, str]:
    """Run to the end (at most ``limit`` s): (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(*EXE, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def listening(*args: str, line_within: float = 30
                    ) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Start the exporter with ``args`` (stderr piped, unbuffered) and read its log until the `event=listening`
    line (each line within ``line_within`` s); yield the process and that line. A process still running at the
    end is killed and reaped."""
    proc = await asyncio.create_subprocess_exec(*EXE, *args, stderr=asyncio.subprocess.PIPE,
                                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stderr is not None
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), line_within)).decode()
            assert line, "exporter exited before listening"
            if "event=listening" in line:
                break
        yield proc, line
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
