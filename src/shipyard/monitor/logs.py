"""Log set-up for long-running processes: one line per event, plain text or JSON."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from typing import Any

# The request being handled, set by the server around each request: every line logged while it
# runs (in its task) carries its id.
REQUEST_ID: ContextVar[str | None] = ContextVar("shipyard_request_id", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, worker and request id when known,
    and the structured `fields` a caller passed in `extra`."""

    def __init__(self, worker: int | None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update(getattr(record, "fields", {}))  # structured values a caller passed in `extra`
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line, ending with `request_id=…` while a request is handled."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # the line before any traceback
        line = super().formatMessage(record)
        request_id = REQUEST_ID.get()
        return line if request_id is None else f"{line} request_id={request_id}"


def configure_logging(level: str = "INFO", *, as_json: bool = False, worker: int | None = None) -> None:
    """Send Shipyard's logs, and uvicorn's warnings, to stderr (idempotent); other libraries keep
    their settings. `worker` (one of several server processes) goes on every line."""
    handler = logging.StreamHandler(sys.stderr)
    handler._shipyard = True  # type: ignore[attr-defined]
    prefix = "" if worker is None else f"worker={worker} "
    handler.setFormatter(
        JsonFormatter(worker)
        if as_json
        else TextFormatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
    )
    for name, logger_level in (("shipyard", level.upper()), ("uvicorn", "WARNING")):
        logger = logging.getLogger(name)
        logger.setLevel(logger_level)
        if not any(getattr(h, "_shipyard", False) for h in logger.handlers):
            logger.addHandler(handler)
        logger.propagate = False
