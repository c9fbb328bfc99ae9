"""structlog set-up: configured once at start-up by the CLI.

JSON lines when stderr is not a terminal (containers, log shippers), a
readable console otherwise. Events carry ids, never secrets or bodies; the
``_redact`` processor is a second line of defence for keys that must never
leave the process.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = frozenset({"secret", "previous_secret", "password", "api_key", "body", "authorization"})


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in _SECRET_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


def configure(level: str = "info", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    # Tracebacks as plain text, never with their frames' local variables:
    # structlog's console default (rich) prints them, and one API error
    # logged 61 of an API key's 69 characters that way, as a job's would
    # its webhook secrets.
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    _route_stdlib_logging(level, renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info if use_json else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that configuring again replaces it and no other handler."""


def _route_stdlib_logging(level: str, renderer: structlog.types.Processor) -> None:
    """Libraries' own log records (psycopg_pool's connection errors, aiohttp's)
    through the same renderer: JSON logs stay JSON, one object per line."""
    handler = _Handler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                _redact,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    # Libraries' info lines (alembic's plugins, its revisions) are their
    # chatter, not ours: warnings and up, unless debugging.
    chosen = logging.getLevelNamesMapping()[level.upper()]
    root.setLevel(chosen if chosen == logging.DEBUG else max(chosen, logging.WARNING))


def get_logger(**initial: Any) -> Any:
    return structlog.get_logger("outbox_worker", **initial)
