"""The daemons' log setup: ``--log-level`` and ``--log-format text|json`` on stderr.

:func:`setup_logging` is the one setup of ``leapcore-hub`` (``serve`` and ``--solo``) and
``leapcore-worker run``:

* ``text``: ``TIME LEVEL LOGGER: MESSAGE``, and `` [event=NAME]`` after a security
  event's message (:mod:`leapcore.net.security_log`);
* ``json``: one JSON object per line — ``ts`` (UTC, ISO 8601, milliseconds), ``level``,
  ``logger``, ``msg``, then every structured field the record carries (``event``,
  ``reason``, ``peer``, ``worker_id``, …; ``extra=`` of the logging call), and ``exc``
  (the traceback) when there is one.

The websockets library logs one INFO line per connection ("connection open",
"connection closed", "connection rejected …"): :func:`quiet_libraries` shows them at
DEBUG, as DEBUG, and never its frame dumps (``< BINARY …`` / ``> BINARY …``), whose
payload excerpts may hold a link's credentials; hpack's per-header DEBUG lines are
dropped too.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from leapcore.store.config import LOG_FORMATS

__all__ = [
    "LEVELS",
    "WEBSOCKETS_LOGGERS",
    "JsonFormatter",
    "TextFormatter",
    "fields_of",
    "quiet_libraries",
    "setup_logging",
]

#: ``--log-level`` value -> logging level.
LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}

#: The attributes every LogRecord has: anything else on a record came with ``extra=``.
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

#: The loggers the websockets library's connections log to (``websockets.protocol``).
WEBSOCKETS_LOGGERS: Final = ("websockets.server", "websockets.client")
#: Its frame dumps (DEBUG): a payload excerpt, possibly a credential. Never shown.
_FRAME_DUMPS: Final = frozenset({"< %s", "> %s"})

_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record carries (those given with ``extra=``)."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k[:1] != "_"}


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE``, `` [event=NAME]`` appended to a security event."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        event = getattr(record, "event", None)
        if event is None:
            return text
        head, sep, rest = text.partition("\n")  # after the message, before a traceback
        return f"{head} [event={event}]{sep}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            if isinstance(value, (str, int, float, bool)) or value is None:
                document.setdefault(key, value)
            else:
                document.setdefault(key, str(value))
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, ensure_ascii=False)


class _ConnectionLines(logging.Filter):
    """The websockets library's per-connection lines at DEBUG; its frame dumps never."""

    def __init__(self, show: bool) -> None:
        super().__init__()
        self.show = show

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if record.msg in _FRAME_DUMPS:
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.show


def quiet_libraries(level: int) -> None:
    """Keep the websockets library's per-connection INFO lines (and its frame dumps, and
    hpack's per-header lines) out of the log at ``level``; at DEBUG the connection lines
    show, as DEBUG. Idempotent."""
    debug = level <= logging.DEBUG
    logging.getLogger("websockets").setLevel(logging.DEBUG if debug else logging.WARNING)
    for name in WEBSOCKETS_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _ConnectionLines)]:
            logger.removeFilter(old)
        logger.addFilter(_ConnectionLines(debug))
    logging.getLogger("hpack").setLevel(logging.INFO)


def setup_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Log to ``stream`` (stderr) at ``level`` (:data:`LEVELS`) in ``fmt`` (``text`` or
    ``json``), replacing any handler the root logger had."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = LEVELS.get(level, logging.INFO)
    root.setLevel(numeric)
    quiet_libraries(numeric)
