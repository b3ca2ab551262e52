"""Student checkpoints: round trip through a URL (local dir, memory://), one checkpoint per round with the
training state, and an interrupted training that resumes to exactly the uninterrupted result."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import uuid
from dataclasses import replace

import fsspec
import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from maskclip_core.student import (
    AugmentConfig,
    ClassVocabulary,
    Sample,
    StudentConfig,
    StudentLabeler,
    TrainConfig,
    build_student,
    fit_student,
    load_checkpoint,
    read_latest,
    save_weights,
)
from maskclip_core.student.checkpoint import write_latest
from maskclip_core.types import IGNORE_INDEX, SegmentationResult

D = 8
NAMES = ("road", "car", "tree")
VOCAB = ClassVocabulary(NAMES, (0, 1, 1, 2))  # "car" has two queries (synonyms)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def text() -> torch.Tensor:
    return torch.randn(4, D, generator=torch.Generator().manual_seed(0))


def student_config() -> StudentConfig:
    return StudentConfig(
        embed_dim=D, backbone="resnet18", output_stride=16, head_channels=16, temperature=5.0, backbone_weights="none"
    )


@pytest.fixture(params=["local", "memory"])
def ckpt_url(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "checkpoints")
    return f"memory://student-test-{uuid.uuid4().hex}/checkpoints"


def _images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        image = np.zeros((40, 48, 3), dtype=np.uint8)
        image[:, :24] = rng.integers(0, 80, size=3)
        image[:, 24:] = rng.integers(150, 256, size=3)
        out.append(image)
    return out


def _labels(image: np.ndarray) -> np.ndarray:
    labels = np.where(image[..., 0] > 100, 1, 0).astype(np.uint8)
    labels[:4] = IGNORE_INDEX
    return labels


def test_round_trip_through_a_url(ckpt_url: str) -> None:
    torch.manual_seed(0)
    model = build_student(student_config(), text(), VOCAB)
    model.train()
    with torch.no_grad():  # move the BatchNorm statistics away from their defaults
        model(torch.randn(2, 3, 32, 32))
    model.eval()
    url = save_weights(ckpt_url, model, round_index=2, iteration=40)
    write_latest(ckpt_url, 2, 40)
    assert url.endswith("round-002.safetensors")

    for source in (url, ckpt_url):  # a weights file, or the directory (newest round)
        ck = load_checkpoint(source)
        assert ck.url == url and ck.round == 2 and ck.iteration == 40
        assert ck.config == student_config() and ck.vocabulary == VOCAB
        state = model.state_dict()
        assert ck.state_dict.keys() == state.keys()
        assert all(torch.equal(ck.state_dict[k], state[k]) for k in state)
        fs, path = fsspec.core.url_to_fs(url)
        assert ck.sha256 == hashlib.sha256(fs.cat_file(path)).hexdigest()

    fs, path = fsspec.core.url_to_fs(ckpt_url)
    names = sorted(os.path.basename(p) for p in fs.ls(path, detail=False))
    assert names == ["latest.json", "round-002.safetensors"]  # no temporary files left behind

    images = _images(3, 1)
    original = StudentLabeler(model, short_side=32, device="cpu").label(images)
    labeler = StudentLabeler.from_checkpoint(ckpt_url, device="cpu", short_side=32)
    assert labeler.class_names == NAMES
    for a, b in zip(original, labeler.label(images), strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.confidence, b.confidence)
    cfg = labeler.config()
    json.dumps(cfg)
    assert cfg["checkpoint"] == url and cfg["round"] == 2 and cfg["checkpoint_sha256"] == ck.sha256
    assert cfg["vocabulary"] == {"class_names": list(NAMES), "query_to_class": [0, 1, 1, 2]}


def test_metadata_is_plain_safetensors(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_student(student_config(), text(), VOCAB)
    url = save_weights(str(tmp_path), model, round_index=0, iteration=5)
    with safetensors.safe_open(url, framework="pt") as f:
        meta = f.metadata()
        assert "classifier.embeddings" in f.keys()
    assert meta["format"] == "maskclip-student/1" and meta["round"] == "0" and meta["iteration"] == "5"
    assert json.loads(meta["config"]) == student_config().to_dict()
    assert json.loads(meta["vocabulary"])["class_names"] == list(NAMES)


def test_missing_or_foreign_checkpoints(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "nothing"))
    foreign = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not a student checkpoint"):
        load_checkpoint(str(foreign))


class Interrupted(Exception):
    pass


def stop_after(round_index: int):
    def on_round_end(event) -> None:
        if event.round == round_index:
            raise Interrupted

    return on_round_end


def _train(url: str, on_round_end=None, label_filter=None, model_config=None, text_embeddings=None, **overrides):
    samples = [Sample(im, _labels(im)) for im in _images(6, 2)]
    eval_pairs = [(im, _labels(im)) for im in _images(3, 3)]
    settings = {
        "iterations": 9,
        "batch_size": 2,
        "rounds": 2,
        "pseudo_fraction": 1 / 3,  # rounds end at iterations 3, 6, 9
        "lr": 0.02,
        "augment": AugmentConfig(crop_size=32, base_short_side=None),  # tiny images: at their size
        "relabel_short_side": None,
        "eval_short_side": None,
        "seed": 11,
        "log_every": 0,
    }
    config = TrainConfig(**{**settings, **overrides})

    def keep_confident(result: SegmentationResult) -> np.ndarray:
        labels = result.labels.astype(np.uint8)
        labels[result.confidence < 0.55] = IGNORE_INDEX
        return labels

    return fit_student(
        model_config or student_config(),
        text() if text_embeddings is None else text_embeddings,
        VOCAB,
        samples,
        config,
        unlabeled=_images(4, 4),
        label_filter=label_filter or keep_confident,
        eval_pairs=eval_pairs,
        checkpoint_url=url,
        on_round_end=on_round_end,
    )


def _weights(url: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(url).state_dict


@pytest.mark.parametrize("interrupt", ["after_round_1", "during_round_2"])
def test_interrupted_training_resumes_to_the_uninterrupted_result(ckpt_url: str, interrupt: str) -> None:
    full = _train(ckpt_url + "-full")
    assert [m["round"] for m in full.metrics] == [0, 1, 2] and full.resumed_from_round is None

    url = ckpt_url + "-resumed"
    if interrupt == "after_round_1":
        with pytest.raises(Interrupted):
            _train(url, on_round_end=stop_after(1))
    else:
        calls = []

        def crash_in_round_2(result: SegmentationResult) -> np.ndarray:
            calls.append(1)
            if len(calls) > 4:  # round 1 relabels the 4 pool images; round 2's first call crashes
                raise Interrupted
            labels = result.labels.astype(np.uint8)
            labels[result.confidence < 0.55] = IGNORE_INDEX
            return labels

        with pytest.raises(Interrupted):
            _train(url, label_filter=crash_in_round_2)
    assert read_latest(url)["round"] == 1

    resumed = _train(url)
    assert resumed.resumed_from_round == 1
    assert resumed.metrics == full.metrics
    a, b = _weights(ckpt_url + "-full"), _weights(url)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert resumed.checkpoint_url.endswith("round-002.safetensors")
    # A finished run resumes to its end: nothing left to train.
    again = _train(url)
    assert again.resumed_from_round == 2 and again.metrics == full.metrics


def test_every_round_is_checkpointed_with_its_training_state(ckpt_url: str) -> None:
    _train(ckpt_url)
    fs, path = fsspec.core.url_to_fs(ckpt_url)
    names = {os.path.basename(p) for p in fs.ls(path, detail=False)}
    for r in range(3):
        assert {f"round-{r:03d}.safetensors", f"round-{r:03d}.state.safetensors", f"round-{r:03d}.state.json"} <= names
    assert read_latest(ckpt_url) == {
        "round": 2,
        "iteration": 9,
        "weights": "round-002.safetensors",
        "state": "round-002.state.json",
    }
    info = json.loads(fs.cat_file(f"{path}/round-001.state.json"))
    assert info["iteration"] == 6 and info["round"] == 1 and [m["round"] for m in info["metrics"]] == [0, 1]
    assert info["train_config"]["seed"] == 11
    state = safetensors.torch.load(fs.cat_file(f"{path}/round-001.state.safetensors"))
    n_params = sum(1 for p in build_student(student_config(), text(), VOCAB).parameters() if p.requires_grad)
    assert sum(k.endswith("momentum_buffer") for k in state) == n_params
    assert "rng.torch" in state
    assert [load_checkpoint(f"{ckpt_url}/round-{r:03d}.safetensors").iteration for r in range(3)] == [3, 6, 9]


def test_resume_refuses_another_setup_but_never_downloads_backbone_weights(tmp_path, monkeypatch) -> None:
    url = str(tmp_path / "ck")
    with pytest.raises(Interrupted):
        _train(url, on_round_end=stop_after(0))
    with pytest.raises(ValueError, match="TrainConfig"):
        _train(url, lr=0.05)
    with pytest.raises(ValueError, match="text embeddings"):
        _train(url, text_embeddings=text() + 1)
    with pytest.raises(ValueError, match="student config"):
        _train(url, model_config=replace(student_config(), head_channels=8))

    def offline(url, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    # The first run started from ImageNet weights, say; its resume needs none of them.
    resumed = _train(url, model_config=replace(student_config(), backbone_weights="imagenet"))
    assert resumed.resumed_from_round == 0 and [m["round"] for m in resumed.metrics] == [0, 1, 2]
