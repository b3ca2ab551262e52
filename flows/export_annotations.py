"""Prefect flow: export a labeling run's Parquet dataset for review (COCO, Label Studio, CVAT).

Same selection and writers as ``maskclip export``; a markdown artifact summarises what was written.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from maskclip_core.interchange.export import ExportParameters, export_dataset

ARTIFACT_KEY = "export-summary"


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry storage hiccups only; a bad selection or option fails the same way every time."""
    try:
        state.result()
    except FileNotFoundError:  # a missing image or store stays missing
        return False
    except OSError:
        return True
    except Exception:
        return False
    return False


@task(name="export-dataset", retries=2, retry_delay_seconds=10, retry_condition_fn=_transient)
def export_dataset_task(params: ExportParameters, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    # Writes are atomic and named by the destination, so a retry rewrites the same files.
    return export_dataset(params, storage_options)


@flow(name="export-annotations")
def export_annotations(params: ExportParameters, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export ``params.dataset`` to ``params.destination`` in ``params.format``; returns the summary.

    ``storage_options`` are fsspec options (endpoint, region); keep credentials in the environment or a
    block, not in flow parameters, which the UI shows.
    """
    summary = export_dataset_task(params, storage_options)
    create_markdown_artifact(
        markdown=summary_markdown(summary),
        key=ARTIFACT_KEY,
        description=f"{summary['format']} export of {summary['dataset']}",
    )
    return summary


def summary_markdown(summary: dict[str, Any]) -> str:
    """What was exported, for the flow run's artifact tab."""
    filters = ", ".join(f"{k}={v}" for k, v in summary["filters"].items()) or "none"
    lines = [
        f"# {summary['format']} export",
        "",
        "| | |",
        "| --- | --- |",
        f"| from | `{summary['dataset']}` |",
        *(f"| file | `{url}` |" for url in summary["files"]),
        f"| images | {summary['images']} |",
        f"| annotations | {summary['annotations']} |",
        f"| filters | {filters} |",
        "",
        "| class | annotations |",
        "| --- | ---: |",
        *(f"| {name} | {n} |" for name, n in summary["annotations_per_class"].items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # e.g. python -m flows.export_annotations '{"format": "coco", ...}'
    import json
    import sys

    print(json.dumps(export_annotations(ExportParameters.model_validate_json(sys.argv[1])), indent=2))
