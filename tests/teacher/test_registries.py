"""The registries (attention modes, template sets, backbones, heads, CLIP models) are the only lists of
their names: configs' Literals, CLI choices and the README derive from them. Plus what replaced
hand-written code: open_clip's ImageNet templates and zero-shot builder, the process cache, the palette."""

from __future__ import annotations

import hashlib
import re
import threading
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from maskclip_core.colors import voc_colormap
from maskclip_core.device import default_device, resolve_device
from maskclip_core.process_cache import ProcessCache
from maskclip_core.student.backbones import BACKBONES, BackboneName, build_backbone
from maskclip_core.student.model import HEADS, HeadName
from maskclip_core.teacher import dense
from maskclip_core.teacher.clip_loader import clip_models, load_clip
from maskclip_core.teacher.labeler import LabelerConfig
from maskclip_core.teacher.prompts import (
    IMAGENET_TEMPLATES,
    MASKCLIP_TEMPLATES,
    SCENE_TEMPLATES,
    TEMPLATE_SETS,
    TemplateSetName,
    templates_for,
)
from maskclip_core.teacher.text_classifier import template_ensemble
from maskclip_core.teacher.window_predictor import InferenceConfig

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def bundle():
    return load_clip("maskclip-tiny-ViT", "none", device="cpu", seed=5)


# ---------------------------------------------------------------- names derive from the registries
def _enum(model, field: str) -> list[str]:
    return model.model_json_schema()["properties"][field]["enum"]


def test_literals_are_the_registry_keys():
    from maskclip_core.training.parameters import ClipParameters, StudentParameters

    modes = ("maskclip", "clearclip", "sclip", "naclip")
    assert typing.get_args(dense.AttentionMode) == tuple(dense.ATTENTION_MODES) == modes
    assert _enum(InferenceConfig, "attention") == list(dense.ATTENTION_MODES)
    assert typing.get_args(TemplateSetName) == tuple(TEMPLATE_SETS) == ("maskclip", "imagenet", "single")
    assert _enum(LabelerConfig, "templates") == _enum(ClipParameters, "templates") == list(TEMPLATE_SETS)
    assert typing.get_args(BackboneName) == tuple(BACKBONES)
    assert set(BACKBONES) == {"resnet18", "resnet50", "resnet101", "mobilenet_v3_large"}
    assert _enum(StudentParameters, "backbone") == list(BACKBONES)
    assert typing.get_args(HeadName) == tuple(HEADS) == ("deeplabv3", "deeplabv2")
    assert _enum(StudentParameters, "head") == list(HEADS)
    # every registered mode is described in the config's schema (the deployment form shows it)
    description = InferenceConfig.model_json_schema()["properties"]["attention"]["description"]
    assert all(f"{mode}:" in description for mode in dense.ATTENTION_MODES)


def _choices(parser, *path: str, flag: str) -> list[str]:
    for name in path:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]
    return list(next(a for a in parser._actions if flag in a.option_strings).choices)


def test_cli_choices_are_the_registry_keys():
    from cli.main import build_parser

    parser = build_parser()
    assert _choices(parser, "segment", flag="--attention") == list(dense.ATTENTION_MODES)
    assert _choices(parser, "segment", flag="--templates") == list(TEMPLATE_SETS)
    assert _choices(parser, "train", flag="--templates") == list(TEMPLATE_SETS)
    assert _choices(parser, "train", flag="--backbone") == list(BACKBONES)
    assert _choices(parser, "train", flag="--head") == list(HEADS)
    with pytest.raises(SystemExit):
        parser.parse_args(["segment", "x.jpg", "--classes", "cat", "--attention", "bogus"])


def test_readme_lists_exactly_the_registered_names():
    text = README.read_text()

    def row(flag: str) -> set[str]:
        match = re.search(rf"\| `--{flag} ([\w\\|]+)` \|", text)
        assert match, f"README has no `--{flag} a\\|b` row"
        return set(match.group(1).split("\\|"))

    assert row("attention") == set(dense.ATTENTION_MODES)
    assert row("templates") == set(TEMPLATE_SETS)
    backbones = text[text.index("- **Backbones**") :].split("\n- ")[0]
    assert {name for name in re.findall(r"`(\w+)`", backbones) if name in BACKBONES | HEADS} == set(BACKBONES) | set(
        HEADS
    )


def test_unknown_names_get_one_clear_line():
    with pytest.raises(ValueError, match=r"unknown attention mode 'nope'; choose one of \('maskclip'"):
        dense.last_block_for("nope")
    with pytest.raises(ValueError, match="unknown template set 'many'; choose one of"):
        templates_for("many")
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'; choose one of"):
        build_backbone("vgg16")


def test_a_new_attention_mode_is_one_registry_entry(monkeypatch):
    model = load_clip("maskclip-tiny-ViT", "none", device="cpu", seed=6).model
    pixels = torch.randn(1, 3, 64, 96)
    seen = []

    def doubled_value_path(block, x, grid):
        seen.append(grid)
        tokens, keys = dense.ATTENTION_MODES["maskclip"](block, x, grid)
        return 2 * tokens, keys

    monkeypatch.setitem(dense.ATTENTION_MODES, "doubled", doubled_value_path)
    with torch.no_grad():
        base, base_keys = dense.dense_features(model, pixels, "maskclip")
        doubled, keys = dense.dense_features(model, pixels, "doubled")
    patch = model.visual.patch_size[0]
    assert seen == [(64 // patch, 96 // patch)]  # the patch grid reaches the block (for spatial priors)
    torch.testing.assert_close(keys, base_keys)
    # ln_post is scale-invariant up to its eps: doubling the tokens leaves the features (almost) unchanged,
    # which shows the registered function's output went through the rest of the head
    torch.testing.assert_close(doubled, base, rtol=1e-3, atol=1e-3)


def test_clip_registry_is_open_clips_usable_architectures():
    models = clip_models()
    assert "openai" in models["ViT-B-16"] and "openai" in models["RN50"]
    assert models["maskclip-tiny-ViT"] == () and "maskclip-tiny-RN" in models
    assert "coca_ViT-B-32" not in models and "ViT-SO400M-14-SigLIP" not in models
    with pytest.raises(ValueError, match="CoCa"):
        load_clip("coca_ViT-B-32", "none", device="cpu")
    with pytest.raises(ValueError, match="timm"):
        load_clip("ViT-SO400M-14-SigLIP", "none", device="cpu")
    with pytest.raises(ValueError, match="unknown CLIP model 'nope'; known: .*ViT-B-16"):
        load_clip("nope", "none", device="cpu")


# ---------------------------------------------------------------- library over hand-written
def test_imagenet_templates_are_open_clips_and_hash_as_before():
    assert IMAGENET_TEMPLATES == tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert MASKCLIP_TEMPLATES == IMAGENET_TEMPLATES + SCENE_TEMPLATES and len(MASKCLIP_TEMPLATES) == 85
    assert IMAGENET_TEMPLATES[:2] == ("a bad photo of a {}.", "a photo of many {}.")
    # the labeler config hashes the templates: same text, same hash as the hand-written copy had
    assert hashlib.sha256("\n".join(MASKCLIP_TEMPLATES).encode()).hexdigest()[:16] == "f87d863dc7a96d46"


def test_template_ensemble_equals_open_clips_zero_shot_builder(bundle):
    names = ["person", "potted plant", "tv monitor"]
    ours = template_ensemble(bundle, names, MASKCLIP_TEMPLATES)
    with torch.no_grad():
        reference = build_zero_shot_classifier(bundle.model, bundle.tokenizer, names, MASKCLIP_TEMPLATES, 2).T
    assert ours.shape == reference.shape == (3, 64)
    torch.testing.assert_close(ours, reference.float(), rtol=1e-5, atol=1e-6)


def test_process_cache_builds_each_key_once_under_concurrency():
    cache: ProcessCache[object] = ProcessCache()
    builds = []

    def build():
        builds.append(1)
        time.sleep(0.05)  # a slow model load: the other threads arrive meanwhile
        return object()

    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("k", build))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(got) == 8 and all(g is got[0] for g in got)
    assert cache.get("other", object) is not got[0] and len(cache) == 2
    cache.clear()
    assert len(cache) == 0


def test_cached_labeler_and_text_cache_are_per_process(monkeypatch):
    from maskclip_core.teacher import labeler as labeler_module
    from maskclip_core.teacher.text_classifier import default_text_cache

    config = LabelerConfig(model="maskclip-tiny-ViT", pretrained="none", classes="cat, dog", templates="single")
    monkeypatch.setattr(labeler_module, "_LABELERS", ProcessCache())
    first = labeler_module.cached_labeler(config, device="cpu")
    assert labeler_module.cached_labeler(config.model_copy(), device="cpu") is first
    assert labeler_module.cached_labeler(config.model_copy(update={"seed": 1}), device="cpu") is not first
    assert default_text_cache() is default_text_cache() is first._text_cache


def test_one_voc_palette():
    from maskclip_core.colors import class_colors

    cmap = voc_colormap(256)
    assert cmap[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert cmap[15].tolist() == [192, 128, 128]  # VOC "person"
    assert np.array_equal(class_colors(255), cmap[1:])  # overlays start at VOC entry 1: class 0 is not black


def test_one_device_default():
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == default_device() and resolve_device("cpu") == torch.device("cpu")
