"""Which precision a run keeps when its precision was left to the default (``config_hash.recorded_precision``)."""

from __future__ import annotations

from maskclip_core.labeling.config_hash import recorded_precision

BASE = {"labeler": "maskclip", "model": "ViT-B-16", "inference": {"short_side": 448}}


def config(precision: str | None = None, **inference) -> dict:
    out = {**BASE, "inference": {**BASE["inference"], **inference}}
    if precision is not None:
        out["inference"]["precision"] = precision
    return out


def record(labeler_config: dict) -> dict:
    return {"format": "maskclip-labeling/1", "labeler_config": labeler_config}


def test_a_new_dataset_or_other_settings_take_the_default() -> None:
    assert recorded_precision([], config("bf16")) is None
    assert recorded_precision([record(config(short_side=224))], config("bf16")) is None  # other settings


def test_the_recorded_precision_is_kept_and_fp32_is_a_missing_one() -> None:
    assert recorded_precision([record(config())], config("bf16")) == "fp32"  # a record from before the option
    assert recorded_precision([record(config("int8"))], config("bf16")) == "int8"
    assert recorded_precision([record(config("bf16"))], config("bf16")) is None  # already the default
    assert recorded_precision([record(config("int8")), record(config())], config("bf16")) == "fp32"
    assert recorded_precision([record(config()), record(config("bf16"))], config("bf16")) is None
    assert recorded_precision([record(config("bf16"))], config()) == "bf16"  # a CPU whose default is fp32


def test_a_run_pins_the_default_for_the_device_its_batches_run_on(monkeypatch) -> None:
    """The flow process may hold a CPU copy (Dask) while batches run on CUDA: the spec the batches receive
    names the precision of their device, so their labels are what the config hash says."""
    from maskclip_core.labeling.registry import LabelerParameters
    from maskclip_core.teacher import fast_paths
    from maskclip_core.teacher.labeler import LabelerConfig

    monkeypatch.setattr(fast_paths, "fast_bf16_cpu", lambda: True)
    config = LabelerConfig(model="maskclip-tiny-ViT", pretrained="none", classes="a, b")
    assert (
        LabelerParameters.maskclip(config, device="cuda").with_device_precision().config.inference.precision == "fp16"
    )
    assert LabelerParameters.maskclip(config, device="cpu").with_device_precision().config.inference.precision == "bf16"
    named = LabelerParameters.maskclip(config, device="cuda").with_precision("fp32")
    assert named.with_device_precision() == named and not named.precision_is_default()
