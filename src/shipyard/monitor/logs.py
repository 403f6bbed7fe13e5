"""Log set-up for long-running processes: one line per event, plain text or JSON."""

from __future__ import annotations

import json
import logging
import sys


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", *, as_json: bool = False) -> None:
    """Send Shipyard's own logs to stderr (idempotent); other libraries keep their settings."""
    logger = logging.getLogger("shipyard")
    logger.setLevel(level.upper())
    if any(getattr(h, "_shipyard", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._shipyard = True  # type: ignore[attr-defined]
    handler.setFormatter(
        _JsonFormatter() if as_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logger.addHandler(handler)
    logger.propagate = False
