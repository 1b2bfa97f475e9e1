"""Structured logs: one line per event, logfmt (default) or JSON.

Call sites pass fields as keyword arguments through `event()`, so every line is machine-parseable and
greppable: `level=warning event=probe_failed name=... reason=timeout`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FIELDS = "awe_fields"


def event(logger: logging.Logger, level: int, name: str, /, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={_FIELDS: fields})


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\\\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"event={_logfmt_value(record.getMessage())}"]
        for key, value in getattr(record, _FIELDS, {}).items():
            parts.append(f"{key}={_logfmt_value(value)}")
        if record.exc_info:
            parts.append(f"error={_logfmt_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        doc.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic only in typeshed
    """Writes to whatever `sys.stderr` is at emit time (a replaced or captured stderr is followed)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure(level: str = "info", fmt: str = "logfmt") -> None:
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The kubernetes client and aiohttp log per request at INFO/DEBUG; keep our lines readable.
    for noisy in ("kubernetes", "urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
