"""N independent units of work as Ray tasks: a bounded number in flight, results as they complete, a failed unit's
exception raised in the driver as the exception it is.

``pipeline.prepare`` runs one unit per shard and ``evaluation.sweep`` one per (net, Q, image shard): both hand their
units over as Python objects and get each result back with the unit it belongs to, in completion order, so the
caller can commit it at once (a shard's record, a unit's posteriors) and a rerun redoes only what is missing.

A unit that raises ends the run: the units still in flight are cancelled and ``UnitError`` carries the unit and its
exception as raised in the task (a ``StorageError`` stays a ``StorageError`` with its one-line message, without
Ray's wrapper and remote traceback around it). A unit whose worker died after Ray's retries fails the same way, with
Ray's error as its cause.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

U = TypeVar("U")
R = TypeVar("R")


class UnitError(Exception):
    """A unit of work failed: ``unit`` is the unit, ``cause`` the exception it raised (or Ray's, if its worker died)."""

    def __init__(self, unit: Any, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {' '.join(str(cause).split())}")
        self.unit = unit
        self.cause = cause


def default_in_flight() -> int:
    """Twice the cluster's CPUs: every CPU busy, and the next unit already queued behind each."""
    import ray

    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))


def run_units(
    fn: Callable[..., R],
    units: Sequence[U],
    args: Callable[[U], tuple] = lambda unit: (unit,),
    *,
    max_in_flight: int | None = None,
    **options: Any,
) -> Iterator[tuple[U, R]]:
    """Run ``fn(*args(unit))`` for every unit as a Ray task (``options`` as for ``ray.remote``, e.g. ``num_cpus``,
    ``memory``, ``max_retries``); yield ``(unit, result)`` as each finishes, with at most ``max_in_flight`` submitted
    at once (default ``default_in_flight()``); raise ``UnitError`` for the first unit that fails.

    Units still in flight are cancelled when the generator ends early: on a failure, or when it is closed (wrap it in
    ``contextlib.closing`` where the loop's own body may raise).
    """
    import ray

    task = ray.remote(fn).options(**options)
    limit = max_in_flight or default_in_flight()
    waiting = iter(units)
    pending: dict[Any, U] = {}

    def submit() -> None:
        for unit in waiting:
            pending[task.remote(*args(unit))] = unit
            if len(pending) >= limit:
                return

    try:
        submit()
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the unit raised: its own exception, as raised in the task
                raise UnitError(unit, e.cause if isinstance(e.cause, BaseException) else e) from e
            except ray.exceptions.RayError as e:  # its worker or node died beyond the retries, or it was cancelled
                raise UnitError(unit, e) from e
            submit()
            yield unit, result
    finally:
        for ref in pending:  # a failure or an abandoned loop: nothing keeps running for a caller that has gone
            ray.cancel(ref)
