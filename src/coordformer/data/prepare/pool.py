"""A crash-tolerant process pool for work units.

A worker that dies (segfault, OOM kill) takes only its units with it: those are retried one at a
time in isolated processes, and a unit that kills its process again is recorded as skipped. Workers
exit on their own when the main process is gone, so a killed run leaves no orphans behind.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, TypeVar

from ...config import PrepareConfig
from .errors import PrepareError
from .units import PartMeta, WorkUnit, empty_result, run_unit, write_part

#: what a unit's task returns (a part's meta, or the unit's chains for an in-memory read)
R = TypeVar("R")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed but not yet reaped process is a zombie: dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _worker_init(main_pid: int) -> None:
    """Pool worker start-up: exit when the main process is gone (e.g. SIGKILLed), instead of
    waiting forever for work that will never come."""
    import threading

    def watch() -> None:
        while _process_alive(main_pid):
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="coordformer-parent-watch", daemon=True).start()


def _mp_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _pool(ctx, workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),)
    )


def run_parallel(
    pending: list[WorkUnit],
    config: PrepareConfig,
    parts_dir: Path,
    workers: int,
    on_done: Callable[[PartMeta], None],
    log: Callable[..., None],
) -> None:
    """Run ``pending`` units (each writes its part) in ``workers`` processes; ``on_done`` gets each
    finished unit's meta in the main process. A unit that kills its process twice gets a part
    recording it as skipped. See :func:`map_units`."""

    def crashed(unit: WorkUnit, reason: str) -> PartMeta:
        result = empty_result(unit, reason)
        write_part(parts_dir, unit.key, result)
        return result.meta

    map_units(
        pending,
        functools.partial(run_unit, config=config, parts_dir=str(parts_dir)),
        workers,
        on_done,
        crashed,
        log,
    )


def map_units(
    pending: list[WorkUnit],
    task: Callable[[WorkUnit], R],
    workers: int,
    on_done: Callable[[R], None],
    crashed: Callable[[WorkUnit, str], R],
    log: Callable[..., None],
) -> None:
    """Run ``task(unit)`` for every unit of ``pending`` in ``workers`` processes, with a bounded
    number in flight; ``on_done`` gets each result in the main process (in completion order).
    ``task`` must pickle (a module-level function or a ``functools.partial`` of one).

    If a worker process dies, the units in flight are retried one at a time in isolated processes;
    a unit that kills its process again is handed to ``crashed(unit, reason)``, whose result goes to
    ``on_done`` in its place. Raises PrepareError when workers die before finishing any unit (they
    cannot run at all, e.g. a script without a ``__main__`` guard)."""
    ctx = _mp_context()
    queue = list(reversed(pending))
    max_in_flight = 2 * workers
    suspects: list[WorkUnit] = []
    twice: list[WorkUnit] = []  # units that killed their process again when run alone
    # units finished by a worker process (to tell "worker crashed on an input" from "workers cannot
    # run")
    n_ok = [0]

    def done_ok(result: R) -> None:
        n_ok[0] += 1
        on_done(result)

    while queue:
        broken = False
        with _pool(ctx, workers) as pool:
            in_flight: dict[Any, WorkUnit] = {}
            try:
                while queue or in_flight:
                    while queue and len(in_flight) < max_in_flight and not broken:
                        u = queue.pop()
                        try:
                            in_flight[pool.submit(task, u)] = u
                        except BrokenProcessPool:
                            queue.append(u)
                            broken = True
                    if not in_flight:
                        break
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for fut in done:
                        u = in_flight.pop(fut)
                        try:
                            result = fut.result()
                        except BrokenProcessPool:
                            broken = True
                            suspects.append(u)
                        else:
                            done_ok(result)
                    if broken:
                        # collect everything else in flight; those finished stay finished
                        for fut, u in list(in_flight.items()):
                            try:
                                result = fut.result()
                            except BrokenProcessPool:
                                suspects.append(u)
                            else:
                                done_ok(result)
                        in_flight.clear()
                        break
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        if broken:
            log(
                f"a worker process died; retrying {len(suspects)} unit(s) one at a time",
                logging.WARNING,
            )
            for u in suspects:
                result = _retry_alone(ctx, u, task)
                if result is _CRASHED:
                    twice.append(u)
                else:
                    done_ok(result)
            suspects = []
    # Decided at the end, not at the first repeated crash: which unit is retried first depends on
    # the order futures completed, and a bad input retried before any good one must not fail the
    # run. When nothing at all finished (every unit left crashed: a resumed run's last inputs),
    # a worker that runs nothing tells bad inputs from workers that cannot start.
    if twice and n_ok[0] == 0 and not _workers_can_run(ctx):
        raise PrepareError(
            "worker processes die before finishing any input; run with workers=1 to see why "
            "(scripts that call prepare() with workers > 1 need an `if __name__ == '__main__':` "
            "guard)"
        )
    for u in twice:
        log(f"{u.label}: worker crashed on this input twice; skipped", logging.WARNING)
        on_done(
            crashed(
                u,
                "worker process crashed while reading this input "
                "(killed by a signal or out of memory)",
            )
        )


def _noop() -> int:
    return os.getpid()


def _workers_can_run(ctx) -> bool:
    """Whether a worker process of this program starts and returns (a script without a
    ``__main__`` guard, among others, cannot)."""
    try:
        with _pool(ctx, 1) as solo:
            solo.submit(_noop).result(timeout=120)
        return True
    except Exception:  # noqa: BLE001 - BrokenProcessPool, a timeout: either way, it cannot
        return False


#: what ``_retry_alone`` returns for a unit that killed its process again
_CRASHED = object()


def _retry_alone(ctx, unit: WorkUnit, task: Callable[[WorkUnit], R]) -> R | object:
    """Run one suspect unit in a process of its own: its result, or ``_CRASHED``."""
    with _pool(ctx, 1) as solo:
        try:
            return solo.submit(task, unit).result()
        except BrokenProcessPool:
            return _CRASHED
