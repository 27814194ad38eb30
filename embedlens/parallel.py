"""An order-preserving parallel map with a bounded number of results in flight.

``multiprocessing.Pool.imap`` feeds every task to the workers at once and queues every result until
the caller takes it, so a slow consumer (or a fast pool) can pile up results in memory.
:func:`ordered_map` lets at most ``max_pending`` tasks be submitted and not yet consumed, so memory
stays bounded by ``max_pending`` results whatever the number of tasks.

Workers are forked: they inherit the caller's imports and never re-run the main script (a Snakemake
``script:`` has no ``if __name__ == "__main__"`` guard, which spawned workers would need).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


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
    ``2 * workers``) tasks are submitted ahead of the one the caller is waiting for.
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

    pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        for result in pool.imap(func, feed()):
            slots.release()
            yield result
    finally:
        stop.set()
        for _ in range(max_pending + 1):  # unblock the feeding thread so the pool can shut down
            slots.release()
        pool.terminate()
        pool.join()
