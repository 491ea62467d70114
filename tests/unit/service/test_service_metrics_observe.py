"""`observe_many`: a batch's observations written once per bucket read exactly as one `observe` each."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from service.metrics import LATENCY_BUCKETS, observe_many


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("q", "q", ["model"], buckets=LATENCY_BUCKETS, registry=one)
    h2 = Histogram("q", "q", ["model"], buckets=LATENCY_BUCKETS, registry=many)
    return one, h1, many, h2


def _exposition(registry: CollectorRegistry) -> str:
    return "\n".join(line for line in generate_latest(registry).decode().splitlines() if "_created" not in line)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.sampled_from([*LATENCY_BUCKETS, 0.0, -1.0, math.inf]),
                          st.floats(min_value=-1, max_value=100, allow_nan=False)), max_size=40))
def test_observing_many_reads_as_observing_each(amounts: list[float]) -> None:
    # values on a bucket's bound (le is inclusive), past the last bound (+Inf), negative, none at all
    one, h1, many, h2 = _pair()
    child = h1.labels(model="m")  # the series exists in both, observed or not
    for a in amounts:
        child.observe(a)
    observe_many(h2.labels(model="m"), amounts)
    assert _exposition(many) == _exposition(one)


def test_nan_goes_into_the_sum_and_no_bucket_as_observe_does() -> None:
    one, h1, many, h2 = _pair()
    h1.labels(model="m").observe(math.nan)
    h1.labels(model="m").observe(0.002)
    observe_many(h2.labels(model="m"), [math.nan, 0.002])
    assert _exposition(many) == _exposition(one)


def test_a_labelled_parent_refuses_as_observe_does() -> None:
    _, h1, _, _ = _pair()
    with pytest.raises(ValueError):
        h1.observe(0.1)
    with pytest.raises(ValueError):
        observe_many(h1, [0.1])
