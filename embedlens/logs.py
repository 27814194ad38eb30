"""Logging for workflow jobs: every message goes to the rule's ``log:`` file and to the terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def job_logger(name: str, log_path: str | Path | None = None) -> logging.Logger:
    """A logger named ``embedlens.<name>`` that writes to ``log_path`` (if given) and to stderr.

    With a ``log_path``, an exception that ends the job is written to that file too (Snakemake shows
    a failed job's log), not only to the terminal. Calling it again for the same name replaces the
    handlers instead of adding more.
    """
    logger = logging.getLogger(f"embedlens.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    if log_path is not None:
        _log_uncaught_exceptions(handlers[-1], formatter)
    return logger


def _log_uncaught_exceptions(file_handler: logging.Handler, formatter: logging.Formatter) -> None:
    previous = sys.excepthook

    def hook(kind, value, traceback):
        record = logging.LogRecord("embedlens", logging.ERROR, "", 0, "the job failed: %s",
                                   (value,), (kind, value, traceback))
        file_handler.setFormatter(formatter)
        file_handler.handle(record)
        previous(kind, value, traceback)

    sys.excepthook = hook


@contextmanager
def exit_on(logger: logging.Logger, *errors: type[BaseException]) -> Iterator[None]:
    """Turn ``errors`` (bad input the user can fix, whose message says how) into one clear log line and
    exit status 1, instead of a stack trace; any other exception propagates as usual."""
    try:
        yield
    except errors as error:
        logger.error("%s", error)
        sys.exit(1)
