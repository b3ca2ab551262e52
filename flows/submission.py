"""Bounded submission: keep a fixed number of tasks in flight over an iterable of any length."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TypeVar

from prefect.futures import PrefectFuture, as_completed

T = TypeVar("T")
F = TypeVar("F", bound=Hashable)


def first_completed(futures: list[PrefectFuture]) -> PrefectFuture:
    """The first of ``futures`` to finish (Prefect's public ``as_completed``)."""
    return next(as_completed(futures))


def submit_bounded(
    items: Iterable[T],
    submit: Callable[[T], F],
    limit: int,
    wait_first: Callable[[list[F]], F] = first_completed,
) -> Iterator[tuple[T, F]]:
    """Submit ``items`` in order with at most ``limit`` unfinished, yielding ``(item, future)`` as each finishes.

    ``items`` is pulled only when a slot is free, so a streamed listing is never read further ahead than
    ``limit`` items; a future is forgotten as soon as it is yielded, so nothing here grows with the count.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    in_flight: dict[F, T] = {}
    for item in items:
        if len(in_flight) >= limit:
            done = wait_first(list(in_flight))
            yield in_flight.pop(done), done
        in_flight[submit(item)] = item
    while in_flight:
        done = wait_first(list(in_flight))
        yield in_flight.pop(done), done
