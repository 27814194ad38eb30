"""Logging for workflow jobs: whatever a job writes to stderr reaches the rule's ``log:`` file too.

Snakemake shows a failed job's log file (``--show-failed-logs``), so that file must hold what the job
said: its own messages, warnings of PIL, timm and transformers (Python warnings and library loggers),
anything else written to stderr, by C code and by worker processes too, and the error that ended it. An error the user can act on
(:class:`embedlens.errors.FetchError`: a download or hub model that could not be had) ends the job
with its one-paragraph message and no traceback; ``EMBEDLENS_DEBUG=1`` shows the traceback as well.

The terminal shows every job of a run, so a job says there only what a reader follows: what it
starts on and what it found (``log.info``). Progress a job reports many times (a line per epoch, fold
or iteration) is logged with ``log.debug``: it goes to the job's log file alone.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from embedlens.errors import FetchError

DEBUG_VARIABLE = "EMBEDLENS_DEBUG"
FORMAT = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


class _StderrCopy:
    """File descriptor 2 of this process, and of every process it starts, goes into ``tee``, which
    writes it to the terminal and to the log file.

    At the level of the descriptor, what C code prints (libpng, libjpeg, CUDA) and what forked
    DataLoader workers print is caught too, not only what passes through ``sys.stderr``. ``tee`` is a
    process of its own, in a session of its own: a job that holds the GIL while C code fills the pipe
    cannot stall it, and when the job is killed it still writes out what was said until then.
    """

    def __init__(self, log_path: Path):
        sys.stderr.flush()
        self.terminal = os.dup(2)
        # tee appends to the emptied file, as the handler of the job's log-only lines does: each write
        # of either lands at the end of the file instead of over the other's
        log_path.write_bytes(b"")
        self.tee = subprocess.Popen(["tee", "-a", str(log_path)], stdin=subprocess.PIPE, stdout=self.terminal,
                                    start_new_session=True)
        os.dup2(self.tee.stdin.fileno(), 2)

    def stop(self) -> None:
        """Give fd 2 back to the terminal and wait until ``tee`` has written everything out (at most a
        few seconds: a child that outlives the job keeps the pipe open)."""
        sys.stderr.flush()
        os.dup2(self.terminal, 2)
        os.close(self.terminal)
        self.tee.stdin.close()
        try:
            self.tee.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


_stderr_copy: _StderrCopy | None = None


def job_logger(name: str, log_path: str | Path | None = None) -> logging.Logger:
    """A logger named ``embedlens.<name>`` that writes its INFO lines and above to stderr, and with a
    ``log_path``, everything this process and its children write to stderr from now on goes to that
    file too, and so do the logger's DEBUG lines, to that file alone (see the module docstring).

    Library loggers (PIL, timm, transformers, ...) print their warnings in the same format. Calling it
    again replaces the handlers and the log file instead of adding more.
    """
    if log_path is not None:
        _tee_stderr(Path(log_path))
    logger = logging.getLogger(f"embedlens.{name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    _replace_handlers(logger, logging.INFO, log_path)
    _replace_handlers(logging.getLogger(), logging.WARNING)
    if log_path is not None:
        sys.excepthook = _report_fatal_error
    return logger


def _replace_handlers(logger: logging.Logger, level: int, log_path: str | Path | None = None) -> None:
    """Give ``logger`` one handler of ours on the current stderr, at ``level``, and with a ``log_path``
    one that appends the records below ``level`` to that file."""
    for handler in [h for h in logger.handlers if getattr(h, "embedlens", False)]:
        logger.removeHandler(handler)
        handler.close()
    handlers = [logging.StreamHandler(sys.stderr)]
    handlers[0].setLevel(level)
    if log_path is not None:
        handlers.append(logging.FileHandler(log_path, mode="a", encoding="utf-8"))
        handlers[1].addFilter(lambda record: record.levelno < level)
    for handler in handlers:
        handler.embedlens = True
        handler.setFormatter(FORMAT)
        logger.addHandler(handler)


def _tee_stderr(log_path: Path) -> None:
    """Send everything written to stderr from now on to ``log_path`` as well (see :class:`_StderrCopy`);
    a second call ends the first copy, its file complete, and starts one into the new file."""
    global _stderr_copy
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if _stderr_copy is None:
        atexit.register(_stop_stderr_copy)
    else:
        _stderr_copy.stop()
    _stderr_copy = _StderrCopy(log_path)
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger) and any(
                isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
                for handler in logger.handlers):
            # it prints to stderr itself (transformers does, and propagates too when CI is set):
            # passing its records on to the root's stderr handler would log each one twice
            logger.propagate = False


def _stop_stderr_copy() -> None:
    if _stderr_copy is not None:
        _stderr_copy.stop()


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
