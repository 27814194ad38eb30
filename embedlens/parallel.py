"""An order-preserving parallel map with a bounded number of results in flight.

``multiprocessing.Pool.imap`` feeds every task to the workers at once and queues every result until
the caller takes it, so a slow consumer (or a fast pool) can pile up results in memory.
:func:`ordered_map` lets at most ``max_pending`` tasks be submitted and not yet consumed, so memory
stays bounded by ``max_pending`` results whatever the number of tasks.

Workers are forked: they inherit the caller's imports and never re-run the main script (a Snakemake
``script:`` has no ``if __name__ == "__main__"`` guard, which spawned workers would need).

A worker that dies in the middle of a task (a crash in C code, killed by a signal or the OOM killer,
``os._exit``) would make ``Pool.imap`` wait forever for the lost result; :func:`ordered_map` notices
the death and raises :class:`WorkerDied` instead, naming the first task whose result it had not yet
yielded.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

POLL_SECONDS = 0.2  # how often a waiting ordered_map checks that its workers are alive


class WorkerDied(RuntimeError):
    """A worker process of :func:`ordered_map` died while tasks were in flight.

    ``index`` is the position (0-based) of the first task whose result had not been yielded: the lost
    task is that one or one of the (at most ``max_pending``) tasks after it. ``exitcode`` is the dead
    worker's (negative: the signal that killed it).
    """

    def __init__(self, index: int, exitcode: int | None):
        how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        super().__init__(f"a worker process died ({how}) while task {index} or one after it was running")
        self.index = index
        self.exitcode = exitcode


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset / cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def ordered_map(func: Callable[[T], R], tasks: Iterable[T], workers: int,
                max_pending: int | None = None) -> Iterator[R]:
    """Yield ``func(task)`` for every task, in order, computed by ``workers`` forked processes.

    ``func`` must be picklable (a module-level function or a ``functools.partial`` of one). With
    ``workers <= 1`` everything runs in this process. At most ``max_pending`` (default
    ``2 * workers``) tasks are submitted ahead of the one the caller is waiting for. An exception
    raised by ``func`` is raised here; a worker that dies raises :class:`WorkerDied`.
    """
    if workers <= 1:
        for task in tasks:
            yield func(task)
        return
    max_pending = max(1, max_pending or 2 * workers)
    slots = threading.Semaphore(max_pending)
    stop = threading.Event()

    def feed() -> Iterator[T]:
        # Runs in the pool's task-feeding thread: blocks while max_pending results are unconsumed, and
        # only then takes the next task, so ``tasks`` is not advanced ahead of the bound either.
        iterator = iter(tasks)
        while True:
            slots.acquire()
            if stop.is_set():
                return
            try:
                task = next(iterator)
            except StopIteration:
                return
            yield task

    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a multi-threaded process; the workers only run ``func``.
        warnings.simplefilter("ignore", DeprecationWarning)
        pool = multiprocessing.get_context("fork").Pool(workers)
    # The pool replaces a dead worker silently and its task is lost, so watch the original ones.
    # (``_pool`` is the Pool's list of worker processes; without it, no watch.)
    watched = list(getattr(pool, "_pool", []))
    try:
        results = pool.imap(func, feed())
        index = 0
        while True:
            try:
                result = results.next(timeout=POLL_SECONDS)
            except multiprocessing.TimeoutError:
                dead = [worker for worker in watched if worker.exitcode is not None]
                if dead:
                    raise WorkerDied(index, dead[0].exitcode) from None
                continue
            except StopIteration:
                return
            slots.release()
            yield result
            index += 1
    finally:
        stop.set()
        for _ in range(max_pending + 1):  # unblock the feeding thread so the pool can shut down
            slots.release()
        pool.terminate()
        pool.join()
