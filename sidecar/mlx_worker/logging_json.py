"""JSON-lines logging on stderr, the format the supervisor parses and re-emits.

One line per event::

    {"ts": 1764163200.123, "level": "info", "target": "mlx_worker.server",
     "message": "listening", "fields": {"socket": "/run/x.sock"}}

Structured fields go in ``extra={"fields": {...}}``; an exception's traceback lands in
``fields["exception"]``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any

_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "fields", None) or {})
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        entry = {
            "ts": record.created,
            "level": _LEVELS.get(record.levelno, record.levelname.lower()),
            "target": record.name,
            "message": record.getMessage(),
            "fields": fields,
        }
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str) -> None:
    """Sends every log record at ``level`` or above to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Keep third-party chatter at warning and above, whatever our own level.
    for noisy in ("grpc", "asyncio", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # Python warnings (from any library) and uncaught exceptions, in any thread, become JSON
    # lines too, not bare text on stderr.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = lambda a: _log_uncaught(a.exc_type, a.exc_value, a.exc_traceback)


def _log_uncaught(exc_type: Any, exc: Any, tb: Any) -> None:
    if issubclass(exc_type, SystemExit):
        return
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("mlx_worker").critical("uncaught exception", exc_info=(exc_type, exc, tb))
