"""Prefect task around ``maskclip_core.benchmark.scoring``: one suite scored in a worker.

The task gets the small :class:`BenchmarkParameters` and a suite name, builds the labeler itself (weights are
loaded in the worker, never shipped), reads the suite's files from their folder and returns a
:class:`SuiteResult` (scores and counts, no arrays). Nothing is cached: a re-run scores again.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from maskclip_core.benchmark.scoring import BenchmarkParameters, SuiteResult, benchmark_suite


@task(name="benchmark-suite", cache_policy=NO_CACHE, task_run_name="benchmark-{suite}")
def benchmark_suite_task(request: BenchmarkParameters, suite: str) -> SuiteResult:
    logger = get_run_logger()
    every = max(1, (request.limit or 500) // 10)

    def progress(name: str, done: int, total: int) -> None:
        if done == total or done % every == 0:
            logger.info("%s: %d / %d images", name, done, total)

    # Status lines (model loading and text encoding, the suite's mIoU) go to the run's log as they happen.
    return benchmark_suite(request, suite, progress=progress, notify=logger.info)
