"""The percentile and stability rules the load generator uses to report and to stop measuring."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.stats import Window, is_stable, mean, percentile, within


def test_percentile_matches_numpy_linear_interpolation() -> None:
    values = [5.0, 1.0, 9.0, 3.0, 7.0]
    for q in (0, 10, 50, 90, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=200),
       st.floats(min_value=0, max_value=100))
def test_percentile_agrees_with_numpy_on_random_samples(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-6)


def test_percentile_of_single_value_is_that_value() -> None:
    assert percentile([4.2], 99) == 4.2


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_rejects_q_outside_0_100(q: float) -> None:
    with pytest.raises(ValueError, match="within"):
        percentile([1.0, 2.0], q)


def test_percentile_and_mean_reject_empty_samples() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match="empty"):
        mean([])


def test_within_uses_a_fraction_of_the_mean() -> None:
    assert within([100, 105, 95], 0.10)
    assert not within([100, 125, 95], 0.10)
    assert within([0, 0], 0.10)
    assert not within([], 0.10)


def _w(tp: float, lat: float, count: int = 10) -> Window:
    return Window(duration_s=1.0, count=count, throughput=tp, latency_us=lat)


def test_stable_when_last_three_windows_agree_on_throughput_and_latency() -> None:
    windows = [_w(50, 9000), _w(100, 1000), _w(104, 1040), _w(98, 990)]
    assert is_stable(windows, count=3, tolerance=0.10)


def test_unstable_when_throughput_drifts() -> None:
    assert not is_stable([_w(100, 1000), _w(120, 1000), _w(80, 1000)], count=3, tolerance=0.10)


def test_unstable_when_latency_drifts_even_if_throughput_is_flat() -> None:
    assert not is_stable([_w(100, 1000), _w(100, 1500), _w(100, 1000)], count=3, tolerance=0.10)


def test_too_few_windows_are_not_stable() -> None:
    assert not is_stable([_w(100, 1000), _w(100, 1000)], count=3)


def test_a_window_without_completed_requests_is_never_stable() -> None:
    assert not is_stable([_w(0, float("inf"), 0)] * 3, count=3)


def test_is_stable_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="count"):
        is_stable([_w(1, 1)], count=0)
    with pytest.raises(ValueError, match="tolerance"):
        within([1.0], -0.1)


def test_the_lower_median_is_one_measured_item_never_an_average() -> None:
    from bench.stats import lower_median

    items = [("a", 3.0), ("b", 1.0), ("c", 2.0)]
    assert lower_median(items, key=lambda i: i[1]) == ("c", 2.0)
    assert lower_median([*items, ("d", 4.0)], key=lambda i: i[1]) == ("c", 2.0)  # even count: the lower middle
    assert lower_median([("x", 5.0)], key=lambda i: i[1]) == ("x", 5.0)
    with pytest.raises(ValueError):
        lower_median([], key=lambda i: i)
