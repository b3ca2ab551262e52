"""What a labeling run publishes to Prefect: its progress artifact (and the CLI's progress listener) and the
end-of-run summary table and markdown report. Artifact calls never fail a run."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from maskclip_core.labeling.report import RunSummary
from maskclip_core.labeling.report_images import thumbnail_sources

PROGRESS_ARTIFACT_KEY = "label-dataset-progress"
SUMMARY_ARTIFACT_KEY = "label-dataset-summary"
REPORT_ARTIFACT_KEY = "label-dataset-report"


class ProgressArtifact:
    """A progress artifact created on the first update and updated as batches finish.

    Artifact calls never fail a run: an API hiccup is logged and the next update tries again.
    """

    def __init__(self, key: str = PROGRESS_ARTIFACT_KEY) -> None:
        self.key = key
        self.artifact_id: UUID | None = None

    def update(self, percent: float, description: str) -> None:
        percent = max(0.0, min(100.0, float(percent)))
        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(percent, key=self.key, description=description)
            else:
                update_progress_artifact(self.artifact_id, percent, description=description)
        except Exception as e:  # noqa: BLE001 - progress is best effort
            get_run_logger().warning("progress artifact update failed: %s", e)


ProgressListener = Callable[[str, RunSummary], None]


class RunProgress:
    """Publishes a labeling run's progress: the progress artifact (at most once per ``interval_s``, always at the
    start and the end) and an optional in-process listener (the CLI's progress bar) on every event.

    Events: ``start``, ``listing`` (every 1000 files listed), ``batch``, ``end``.
    """

    def __init__(self, summary: RunSummary, listener: ProgressListener | None = None, interval_s: float = 1.0):
        self.summary = summary
        self.listener = listener
        self.interval_s = interval_s
        self.artifact = ProgressArtifact()
        self.last_update = float("-inf")

    def listing(self) -> None:
        self.publish("listing")

    def publish(self, event: str) -> None:
        now = time.monotonic()
        if event in ("start", "end") or now - self.last_update >= self.interval_s:
            self.last_update = now
            self.artifact.update(self.summary.progress_percent(), self.summary.progress_text())
        if self.listener is not None:
            try:
                self.listener(event, self.summary)
            except Exception:  # noqa: BLE001 - a display must never break a run
                pass


def publish_summary(summary: RunSummary, storage_options: Mapping[str, Any] | None = None) -> None:
    """The end-of-run table artifact and markdown report (both rendered by ``RunSummary``).

    The report artifact shows the overlays inline: a browser cannot open the dataset's local paths or s3:// URLs;
    its description puts the first ones on its card in the run's Artifacts tab.
    """
    try:
        sources = thumbnail_sources(summary.thumbnails, storage_options)
        markdown = summary.markdown(image_sources=sources)
        create_table_artifact(table=summary.table_rows(), key=SUMMARY_ARTIFACT_KEY, description=summary.headline())
        create_markdown_artifact(markdown, key=REPORT_ARTIFACT_KEY, description=summary.card_line(sources))
    except Exception as e:  # noqa: BLE001 - the run's data is written already
        get_run_logger().warning("summary artifacts could not be created: %s", e)
