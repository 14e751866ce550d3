"""structlog set-up: JSON lines in production, readable console output in a terminal.

Every event — the router's own structlog events and stdlib records from libraries such as
aiohttp — leaves through one handler in one format, so a log pipeline parses one kind of line.
State changes (health, drains, config) are always logged by ``federation.runtime``; launch
access events are sampled (``logging.access_log`` in the config), because at high request rates
writing one line per redirect would cost more than routing it.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog
from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["LogFormat", "configure_logging", "quiet_malformed_requests"]

LogFormat = Literal["auto", "json", "console"]


class _ClientErrorFilter(logging.Filter):
    """Malformed requests are the client's fault and already answered 400: log one warning line.

    aiohttp logs each at ERROR with a traceback, so anyone sending garbage to the public URL
    could flood the logs and page on-call staff.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.malformed_request = True
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = f"{record.getMessage()}: malformed request ({exc.message[:200]})"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


class _Writer(structlog.WriteLogger):
    """structlog's plain line writer, plus the name the ``logger`` field shows."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


def configure_logging(fmt: LogFormat = "auto", *, level: int = logging.INFO,
                      stream: TextIO | None = None) -> None:
    """Send structlog events and stdlib records to ``stream`` (stderr by default) in one format.

    ``auto`` picks console output when the stream is a terminal and JSON lines otherwise
    (containers, files, pipes). structlog events are rendered and written directly, without
    the stdlib logging machinery, which costs several times more per event.
    """
    out = stream if stream is not None else sys.stderr
    tty = out.isatty()
    use_json = fmt == "json" or (fmt == "auto" and not tty)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json
        else structlog.dev.ConsoleRenderer(colors=tty)
    )
    tracebacks: list[structlog.types.Processor] = (
        [structlog.processors.format_exc_info] if use_json else [])

    def writer(*args: object) -> _Writer:
        return _Writer(out, str(args[0]) if args else "")

    structlog.configure(
        processors=[*shared, *tracebacks, renderer],
        logger_factory=writer,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # Not cached: module-level loggers then follow any later configure() (tests'
        # capture_logs, an embedding application). State changes are rare and access events
        # sampled, so the microseconds spent assembling a logger per event do not matter.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=renderer, foreign_pre_chain=[*shared, *tracebacks],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    quiet_malformed_requests()


def quiet_malformed_requests() -> None:
    """Log requests aiohttp's parser refused as one warning line each (idempotent)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ClientErrorFilter) for f in server_log.filters):
        server_log.addFilter(_ClientErrorFilter())
