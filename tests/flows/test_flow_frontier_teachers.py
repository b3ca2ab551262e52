"""The frontier teachers of a MaskCLIP+ student: the pseudo-label-and-train flow labels with Trident (random CLIP,
DINO and SAM) or with the global final block, records the choice in the labeling, and trains a student on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.block_photos import write_block_photos
from support.tiny_labeler import KEEP_ALL, TINY

from flows.label_dataset import LabelingRunParameters
from flows.pseudo_label_and_train import (
    ExportStepParameters,
    RelabelStepParameters,
    TrainingStepParameters,
    pseudo_label_and_train,
)
from maskclip_core.dataset.labelings import read_labeling_record
from maskclip_core.labeling.registry import LabelerParameters
from maskclip_core.student import load_checkpoint
from maskclip_core.teacher.labeler import LabelerConfig
from maskclip_core.training.parameters import ScheduleParameters, StudentParameters, TrainingRunParameters

pytestmark = pytest.mark.usefixtures("prefect_harness", "one_torch_thread")

# The tiny teacher with Trident's parts: a small DINO (16-pixel patches) and SAM ViT-B at a 224-pixel input.
TRIDENT = TINY.model_copy(
    update={
        "proxy": "vit_small_patch16_224.dino",
        "proxy_weights": "none",
        "sam": "samvit_base_patch16_224",
        "sam_weights": "none",
    }
)
# A light student, a few iterations at the tiny images' own size.
SCHEDULE = ScheduleParameters(iterations=4, rounds=1, batch_size=2, crop_size=32, log_every=0)
SCHEDULE = SCHEDULE.model_copy(update=dict.fromkeys(("base_short_side", "relabel_short_side", "eval_short_side")))
STUDENT = StudentParameters(backbone="mobilenet_v3_large", head_channels=16, backbone_weights="none")


def _teach_a_student(tmp_path: Path, teacher: LabelerConfig) -> dict:
    """pseudo-label-and-train on four block photos with ``teacher``; the flow's result."""
    write_block_photos(tmp_path / "src", 4)
    return pseudo_label_and_train(
        str(tmp_path / "src"),
        str(tmp_path / "out"),
        teacher.classes,
        LabelerParameters.maskclip(teacher, device="cpu"),
        KEEP_ALL,
        LabelingRunParameters(batch_size=4, retries=0, thumbnails=0),
        TrainingStepParameters(student=STUDENT, schedule=SCHEDULE, options=TrainingRunParameters(device="cpu")),
        RelabelStepParameters(dataset=str(tmp_path / "relabeled"), device="cpu"),
        ExportStepParameters(),
    )


def test_pseudo_label_and_train_with_trident_as_the_teacher(tmp_path: Path) -> None:
    result = _teach_a_student(tmp_path, TRIDENT)
    teacher, trained = result["teacher"], result["training"]
    assert teacher["labeled"] == 4
    record = read_labeling_record(str(tmp_path / "out"), teacher["config_hash"])
    assert record["labeler_config"]["labeler"] == "trident"
    assert record["labeler_config"]["sam"]["model"] == "samvit_base_patch16_224"
    assert trained["config_hash"] == teacher["config_hash"] and trained["complete"]
    checkpoint = load_checkpoint(trained["checkpoint"])
    assert checkpoint.config.embed_dim == 64 and checkpoint.vocabulary.class_names == ("red", "green", "blue")
    assert result["relabel"]["labeled"] == 4


def test_the_global_block_teaches_a_student(tmp_path: Path) -> None:
    inference = TINY.inference.model_copy(update={"attention": "naclip", "global_block": True})
    result = _teach_a_student(tmp_path, TINY.model_copy(update={"inference": inference}))
    assert result["teacher"]["labeled"] == 4
    record = read_labeling_record(str(tmp_path / "out"), result["teacher"]["config_hash"])
    assert record["labeler_config"]["inference"]["global_block"] is True
    assert result["training"]["config_hash"] == result["teacher"]["config_hash"] and result["training"]["complete"]
