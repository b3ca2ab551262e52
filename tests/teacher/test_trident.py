"""Trident: CLIP + DINO windows spliced and aggregated by SAM's affinity, against a rewrite of the reference's
arithmetic (support/trident_reference.py, from YuHengsss/Trident), with random CLIP, DINO and SAM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from support.scenes import scene
from support.trident_reference import get_sam_feat, get_sam_sim, preprocess_image, reference_trident
from support.vit_reference import max_rel_error

from maskclip_core.teacher.clip_loader import WeightsUnavailableError, load_clip
from maskclip_core.teacher.labeler import LabelerConfig, MaskCLIPLabeler, cached_labeler
from maskclip_core.teacher.proxy import ProxyBundle
from maskclip_core.teacher.sam import load_sam, sam_last_attention, sam_pixels
from maskclip_core.teacher.trident import canvas_shape, sam_affinity, trident_features
from maskclip_core.teacher.trident_labeler import TridentLabeler
from maskclip_core.teacher.vocabulary import Vocabulary
from maskclip_core.teacher.window_predictor import InferenceConfig

# A small SAM encoder (timm's samvit with kwargs): 128-pixel input, 8 x 8 grid, a windowed block then a global one.
SMALL_SAM = {
    "img_size": 128,
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 4,
    "window_size": 4,
    "global_attn_indexes": (1,),
    "neck_chans": 32,
}


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def clip():
    return load_clip("maskclip-tiny-ViT", "none", device="cpu", seed=31)


def _proxy(name: str, seed: int) -> ProxyBundle:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, depth=2)
    return ProxyBundle.from_model(model, name, f"{name}/random-seed{seed}")


def _sam(seed: int = 3, **arch):
    sam = load_sam("vit_b", "none", seed=seed, **{**SMALL_SAM, **arch})
    gen = torch.Generator().manual_seed(seed)
    for block in sam.encoder.blocks:  # timm starts relative positions at zero: make them count
        block.attn.rel_pos_h.copy_(torch.randn(block.attn.rel_pos_h.shape, generator=gen))
        block.attn.rel_pos_w.copy_(torch.randn(block.attn.rel_pos_w.shape, generator=gen))
    return sam


def _normalised(bundle, image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (bundle.mean, bundle.std))
    return (x - mean) / std


def _ours(bundle, proxy, sam, image, *, crop, stride, cos_fac=1.2, refine_neg_cos=True, scaled_positions=False):
    src = _normalised(bundle, image)
    size = canvas_shape(image.shape[0], image.shape[1], bundle.stride, crop)
    canvas = F.interpolate(src, size=size, mode="bilinear", align_corners=False) if size != image.shape[:2] else src
    pixels, (h, w) = sam_pixels(image, sam.input_size)
    valid = (h // sam.patch_size, w // sam.patch_size)
    affinity = sam_affinity(sam_last_attention(sam, pixels), valid, cos_fac, refine_neg_cos)
    norm = (bundle.mean, bundle.std)
    how = "scale_factor" if scaled_positions else "size"
    return trident_features(
        bundle.model, proxy, canvas[0], affinity, valid, norm, crop=crop, stride=stride, position_resize=how
    )


def _check(bundle, proxy, sam, shape, *, crop, stride, seed=0, **kw):
    image = scene(*shape, seed=seed)
    expected = reference_trident(
        bundle.model,
        proxy.model,
        (proxy.mean, proxy.std),
        sam.encoder,
        _normalised(bundle, image),
        image,
        (bundle.mean, bundle.std),
        crop=crop,
        stride=stride,
        **kw,
    )
    actual = _ours(bundle, proxy, sam, image, crop=crop, stride=stride, **kw)
    assert actual.shape == expected.shape
    assert torch.isfinite(expected).all()
    error = max_rel_error(actual, expected)
    assert error <= 1e-4, error
    return actual


@pytest.mark.parametrize("shape", [(352, 352), (300, 420), (420, 300)])
def test_trident_equals_reference_at_base_crop(clip, shape):
    """The reference's crop 336 / stride 224 and DINO with 16-pixel patches; square and not, both ways."""
    _check(clip, _proxy("vit_small_patch16_224.dino", 1), _sam(), shape, crop=336, stride=224)


def test_trident_equals_reference_with_its_scaled_positional_embeddings(clip):
    """position_resize='scale_factor' (the benchmark row's): CLIP's and DINO's positions as the reference's
    open_clip and torch-hub DINO resize them."""
    proxy, sam = _proxy("vit_small_patch16_224.dino", 14), _sam(seed=14)
    scaled = _check(clip, proxy, sam, (300, 420), crop=336, stride=224, scaled_positions=True)
    assert max_rel_error(scaled, _ours(clip, proxy, sam, scene(300, 420, seed=0), crop=336, stride=224)) > 1e-3


def test_trident_equals_reference_many_windows_finer_proxy_and_options(clip):
    """Small windows (six of them, overlapping), a DINO with 8-pixel patches (spliced on a 2x finer grid), a
    larger SAM grid, and the affinity's options (refine_neg_cos off, another cos_fac)."""
    proxy = _proxy("vit_small_patch8_224.dino", 2)
    sam = _sam(seed=4, img_size=256)
    _check(clip, proxy, sam, (150, 230), crop=96, stride=64)
    _check(clip, proxy, sam, (150, 230), crop=96, stride=64, cos_fac=0.5, refine_neg_cos=False)


def test_sam_affinity_equals_reference_per_head_softmax_and_threshold():
    sam = _sam(seed=5, img_size=256)
    image = scene(200, 120, seed=5)
    sam_attn, sam_v, vh, vw = get_sam_feat(sam.encoder, image, 256)
    pixels, (h, w) = sam_pixels(image, 256)
    assert (h // 16, w // 16) == (vh, vw) == (16, 9)
    attention = sam_last_attention(sam, pixels)
    # 50: every threshold capped at 0.9; -1: negative thresholds, kept or replaced by 0.6
    for cos_fac, neg in [(1.2, True), (3.0, False), (50.0, True), (-1.0, False), (-1.0, True)]:
        expected = get_sam_sim(sam_v, sam_attn, cos_fac, 1, neg)[0, 0]
        actual = sam_affinity(attention, (vh, vw), cos_fac, neg)
        assert max_rel_error(actual, expected) <= 1e-5
        torch.testing.assert_close(actual.sum(dim=-1), torch.ones(vh * vw))


@pytest.mark.parametrize("shape", [(300, 420), (500, 500), (200, 700), (336, 336), (37, 50)])
def test_canvas_matches_reference_preprocess(shape):
    expected = preprocess_image(torch.zeros(1, 3, *shape), 16, 336).shape[-2:]
    assert canvas_shape(*shape, 16, 336) == tuple(expected)


def test_canvas_enlarges_small_images_whose_sides_are_whole_patches():
    """The reference returns a 320 x 320 image as it is and then cannot cut a 336 window from it."""
    assert canvas_shape(320, 320, 16, 336) == (336, 336)


def test_labeler_labels_at_the_original_size_and_names_its_parts(clip):
    proxy, sam = _proxy("vit_small_patch16_224.dino", 6), _sam(seed=6)
    vocabulary = Vocabulary.parse("red, green; grass, blue", None)
    inference = InferenceConfig(short_side=96, crop=64, stride=48, logit_scale=40.0, precision="fp32")
    labeler = TridentLabeler(clip, proxy, sam, vocabulary, inference)
    images = [scene(90, 130, seed=7), scene(60, 60, seed=8)]
    results = labeler.label(images)
    for image, result in zip(images, results, strict=True):
        assert result.labels.shape == image.shape[:2] and result.confidence.shape == image.shape[:2]
        assert result.labels.max() < 3 and result.class_names == ("red", "green", "blue")
    assert len(np.unique(results[0].labels)) > 1
    config = labeler.config()
    assert config["labeler"] == "trident" and config["sam"]["weights"].endswith(
        "random-seed6/" + str(sorted(SMALL_SAM.items()))
    )
    assert config["inference"]["crop"] == 64 and config["trident"] == {"cos_fac": 1.2, "refine_neg_cos": True}
    other = TridentLabeler(clip, proxy, sam, vocabulary, inference, cos_fac=2.0)
    assert other.config() != config
    assert max_rel_error(other.features(images[0]), labeler.features(images[0])) > 1e-3
    assert "resize" not in config["inference"] and "position_resize" not in config["inference"]
    # The reference's resizes (the benchmark row's): named in the config, and they change the features.
    reference_like = inference.model_copy(update={"resize": "opencv", "position_resize": "scale_factor"})
    conventions = TridentLabeler(clip, proxy, sam, vocabulary, reference_like)
    assert conventions.config()["inference"]["resize"] == "opencv"
    assert conventions.config()["inference"]["position_resize"] == "scale_factor"
    assert conventions.label(images)[0].labels.shape == images[0].shape[:2]
    assert max_rel_error(conventions.features(images[0]), labeler.features(images[0])) > 1e-3
    # bf16: the encoders under autocast, the affinity (a thresholded comparison) in fp32; close to fp32.
    low = TridentLabeler(clip, proxy, sam, vocabulary, inference.model_copy(update={"precision": "bf16"}))
    assert low.config()["inference"]["precision"] == "bf16"
    assert max_rel_error(low.features(images[0]), labeler.features(images[0])) < 0.1


def test_sam_weights_errors_are_one_line(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        load_sam("vit_b", str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="unknown SAM encoder 'vit_q'"):
        load_sam("vit_q", "none")
    with pytest.raises(ValueError, match="window attention"):
        load_sam("vit_b", "none", **{**SMALL_SAM, "global_attn_indexes": (0,)})


def test_sam_weights_from_a_local_sam_checkpoint(tmp_path):
    """The original SAM release's layout (image_encoder.* keys, mlp.lin1) loads through timm's converter."""
    source = _sam(seed=9)
    state = {f"image_encoder.{k.replace('mlp.fc', 'mlp.lin')}": v for k, v in source.encoder.state_dict().items()}
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 4)  # SAM's other parts are skipped
    path = tmp_path / "sam_small.pth"
    torch.save(state, path)
    loaded = load_sam("vit_b", str(path), **SMALL_SAM)
    for (k, a), b in zip(source.encoder.state_dict().items(), loaded.encoder.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    assert loaded.weights_id != source.weights_id


# Trident chosen where a labeler is chosen: LabelerConfig (the Prefect forms' teacher settings), the CLI options.
# timm's samvit_base_patch16_224 is SAM ViT-B at a 224-pixel input (no absolute positions): fast with random weights.
TRIDENT_CONFIG = {
    "model": "maskclip-tiny-ViT",
    "pretrained": "none",
    "classes": "red, green, blue",
    "proxy": "vit_small_patch16_224.dino",
    "proxy_weights": "none",
    "sam": "samvit_base_patch16_224",
    "sam_weights": "none",
    "inference": InferenceConfig(short_side=96, crop=64, stride=48, precision="fp32"),
}


def test_labeler_config_selects_trident_and_hashes_its_settings():
    from maskclip_core.labeling.config_hash import labeling_config_hash
    from maskclip_core.labeling.filter import FilterConfig
    from maskclip_core.labeling.registry import LabelerParameters, load_labeler

    labeler = load_labeler(LabelerParameters.maskclip(LabelerConfig(**TRIDENT_CONFIG), device="cpu"))
    assert isinstance(labeler, TridentLabeler)
    [result] = labeler.label([scene(70, 100, seed=10)])
    assert result.labels.shape == (70, 100)
    hashes = {
        labeling_config_hash(cached_labeler(LabelerConfig(**{**TRIDENT_CONFIG, **change})).config(), FilterConfig())
        for change in ({}, {"sam_cos_fac": 2.0}, {"sam_refine_neg_cos": False}, {"sam": None})
    }
    assert len(hashes) == 4
    with pytest.raises(ValueError, match="set proxy too"):
        LabelerConfig(**{**TRIDENT_CONFIG, "proxy": None})


def trident_segment_args(tmp_path) -> list[str]:
    """``maskclip segment`` of one 60 x 90 photo in ``tmp_path`` with TRIDENT_CONFIG's options."""
    from PIL import Image

    photo = tmp_path / "a.png"
    Image.fromarray(scene(60, 90, seed=11)).save(photo)
    args = ["segment", str(photo), "--classes", "red, green, blue", "--out", str(tmp_path / "out")]
    args += ["--model", "maskclip-tiny-ViT", "--pretrained", "none", "--short-side", "96", "--crop", "64"]
    args += ["--stride", "48", "--precision", "fp32", "--proxy", "vit_small_patch16_224.dino", "--proxy-weights"]
    return [*args, "none", "--sam", "samvit_base_patch16_224", "--sam-weights", "none"]


def test_cli_segment_with_trident_options(tmp_path):
    from PIL import Image

    from cli.main import main

    photo = tmp_path / "a.png"
    assert main([*trident_segment_args(tmp_path), "--sam-cos-fac", "1.5", "--no-sam-refine-neg-cos"]) == 0
    summary = json.loads((tmp_path / "out" / "segment.json").read_text())
    assert summary["images"][0]["status"] == "labeled"
    assert summary["labeler"]["labeler"] == "trident"
    assert summary["labeler"]["trident"] == {"cos_fac": 1.5, "refine_neg_cos": False}
    config = LabelerConfig(**{**TRIDENT_CONFIG, "sam_cos_fac": 1.5, "sam_refine_neg_cos": False})
    [expected] = MaskCLIPLabeler.from_config(config).label([np.asarray(Image.open(photo))])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "a_labels.png")), expected.labels)


def test_trident_equals_reference_base_architectures():
    """The reference's architectures with random weights: ViT-B/16 CLIP, DINO ViT-B/16, SAM ViT-B (12 blocks,
    14 x 14 windows padded on a 16 x 16 grid; input 256 instead of 1024 to stay fast)."""
    clip = load_clip("ViT-B-16", "none", device="cpu", seed=32)
    torch.manual_seed(12)
    dino = timm.create_model("vit_base_patch16_224.dino", pretrained=False, num_classes=0, dynamic_img_size=True)
    proxy = ProxyBundle.from_model(dino, "vit_base_patch16_224.dino", "random")
    sam = load_sam("vit_b", "none", seed=13, img_size=256)
    gen = torch.Generator().manual_seed(13)
    for block in sam.encoder.blocks:
        block.attn.rel_pos_h.copy_(torch.randn(block.attn.rel_pos_h.shape, generator=gen) * 0.1)
        block.attn.rel_pos_w.copy_(torch.randn(block.attn.rel_pos_w.shape, generator=gen) * 0.1)
    _check(clip, proxy, sam, (300, 420), crop=336, stride=224)


def test_prefect_forms_offer_trident():
    """The deployments' teacher settings (LabelerConfig's fields but the classes) carry Trident's, and the flows'
    classes complete them into a Trident LabelerConfig."""
    from maskclip_core.labeling.registry import LabelerParameters, TeacherSettings

    assert {"sam", "sam_weights", "sam_cos_fac", "sam_refine_neg_cos"} <= set(TeacherSettings.model_fields)
    settings = {k: v for k, v in TRIDENT_CONFIG.items() if k != "classes"}
    spec = LabelerParameters(config=TeacherSettings(**settings)).with_classes("cat, dog")
    assert spec.config.sam == "samvit_base_patch16_224" and spec.config.classes == "cat, dog"
