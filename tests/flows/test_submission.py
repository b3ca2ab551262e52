"""``submit_bounded``: the bounded submission of the label-chunk sub-runs, with stand-in futures (no Prefect)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flows.submission import submit_bounded


class Pool:
    """Submissions finish in the order ``finish_order`` picks among those in flight; records the peak in flight."""

    def __init__(self, finish_last_first: bool = False) -> None:
        self.in_flight: list[int] = []
        self.peak = 0
        self.submitted: list[int] = []
        self.finish_last_first = finish_last_first

    def submit(self, item: int) -> int:
        self.submitted.append(item)
        self.in_flight.append(item)
        self.peak = max(self.peak, len(self.in_flight))
        return item  # the "future" is the item itself (hashable)

    def wait_first(self, futures: list[int]) -> int:
        assert sorted(futures) == sorted(self.in_flight)  # the helper asks about exactly what is unfinished
        done = futures[-1] if self.finish_last_first else futures[0]
        self.in_flight.remove(done)
        return done


@pytest.mark.parametrize("limit", [1, 2, 5, 50])
@pytest.mark.parametrize("finish_last_first", [False, True])
def test_every_item_once_never_more_than_limit_in_flight(limit: int, finish_last_first: bool) -> None:
    pool = Pool(finish_last_first)
    yielded = [(item, future) for item, future in submit_bounded(range(23), pool.submit, limit, pool.wait_first)]
    assert sorted(item for item, _ in yielded) == list(range(23))
    assert all(item == future for item, future in yielded)  # each future paired with its own item
    assert pool.submitted == list(range(23))  # submitted in order
    assert pool.peak == min(limit, 23) and not pool.in_flight


def test_items_are_pulled_lazily() -> None:
    """A streamed source is read no further ahead than the limit: the consumer sees results as they finish."""
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for i in range(1000):
            pulled.append(i)
            yield i

    pool = Pool()
    results = submit_bounded(source(), pool.submit, 3, pool.wait_first)
    first = next(results)
    assert first == (0, 0) and len(pulled) == 4  # 3 in flight, the 4th pulled to find the limit reached
    for _ in range(10):
        next(results)
    # the 14th item is pulled to wait for a free slot; it is submitted when the consumer asks for more
    assert len(pulled) == 14 and len(pool.submitted) == 13 and len(pool.in_flight) == 2


def test_empty_input_and_bad_limit() -> None:
    pool = Pool()
    assert list(submit_bounded([], pool.submit, 4, pool.wait_first)) == []
    with pytest.raises(ValueError, match="at least 1"):
        list(submit_bounded([1], pool.submit, 0, pool.wait_first))
