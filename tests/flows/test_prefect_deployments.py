"""``prefect.yaml`` against a real Prefect server: non-interactive deploy, what each deployment ships with, and the
Run form's field order (the flows' parameter schemas)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError
from support.prefect_server import PrefectServer, run_prefect

from flows.label_dataset import label_dataset
from flows.pseudo_label_and_train import pseudo_label_and_train
from maskclip_core.labeling.registry import LabelerParameters, resolve_labeler
from maskclip_core.teacher.labeler import LabelerConfig

REPO = Path(__file__).resolve().parents[2]


def _api(server: PrefectServer, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{server.api_url}{path}",
        data=data,
        headers={"Content-Type": "application/json"},
        method="POST" if data else "GET",
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def _form_order(schema: dict[str, Any]) -> list[str]:
    """Field names in the order the UI's Run form shows them (by ``position``)."""
    props = schema["properties"]
    return sorted(props, key=lambda name: props[name]["position"])


@pytest.mark.parametrize("flow", [label_dataset, pseudo_label_and_train], ids=lambda f: f.name)
def test_run_form_starts_with_source_dataset_and_classes(flow: Any) -> None:
    schema = parameter_schema(flow.fn).model_dump_for_openapi()
    assert _form_order(schema)[:3] == ["source", "dataset", "classes"]
    # what a user must fill in is required or plainly typed, not hidden behind an Optional toggle
    assert schema["required"] == ["source", "dataset"]
    assert schema["properties"]["classes"]["anyOf"][0] == {"type": "string"}
    assert "labeler" not in schema["required"]


def test_classes_complete_the_labeler_spec() -> None:
    spec = resolve_labeler("cat, dog", None)
    assert spec.labeler == "maskclip" and spec.config == LabelerConfig(classes="cat, dog")
    custom = LabelerParameters(config=LabelerConfig(classes="x", model="RN50"), device="cpu")
    assert resolve_labeler("cat", custom).config == LabelerConfig(classes="cat", model="RN50")
    assert resolve_labeler(None, custom) is custom
    with pytest.raises(ValueError, match="name the classes"):
        resolve_labeler(None, LabelerParameters(device="cpu"))
    with pytest.raises(ValueError, match="empty"):
        resolve_labeler("  ", None)
    student = LabelerParameters.student("/ckpt")
    assert resolve_labeler(None, student) is student
    with pytest.raises(ValueError, match="checkpoint"):
        resolve_labeler("cat", student)
    with pytest.raises(ValidationError):
        LabelerParameters(labeler="student")


def test_deploy_all_is_non_interactive_and_ships_what_the_readme_says(prefect_server: PrefectServer) -> None:
    created = run_prefect(prefect_server, "work-pool", "create", "maskclip-process", "--type", "process", cwd=REPO)
    assert created.returncode == 0, created.stdout + created.stderr
    # --prompt: behave as in a terminal (prompts enabled); stdin is closed, so any question fails the deploy
    deployed = run_prefect(prefect_server, "--prompt", "deploy", "--all", cwd=REPO, timeout=600)
    output = deployed.stdout + deployed.stderr
    assert deployed.returncode == 0, output[-4000:]
    assert "? " not in output and "EOFError" not in output

    flow_names = {f["id"]: f["name"] for f in _api(prefect_server, "/flows/filter", {})}
    deployments = {
        f"{flow_names[d['flow_id']]}/{d['name']}": d for d in _api(prefect_server, "/deployments/filter", {})
    }
    assert set(deployments) == {
        "label-dataset/nightly",
        "label-dataset/new-dataset",
        "pseudo-label-and-train/on-demand",
        "train-student/on-demand",
        "export-annotations/on-demand",
        "benchmark/on-demand",
    }
    nightly = deployments["label-dataset/nightly"]
    [schedule] = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["active"] is False  # ships paused
    assert set(nightly["parameters"]) == {"source", "dataset", "classes"}
    for name, d in deployments.items():
        if name != "label-dataset/nightly":
            assert d["schedules"] == [] and d["parameters"] == {}, name
        assert d["work_pool_name"] == "maskclip-process"
    form = deployments["label-dataset/new-dataset"]["parameter_openapi_schema"]
    assert _form_order(form)[:3] == ["source", "dataset", "classes"]
