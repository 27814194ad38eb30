"""Logging for workflow jobs: whatever a job writes to stderr reaches the rule's ``log:`` file too.

Snakemake shows a failed job's log file (``--show-failed-logs``), so that file must hold what the job
said: its own messages, warnings of PIL, timm and transformers (Python warnings and library loggers),
anything else written to stderr, and the error that ended it. An error the user can act on
(:class:`embedlens.errors.FetchError`: a download or hub model that could not be had) ends the job
with its one-paragraph message and no traceback; ``EMBEDLENS_DEBUG=1`` shows the traceback as well.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from embedlens.errors import FetchError

DEBUG_VARIABLE = "EMBEDLENS_DEBUG"
FORMAT = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


class _Tee:
    """A text stream that writes to the terminal's stream and to a log file."""

    def __init__(self, terminal: TextIO, log_file: TextIO):
        self.terminal, self.log_file = terminal, log_file

    def write(self, text: str) -> int:
        self.log_file.write(text)
        return self.terminal.write(text)

    def flush(self) -> None:
        self.log_file.flush()
        self.terminal.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ... are the terminal's
        return getattr(self.terminal, name)


def job_logger(name: str, log_path: str | Path | None = None) -> logging.Logger:
    """A logger named ``embedlens.<name>`` that writes to stderr, and with a ``log_path``, everything
    this process writes to stderr from now on goes to that file too (see the module docstring).

    Library loggers (PIL, timm, transformers, ...) print their warnings in the same format. Calling it
    again replaces the handlers and the log file instead of adding more.
    """
    if log_path is not None:
        _tee_stderr(Path(log_path))
    logger = logging.getLogger(f"embedlens.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    _replace_handler(logger, logging.INFO)
    _replace_handler(logging.getLogger(), logging.WARNING)
    if log_path is not None:
        sys.excepthook = _report_fatal_error
    return logger


def _replace_handler(logger: logging.Logger, level: int) -> None:
    """Give ``logger`` one handler of ours on the current stderr, at ``level``."""
    for handler in [h for h in logger.handlers if getattr(h, "embedlens", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.embedlens = True
    handler.setLevel(level)
    handler.setFormatter(FORMAT)
    logger.addHandler(handler)


def _tee_stderr(log_path: Path) -> None:
    """Make ``sys.stderr`` write to ``log_path`` as well, also for the stream handlers that libraries
    set up on stderr before (transformers keeps its own)."""
    previous = sys.stderr
    terminal = previous.terminal if isinstance(previous, _Tee) else previous
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr = _Tee(terminal, open(log_path, "w", buffering=1))
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (previous, terminal):
                handler.setStream(sys.stderr)
                if logger is not logging.getLogger():
                    # it prints to stderr itself (transformers does, and propagates too when CI is set):
                    # passing its records on to the root's stderr handler would log each one twice
                    logger.propagate = False
    if isinstance(previous, _Tee):
        previous.log_file.close()


def _report_fatal_error(kind, value, trace) -> None:
    """The error that ends the job, once, on stderr (so in its log): a :class:`FetchError` as its
    message alone unless EMBEDLENS_DEBUG is set, anything else with its traceback."""
    if issubclass(kind, FetchError) and not os.environ.get(DEBUG_VARIABLE):
        text = f"the job failed: {value}\n(set {DEBUG_VARIABLE}=1 for the traceback)"
    else:
        text = "the job failed: " + "".join(traceback.format_exception(kind, value, trace)).rstrip()
    record = logging.LogRecord("embedlens", logging.ERROR, "", 0, "%s", (text,), None)
    sys.stderr.write(FORMAT.format(record) + "\n")
    sys.stderr.flush()


@contextmanager
def exit_on(logger: logging.Logger, *errors: type[BaseException]) -> Iterator[None]:
    """Turn ``errors`` (bad input the user can fix, whose message says how) into one clear log line and
    exit status 1, instead of a stack trace; any other exception propagates as usual."""
    try:
        yield
    except errors as error:
        logger.error("%s", error)
        sys.exit(1)
