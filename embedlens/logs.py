"""Logging for workflow jobs: every message goes to the rule's ``log:`` file and to the terminal."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def job_logger(name: str, log_path: str | Path | None = None) -> logging.Logger:
    """A logger named ``embedlens.<name>`` that writes to ``log_path`` (if given) and to stderr.

    Calling it again for the same name replaces the handlers instead of adding more.
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
    return logger
