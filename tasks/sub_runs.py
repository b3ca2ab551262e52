"""A parent flow run's links to its sub-runs and their artifacts.

Prefect shows an artifact on the page of the run that created it only, so a pipeline whose steps are sub-flows
(``pseudo-label-and-train``: teacher labels, student training, student labels, export) would show "no
artifacts". :class:`SubRuns` runs each step as a sub-flow, remembers its flow run, and publishes one markdown
artifact on the parent: a row per step with its state and links to the sub-run and to each of its artifacts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

from prefect import Flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_UI_URL

R = TypeVar("R")


@dataclass(frozen=True)
class ArtifactLink:
    artifact_id: UUID
    key: str | None
    type: str | None
    description: str | None


@dataclass
class SubRun:
    """One step of the parent: its sub-flow run, that run's final state and its artifacts."""

    step: str
    flow_run_id: UUID
    state: str
    name: str = ""
    artifacts: list[ArtifactLink] = field(default_factory=list)


def _ui_base() -> str:
    """The UI's URL; empty where none is configured (ephemeral mode): links are then paths from the UI's root."""
    return str(PREFECT_UI_URL.value() or "").rstrip("/")


def flow_run_url(flow_run_id: UUID) -> str:
    return f"{_ui_base()}/runs/flow-run/{flow_run_id}"


def artifact_url(artifact_id: UUID) -> str:
    return f"{_ui_base()}/artifacts/artifact/{artifact_id}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def sub_runs_markdown(title: str, runs: Sequence[SubRun]) -> str:
    """The parent's artifact: a table of steps linking each sub-run, then each step's artifacts as a list.

    The artifacts are listed under the table, not in a column of it: a row with a few links grew wider than
    the UI's artifact page, which cut the table off at its right edge."""
    lines = [f"# {title}", "", "| step | sub-run | state | artifacts |", "| --- | --- | --- | ---: |"]
    for run in runs:
        name = _cell(run.name or str(run.flow_run_id))
        lines.append(
            f"| {_cell(run.step)} | [{name}]({flow_run_url(run.flow_run_id)}) | {run.state} | {len(run.artifacts)} |"
        )
    if not runs:
        lines.append("| (no step started) | | | |")
    for run in runs:
        if run.artifacts:
            lines += ["", f"## {_cell(run.step)}", ""]
            lines += [
                f"- [{_cell(a.key or str(a.artifact_id))}]({artifact_url(a.artifact_id)})"
                + (f" ({a.type})" if a.type else "")
                + (f": {_cell(a.description)}" if a.description else "")
                for a in run.artifacts
            ]
    return "\n".join(lines) + "\n"


class SubRuns:
    """Runs a parent's steps as sub-flows and records each one's flow run for :meth:`publish`."""

    def __init__(self) -> None:
        self.runs: list[SubRun] = []

    def run(self, step: str, subflow: Flow[..., R], *args: Any, **kwargs: Any) -> R:
        """``subflow(*args, **kwargs)``: its result, or its exception when it failed (recorded either way)."""
        state = subflow(*args, return_state=True, **kwargs)
        flow_run_id = state.state_details.flow_run_id
        if flow_run_id is not None:
            self.runs.append(SubRun(step, flow_run_id, state.name or state.type.value))
        return state.result()

    def resolve(self) -> list[SubRun]:
        """The recorded sub-runs with their names and artifacts read from the Prefect API (oldest first)."""
        ids = [run.flow_run_id for run in self.runs]
        if not ids:
            return []
        with get_client(sync_client=True) as client:
            names = {
                r.id: r.name for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
            }
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
            )
        by_run: dict[UUID, list[Any]] = {}
        for artifact in sorted(artifacts, key=lambda a: (a.created is None, a.created, a.key or "")):
            if artifact.type in (None, "result"):
                continue  # Prefect's own records of persisted results (a failed run's exception): nothing to show
            by_run.setdefault(artifact.flow_run_id, []).append(artifact)  # type: ignore[arg-type]
        return [
            SubRun(
                run.step,
                run.flow_run_id,
                run.state,
                names.get(run.flow_run_id, ""),
                [ArtifactLink(a.id, a.key, a.type, a.description) for a in by_run.get(run.flow_run_id, [])],
            )
            for run in self.runs
        ]

    def publish(self, key: str, title: str) -> None:
        """The parent's markdown artifact; an API hiccup is logged, never fails the run (the steps are done)."""
        try:
            markdown = sub_runs_markdown(title, self.resolve())
            create_markdown_artifact(markdown, key=key, description=f"{title}: the sub-runs and their artifacts")
        except Exception as e:  # noqa: BLE001 - links are a convenience; the steps' results are written
            get_run_logger().warning("sub-run links could not be published: %s", e)


@contextlib.contextmanager
def linked_sub_runs(key: str, title: str) -> Iterator[SubRuns]:
    """Steps run through the yielded :class:`SubRuns` are linked from the parent at the end, also when one failed."""
    runs = SubRuns()
    try:
        yield runs
    finally:
        runs.publish(key, title)
