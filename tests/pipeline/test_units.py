"""pipeline.units on a real Ray: bounded submission, results as units finish, a unit's exception as itself."""

from __future__ import annotations

import time
from contextlib import closing

import pytest

from pipeline.storage import StorageError
from pipeline.units import UnitError, run_units

pytestmark = pytest.mark.ray


def _tasks():
    """The task functions, made here so that Ray ships them by value (workers cannot import a test module)."""

    def timed(seconds: float) -> tuple[float, float]:
        start = time.time()
        time.sleep(seconds)
        return start, time.time()

    def fail_on(unit: int, bad: int) -> int:
        if unit == bad:
            raise StorageError(f"not found: s3://bucket/unit-{unit}\n(second line folded)")
        time.sleep(0.2)
        return unit * 10

    return timed, fail_on


def test_results_come_as_units_finish_with_their_unit(ray_local):
    timed, _ = _tasks()
    durations = {"slow": 3.0, "a": 0.0, "b": 0.0, "c": 0.0}
    done = [unit for unit, _ in run_units(timed, list(durations), lambda u: (durations[u],), num_cpus=0.5)]
    assert sorted(done) == sorted(durations) and done[-1] == "slow"  # the slow unit does not hold the others back


def test_no_more_than_max_in_flight_run_at_once(ray_local):
    timed, _ = _tasks()
    spans = [span for _, span in run_units(timed, [0.4] * 6, max_in_flight=2, num_cpus=0.25)]
    assert len(spans) == 6
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2


def test_a_units_exception_is_raised_as_itself_and_the_rest_cancelled(ray_local):
    _, fail_on = _tasks()
    results = []
    with pytest.raises(UnitError) as info:
        for unit, result in run_units(fail_on, list(range(8)), lambda u: (u, 3), max_in_flight=4, num_cpus=0.25,
                                      max_retries=0):
            results.append((unit, result))
    error = info.value
    assert error.unit == 3
    assert type(error.cause) is StorageError  # the task's own exception, not Ray's wrapper of it
    assert str(error.cause) == "not found: s3://bucket/unit-3 (second line folded)"
    assert str(error) == "StorageError: not found: s3://bucket/unit-3 (second line folded)"
    assert len(results) < 8 and all(r == u * 10 for u, r in results)


def test_closing_early_cancels_what_is_in_flight(ray_local, tmp_path):
    def finish(seconds: float) -> float:
        time.sleep(seconds)
        if seconds:  # only a long unit left running gets here
            (tmp_path / f"finished-{time.monotonic_ns()}").write_text("")
        return seconds

    with closing(run_units(finish, [3.0] * 3 + [0.0], max_in_flight=4, num_cpus=0.25)) as units:
        assert next(iter(units))[0] == 0.0
    time.sleep(6)  # twice as long as the cancelled units would have run
    assert [p.name for p in tmp_path.iterdir()] == []
