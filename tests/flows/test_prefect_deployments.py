"""``prefect.yaml`` against a real Prefect server: non-interactive deploy, what each deployment ships with, the
Run form's field order (the flows' parameter schemas), and deployment runs picked up by a process worker."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError
from support.block_photos import write_block_photos
from support.dask_processes import dask_cluster
from support.prefect_server import (
    PrefectServer,
    api,
    process_worker,
    run_deployment,
    run_logs,
    run_prefect,
    wait_for_final_state,
)
from support.tiny_labeler import KEEP_ALL, TINY_SPEC

from flows.label_dataset import label_dataset
from flows.pseudo_label_and_train import pseudo_label_and_train
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.labeling.registry import LabelerParameters, resolve_labeler
from maskclip_core.teacher.labeler import LabelerConfig

REPO = Path(__file__).resolve().parents[2]
POOL = "maskclip-process"
DEPLOYMENTS = {
    "label-dataset/nightly",
    "label-dataset/new-dataset",
    "pseudo-label-and-train/teacher-to-student",
    "train-student/student-from-dataset",
    "export-annotations/export-dataset",
    "benchmark/published-benchmarks",
}
# What a worker process needs on a machine without the model hub, and one thread per process on the test machine.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectServer) -> dict[str, dict[str, Any]]:
    """``prefect deploy --all`` from the repository root, once; the deployments by ``flow/name``."""
    created = run_prefect(prefect_server, "work-pool", "create", POOL, "--type", "process", cwd=REPO)
    assert created.returncode == 0 or "already exists" in created.stdout, created.stdout + created.stderr
    # --prompt: behave as in a terminal (prompts enabled); stdin is closed, so any question fails the deploy
    deployed = run_prefect(prefect_server, "--prompt", "deploy", "--all", cwd=REPO, timeout=600)
    output = deployed.stdout + deployed.stderr
    assert deployed.returncode == 0, output[-4000:]
    assert "? " not in output and "EOFError" not in output
    flow_names = {f["id"]: f["name"] for f in api(prefect_server, "/flows/filter", {})}
    return {f"{flow_names[d['flow_id']]}/{d['name']}": d for d in api(prefect_server, "/deployments/filter", {})}


@pytest.fixture(scope="module")
def worker(
    prefect_server: PrefectServer, deployed: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A process worker of the pool, started from the repository root as the README says; yields its log."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with process_worker(prefect_server, POOL, REPO, log, **WORKER_ENV):
        yield log


def _form_order(schema: dict[str, Any]) -> list[str]:
    """Field names in the order the UI's Run form shows them (by ``position``)."""
    props = schema["properties"]
    return sorted(props, key=lambda name: props[name]["position"])


@pytest.mark.parametrize("flow", [label_dataset, pseudo_label_and_train], ids=lambda f: f.name)
def test_run_form_has_one_classes_field_after_source_and_dataset(flow: Any) -> None:
    schema = parameter_schema(flow.fn).model_dump_for_openapi()
    assert _form_order(schema)[:3] == ["source", "dataset", "classes"]
    # the teacher always needs classes; label-dataset's student brings its checkpoint's, so there it is optional
    required = ["source", "dataset", "classes"] if flow is pseudo_label_and_train else ["source", "dataset"]
    assert schema["required"] == required
    classes = schema["properties"]["classes"]
    assert classes.get("type") == "string" or classes["anyOf"][0] == {"type": "string"}  # a text field
    assert "labeler" not in schema["required"]
    # the labeler's teacher settings have no second Classes field
    teacher = schema["definitions"]["TeacherSettings"]
    assert "classes" not in teacher["properties"] and "required" not in teacher


def _readme_labeler_params() -> list[dict[str, Any]]:
    """Every ``--param labeler='{...}'`` of the README's deployment examples."""
    found = re.findall(r"--param labeler='(\{.*?\})'", (REPO / "README.md").read_text())
    assert found, "the README shows no labeler parameter"
    return [json.loads(text) for text in found]


@pytest.mark.parametrize("params", _readme_labeler_params(), ids=lambda p: json.dumps(p))
def test_readme_labeler_parameters_are_accepted_with_the_flows_classes(params: dict[str, Any]) -> None:
    """What the Run form and ``prefect deployment run --param`` send: JSON, validated as the flow does."""
    run = {"source": "/photos", "dataset": "/labels", "classes": "cat, dog", "labeler": params}
    validated = label_dataset.validate_parameters(run)
    spec = resolve_labeler(validated["classes"], validated["labeler"])
    assert spec.config.classes == "cat, dog"
    assert spec.config.model_dump(exclude={"classes"}).items() >= params.get("config", {}).items()


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


def test_deploy_all_is_non_interactive_and_ships_what_the_readme_says(deployed: dict[str, dict[str, Any]]) -> None:
    assert set(deployed) == DEPLOYMENTS
    assert len({name.split("/")[1] for name in deployed}) == len(deployed)  # each name says what it is for
    nightly = deployed["label-dataset/nightly"]
    [schedule] = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["active"] is False  # ships paused
    assert set(nightly["parameters"]) == {"source", "dataset", "classes"}
    for name, d in deployed.items():
        if name != "label-dataset/nightly":
            assert d["schedules"] == [] and d["parameters"] == {}, name
        assert d["work_pool_name"] == POOL
        assert d["entrypoint"].startswith("flows."), name  # a module path: Dask workers import it
    form = deployed["label-dataset/new-dataset"]["parameter_openapi_schema"]
    assert _form_order(form)[:3] == ["source", "dataset", "classes"]


def test_a_deployment_run_labels_on_an_external_dask_cluster(
    prefect_server: PrefectServer, worker: Path, tmp_path: Path
) -> None:
    """``options.dask_address`` from a deployment: the batches run in `dask worker` processes (which import the
    flow's module from the installed package; a file-path entrypoint failed every batch with
    ``ModuleNotFoundError: No module named 'label_dataset'``)."""
    source, dataset = tmp_path / "photos", tmp_path / "labels"
    write_block_photos(source, 3, seed=7)
    with dask_cluster(tmp_path / "dask", prefect_server.env(**WORKER_ENV)) as address:
        run_id = run_deployment(
            prefect_server,
            "label-dataset/new-dataset",
            {
                "source": str(source),
                "dataset": str(dataset),
                "classes": TINY_SPEC.config.classes,  # the one Classes field; labeler.config has none
                "labeler": TINY_SPEC.model_dump(mode="json", exclude={"config": {"classes"}}),
                "filters": KEEP_ALL.model_dump(mode="json"),
                "options": {"dask_address": address, "batch_size": 1, "retries": 0, "thumbnails": 0},
            },
        )
        run = wait_for_final_state(prefect_server, run_id, timeout=600)
    logs = "\n".join(line["message"] for line in run_logs(prefect_server, run_id))
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{logs[-3000:]}\n{worker.read_text()[-3000:]}"
    assert "ModuleNotFoundError" not in logs
    assert LabelDataset(str(dataset)).images().num_rows == 3
