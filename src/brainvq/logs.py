"""What the libraries under brainvq may print: warnings, never errors of their own before brainvq's one line.

MLflow logs the SQLAlchemy traceback of a failing store at ERROR, and every schema migration at INFO. A failure
reaches the user as brainvq's one line (with its traceback in the run's ``error.txt``), so the libraries' ERROR
records only bury it. ``BRAINVQ_DEBUG=1`` leaves every logger as the libraries set it.
"""

from __future__ import annotations

import logging
import os
import sys

QUIET_LOGGERS = ("mlflow", "alembic")


class DropLibraryErrors(logging.Filter):
    """A handler filter (a logger's own filters never see the records its children propagate to it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or not record.name.startswith(QUIET_LOGGERS)


def quiet_libraries() -> None:
    """MLflow and Alembic at WARNING unless ``MLFLOW_LOGGING_LEVEL`` says otherwise, their errors dropped.
    Idempotent; call it again after importing mlflow, which replaces its loggers' handlers at import. MLflow sets
    its logger's level from the variable once, when imported, so an MLflow already imported gets the level here."""
    if os.environ.get("BRAINVQ_DEBUG"):
        return
    level = os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read by mlflow at import, and child steps
    if "mlflow" in sys.modules:  # imported before this call (by a host program, say): the variable came too late
        logging.getLogger("mlflow").setLevel(level.upper())
    handlers = list(logging.getLogger().handlers)
    for name in QUIET_LOGGERS:
        handlers += logging.getLogger(name).handlers
    for handler in handlers:
        if not any(isinstance(f, DropLibraryErrors) for f in handler.filters):
            handler.addFilter(DropLibraryErrors())


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` for the CLI: ``UserWarning: <message>`` on one line, without the source file and
    line Python prints by default (a data warning is about the user's files, not ours)."""
    return f"{category.__name__}: {message}\n"


def one_line_warnings() -> None:
    """Python's warnings as one line each; ``BRAINVQ_DEBUG=1`` keeps the default format, with the source line."""
    import warnings

    if not os.environ.get("BRAINVQ_DEBUG"):
        warnings.formatwarning = one_line_warning
