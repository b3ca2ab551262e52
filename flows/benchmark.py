"""The ``benchmark`` flow: ``maskclip benchmark`` as a Prefect flow (a deployment runs it on demand).

One ``benchmark-suite`` task per suite, in order (each loads the model for its suite's vocabulary; one at a
time keeps one model in memory and the accelerator to itself). Every suite's layout, image count and the
method's configuration are checked before the first task (``preflight``): a missing dataset folder, a
half-extracted split or a method this version lacks fails the run at once, naming every problem. A suite that
fails while it runs is reported in the table and fails the run at the end, after the other suites have been
scored; so do failed or missing images unless ``allow_incomplete``. The result is the JSON report of
``maskclip benchmark``; the table artifact ``benchmark-miou`` holds mIoU per suite, the average, images and
images/s.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from maskclip_core.benchmark.protocols import get_method
from maskclip_core.benchmark.scoring import BenchmarkParameters, preflight, report_of
from tasks.benchmark import benchmark_suite_task

TABLE_ARTIFACT_KEY = "benchmark-miou"


class BenchmarkIncomplete(RuntimeError):
    """Some suites could not be scored; ``report`` holds those that were."""

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}

    def __reduce__(self) -> tuple[Any, ...]:  # keeps the report when Prefect pickles the exception
        return type(self), (str(self), self.report)


@flow(
    name="benchmark",
    description="mIoU of a labeler on the standard segmentation benchmarks under a method's protocol.",
    validate_parameters=True,
)
def benchmark(request: BenchmarkParameters) -> dict[str, Any]:
    """Score ``request.method`` on ``request.suites``; returns the report (mIoU in percent per suite, the
    eight-suite average when all eight ran in full, images/s)."""
    logger = get_run_logger()
    method = get_method(request.method)
    preflight(request)  # every suite's configuration and split, before the first model loads
    states = {suite: benchmark_suite_task(request, suite, return_state=True) for suite in request.suites}
    results, errors = [], {}
    for suite, state in states.items():
        if state.is_completed():
            results.append(state.result())
        else:
            error = state.result(raise_on_failure=False)
            errors[suite] = f"{type(error).__name__}: {error}"
            logger.error("%s: %s", suite, errors[suite])
    report = report_of(request, results)
    rows = [{**row, "error": None} for row in report.table_rows()] if errors else report.table_rows()
    for suite, error in errors.items():
        rows.insert(-1, {"suite": suite, "mIoU": None, "images": 0, "failed": None, "images/s": None, "error": error})
    create_table_artifact(
        table=rows,
        key=TABLE_ARTIFACT_KEY,
        description=f"{request.method} ({request.model}, {request.pretrained}): mIoU (%) per suite"
        + (f", published eight-suite average {method.published_average}" if method.published_average else ""),
    )
    data = {**report.to_dict(), "errors": errors}
    if errors:
        raise BenchmarkIncomplete(f"{len(errors)} of {len(request.suites)} suites failed: {errors}", data)
    if report.failed:
        bad = {r.suite: r.failed + int(r.split.get("missing", 0)) for r in report.results}
        raise BenchmarkIncomplete(
            f"images failed or missing {bad}: no average (allow_incomplete scores the rest); first failures: "
            f"{[f for r in report.results for f in r.failures[:2]]}",
            data,
        )
    return data
