"""The ``benchmark`` flow through the shared Prefect harness: per-suite tasks, report, table artifact."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from support.benchmark_tiny import TINY_INFERENCE, TINY_MODEL, write_tiny_data_root

from maskclip_core.benchmark.scoring import BenchmarkParameters, run_benchmark

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_benchmark_flow_reports_and_publishes_a_table(tmp_path: Path, prefect_harness: None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.benchmark import TABLE_ARTIFACT_KEY, BenchmarkIncomplete, benchmark

    root = write_tiny_data_root(tmp_path / "data")
    request = BenchmarkParameters(
        suites=["voc21", "ade20k"], data_root=str(root), inference=TINY_INFERENCE, limit=2, **TINY_MODEL
    )
    state = benchmark(request, return_state=True)
    report = state.result()
    direct = run_benchmark(request).to_dict()  # the flow scores exactly what the library does
    assert report["miou"] == direct["miou"] and report["errors"] == {}
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[TABLE_ARTIFACT_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    assert artifact.type == "table"
    assert '"voc21"' in artifact.data and '"mean of 2"' in artifact.data

    # A suite without data stops the run before the first model loads, naming it.
    broken = request.model_copy(update={"suite_roots": {"ade20k": str(tmp_path / "nowhere")}})
    state = benchmark(broken, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, FileNotFoundError) and "ade20k: no images/validation/ under" in str(error)

    # An image that fails: the others are still scored and reported, and the run fails without an average.
    (root / "ade/ADEChallengeData2016/images/validation/img_1.jpg").write_bytes(b"not a jpeg")
    state = benchmark(request, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BenchmarkIncomplete) and "'ade20k': 1" in str(error) and "img_1" in str(error)
    assert error.report["miou"]["voc21"] == direct["miou"]["voc21"] and error.report["average"] is None
    assert pickle.loads(pickle.dumps(error)).report == error.report
    allowed = benchmark(request.model_copy(update={"allow_incomplete": True}))
    assert allowed["suites"]["ade20k"]["failed"] == 1 and allowed["average"] is not None


def test_benchmark_deployment_is_on_demand() -> None:
    import yaml
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "prefect.yaml").read_text())
    [deployment] = [d for d in config["deployments"] if d["entrypoint"] == "flows.benchmark.benchmark"]
    assert not deployment.get("schedules") and deployment["parameters"] == {}
    flow = load_flow_from_entrypoint(deployment["entrypoint"])  # a module path (flows.<module>.<flow>)
    assert flow.name == "benchmark"
    assert "BenchmarkParameters" in parameter_schema(flow.fn).definitions  # the UI's Run form
