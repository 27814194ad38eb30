"""Errors a user can act on without a traceback: something the run needs could not be fetched.

A :class:`FetchError`'s message is one short paragraph: what could not be had, which config key to
set, and an example. Job scripts print it as it is (:mod:`embedlens.logs`); the traceback behind it is
noise for the user and appears only with ``EMBEDLENS_DEBUG=1``.
"""

from __future__ import annotations


class FetchError(RuntimeError):
    """A download, a hub model or a package's weights file could not be had; the message says what to
    set instead."""


class BackboneLoadError(FetchError):
    """A backbone's model or weights cannot be had; the message says how to use a local copy."""
