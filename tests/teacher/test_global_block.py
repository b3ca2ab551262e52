"""The global final block (OV-Stitcher): equal to a rewrite from its equations (support/global_block_reference.py)
for every attention mode and ProxyCLIP at square and non-square sizes; a patch sees a far window only when it is
on; the token budget; the option's place in the configuration hash, the CLI and the labeler."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from support.global_block_reference import global_block_reference, global_proxyclip_reference
from support.vit_reference import max_rel_error

from maskclip_core.teacher.clip_loader import load_clip
from maskclip_core.teacher.dense import ATTENTION_MODES
from maskclip_core.teacher.global_block import global_dense_features
from maskclip_core.teacher.labeler import LabelerConfig, MaskCLIPLabeler
from maskclip_core.teacher.proxy import ProxyBundle
from maskclip_core.teacher.window_predictor import InferenceConfig, window_boxes

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
CROP, STRIDE = 64, 32
# Square; non-square with windows shifted back off the 16-pixel lattice (offset 36 px) and a padded last column.
SIZES = [(96, 96), (100, 140)]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip("maskclip-tiny-ViT", "none", device="cpu", seed=31).model


def _ours(clip, image, **kwargs):
    """Our global block on the predictor's windows of ``image``, each padded to whole patches as it pads them."""
    crop_size, stride, floor = kwargs.pop("crop", CROP), kwargs.pop("stride", STRIDE), kwargs.pop("floor", False)
    boxes = window_boxes(image.shape[1], image.shape[2], crop_size, stride)
    crops = []
    for y0, y1, x0, x1 in boxes:
        crop = image[:, y0:y1, x0:x1]
        if floor:  # the predictor's partial_patches="floor"
            crops.append(crop[:, : crop.shape[1] // 16 * 16, : crop.shape[2] // 16 * 16])
        else:
            crops.append(F.pad(crop, (0, -crop.shape[2] % 16, 0, -crop.shape[1] % 16)))
    features, _ = global_dense_features(clip, torch.stack(crops), boxes, window_batch=2, **kwargs)
    return boxes, features


def _assert_equal_per_window(boxes, features, ref_boxes, expected):
    assert boxes == ref_boxes
    stacked = torch.stack(expected)
    assert features.shape == stacked.shape
    error = max_rel_error(features, stacked)
    assert error <= 1e-4, error


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", list(ATTENTION_MODES))
def test_global_block_equals_the_equations_for_every_mode(tiny_clip, mode, size):
    image = torch.randn(3, *size, generator=torch.Generator().manual_seed(size[1]))
    boxes, features = _ours(tiny_clip, image, mode=mode)
    ref_boxes, expected = global_block_reference(tiny_clip, image, CROP, STRIDE, mode)
    _assert_equal_per_window(boxes, features, ref_boxes, expected)


@pytest.mark.parametrize("mode", ["sclip", "naclip"])
def test_global_block_on_floored_windows_equals_the_equations(tiny_clip, mode):
    """72-pixel windows (4.5 patches) at stride 40, floored to 4 patches, as the benchmark rows encode them."""
    image = torch.randn(3, 100, 140, generator=torch.Generator().manual_seed(5))
    boxes, features = _ours(tiny_clip, image, mode=mode, crop=72, stride=40, floor=True)
    ref_boxes, expected = global_block_reference(tiny_clip, image, 72, 40, mode, floor=True)
    _assert_equal_per_window(boxes, features, ref_boxes, expected)


@pytest.mark.parametrize("size", SIZES)
def test_global_block_with_proxyclip_equals_the_equations(tiny_clip, size):
    torch.manual_seed(3)
    model = timm.create_model(
        "vit_small_patch8_224.dino", pretrained=False, num_classes=0, dynamic_img_size=True, depth=2
    )
    proxy = ProxyBundle.from_model(model, "vit_small_patch8_224.dino", "random")
    image = torch.randn(3, *size, generator=torch.Generator().manual_seed(size[0]))
    boxes, features = _ours(
        tiny_clip, image, proxy=proxy, clip_normalisation=(CLIP_MEAN, CLIP_STD), beta=1.2, gamma=3.0
    )
    ref_boxes, expected = global_proxyclip_reference(
        tiny_clip, proxy, image, CROP, STRIDE, CLIP_MEAN, CLIP_STD, 1.2, 3.0
    )
    _assert_equal_per_window(boxes, features, ref_boxes, expected)


def _labeler(attention: str, global_block: bool, **inference) -> MaskCLIPLabeler:
    config = LabelerConfig(
        model="maskclip-tiny-ViT",
        pretrained="none",
        seed=31,
        classes="cat, dog, grass, sky",
        inference={
            "attention": attention,
            "global_block": global_block,
            "short_side": None,
            "crop": 64,
            "stride": 64,
            "key_smoothing": False,
            "prompt_denoising": False,
            "precision": "fp32",
            **inference,
        },
    )
    return MaskCLIPLabeler.from_config(config, device="cpu")


@pytest.mark.parametrize("attention", ["clearclip", "naclip"])
def test_a_patch_sees_a_far_window_only_with_the_global_block(attention):
    """Four windows side by side (no overlap): repainting the last one changes the first one's confidences
    with the global block, and leaves them bit-identical without it."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 256, 3), dtype=np.uint8)
    planted = image.copy()
    planted[:, 192:] = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for global_block in (False, True):
        labeler = _labeler(attention, global_block)
        before, after = (labeler.label([im])[0].confidence[:, :64] for im in (image, planted))
        if global_block:
            assert np.abs(before - after).max() > 1e-6
        else:
            np.testing.assert_array_equal(before, after)


def test_an_image_past_the_token_budget_is_refused_in_one_line():
    labeler = _labeler("sclip", True, global_block_max_tokens=40)  # 64 x 256 px: 4 x 16 = 64 tokens
    with pytest.raises(ValueError, match=r"4 x 16 = 64 patch tokens, past the budget of 40 \(global_block_max"):
        labeler.label([np.zeros((64, 256, 3), dtype=np.uint8)])
    assert labeler.label([np.zeros((64, 128, 3), dtype=np.uint8)])[0].labels.shape == (64, 128)


def test_the_option_enters_the_hash_only_when_on():
    off = InferenceConfig(precision="fp32").identity()
    assert "global_block" not in off and "global_block_max_tokens" not in off
    on = InferenceConfig(precision="fp32", global_block=True).identity()
    assert on == {**off, "global_block": True}
    budget = InferenceConfig(precision="fp32", global_block=True, global_block_max_tokens=99).identity()
    assert budget == on  # the budget refuses images, it never changes a label


def test_resnets_and_trident_refuse_the_global_block():
    with pytest.raises(ValueError, match="stitches a ViT's tokens; this encoder is a ResNet"):
        MaskCLIPLabeler.from_config(
            LabelerConfig(model="maskclip-tiny-RN", pretrained="none", classes="cat", inference={"global_block": True}),
            device="cpu",
        )
    with pytest.raises(ValueError, match="Trident"):
        LabelerConfig(classes="cat", proxy="dino_vitb8", sam="vit_b", inference={"global_block": True})


def test_the_cli_fills_the_option():
    import argparse

    from cli.fields import field_values
    from cli.options import INFERENCE, add_teacher_options

    parser = argparse.ArgumentParser()
    add_teacher_options(parser)
    args = parser.parse_args(["--classes", "cat", "--global-block", "--global-block-max-tokens", "500"])
    assert field_values(args, INFERENCE) == {"global_block": True, "global_block_max_tokens": 500}


def test_benchmark_methods_with_the_global_block():
    """``maskclip benchmark --method naclip-global`` etc.: the method's own protocol, the global block on."""
    from maskclip_core.benchmark.protocols import METHODS

    for base in ("maskclip", "sclip", "clearclip", "naclip", "proxyclip"):
        row, own = METHODS[f"{base}-global"], METHODS[base]
        # Windows padded centred (ClearCLIP's, ProxyCLIP's) are floored: the global block places end-padded ones.
        centred = own.inference.get("partial_patches") == "pad_centred"
        kept = {k: v for k, v in own.inference.items() if not (centred and k in ("partial_patches", "pad_to"))}
        expected = {**kept, "global_block": True, **({"partial_patches": "floor"} if centred else {})}
        assert row.inference == expected
        assert (row.per_suite, row.defaults, row.labeler_options) == (own.per_suite, own.defaults, own.labeler_options)
        assert row.published_average is None


def test_the_prefect_form_offers_the_option():
    """The labeling deployments' form (LabelerParameters' teacher settings) shows both fields with their bounds."""
    from maskclip_core.labeling.registry import LabelerParameters

    schema = LabelerParameters.model_json_schema()
    inference = schema["$defs"]["InferenceConfig"]["properties"]
    assert inference["global_block"]["default"] is False
    assert inference["global_block_max_tokens"]["minimum"] == 1
