"""NACLIP, ProxyCLIP and PAMR through the labeler: configuration, hashing, caching, odd window sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskclip_core.labeling.config_hash import labeling_config_hash
from maskclip_core.labeling.filter import FilterConfig
from maskclip_core.labeling.registry import LabelerParameters, load_labeler
from maskclip_core.teacher.clip_loader import WeightsUnavailableError
from maskclip_core.teacher.labeler import LabelerConfig, MaskCLIPLabeler
from maskclip_core.teacher.proxy import load_proxy
from maskclip_core.teacher.window_predictor import InferenceConfig

SMALL = InferenceConfig(short_side=64, crop=64, stride=48, key_smoothing=False, prompt_denoising=False)


def _config(**kwargs) -> LabelerConfig:
    fields = {"model": "maskclip-tiny-ViT", "pretrained": "none", "classes": "red, blue", "inference": SMALL}
    return LabelerConfig(**{**fields, **kwargs})


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_default_configuration_hash_has_no_new_keys():
    """Options that are off stay out of the identity: labels made before these options keep their hash."""
    identity = InferenceConfig().resolved("cpu").identity()
    assert not {k for k in identity if k.startswith(("pamr", "proxy"))}
    on = InferenceConfig(pamr=True, pamr_iterations=3).resolved("cpu").identity(proxy=True)
    assert on["pamr_iterations"] == 3 and on["pamr_dilations"] == [8, 16] and on["proxy_gamma"] == 3.0
    # The references' conventions (issue 22) name labels only where they change them.
    conventions = {"merge", "class_scores", "background_wins_ties", "area_threshold", "position_resize", "resize"}
    assert not conventions & set(identity) and "partial_patches" not in identity
    reference = {"merge": "logits", "key_smoothing": False, "prompt_denoising": False, "resize": "opencv"}
    named = InferenceConfig(**reference).resolved("cpu").identity()
    assert (named["merge"], named["resize"]) == ("logits", "opencv") and "class_scores" not in named


def test_reference_conventions_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="need merge='logits'"):
        InferenceConfig(class_scores="query_share")
    with pytest.raises(ValueError, match="need merge='logits'"):
        InferenceConfig(area_threshold=0.1)
    with pytest.raises(ValueError, match="no key smoothing / prompt denoising"):
        InferenceConfig(merge="logits")
    with pytest.raises(ValueError, match="pad_to is the multiple of partial_patches='pad_centred'"):
        InferenceConfig(pad_to=56)


def test_proxy_cannot_be_combined_with_another_attention():
    with pytest.raises(ValueError, match="proxy encoder replaces"):
        _config(proxy="dino_vits8", proxy_weights="none", inference=SMALL.model_copy(update={"attention": "naclip"}))


@pytest.mark.parametrize(
    "config",
    [
        _config(inference=SMALL.model_copy(update={"attention": "naclip"})),
        _config(inference=SMALL.model_copy(update={"pamr": True, "pamr_iterations": 2})),
        _config(proxy="dinov2_vits14_reg", proxy_weights="none"),
        _config(proxy="dino_vits8", proxy_weights="none", inference=SMALL.model_copy(update={"pamr": True})),
    ],
    ids=["naclip", "pamr", "proxy-dinov2", "proxy-dino+pamr"],
)
def test_labelers_label_odd_sizes(config):
    labeler = MaskCLIPLabeler.from_config(config, device="cpu")
    results = labeler.label([_image(70, 150, 1), _image(45, 45, 2)])
    assert [r.labels.shape for r in results] == [(70, 150), (45, 45)]
    for r in results:
        assert np.isfinite(r.confidence).all() and (r.confidence > 0).all() and (r.confidence <= 1 + 1e-6).all()


def test_proxy_identity_in_the_config_hash_and_one_proxy_per_worker():
    a = LabelerParameters.maskclip(_config(proxy="dino_vits8", proxy_weights="none"), device="cpu")
    spec_json = a.model_dump_json()  # what Prefect stores as the flow parameter
    assert LabelerParameters.model_validate_json(spec_json) == a
    labeler = load_labeler(a)
    assert labeler.predictor.stride == 8  # features on DINO's 8-pixel grid
    config = labeler.config()
    assert config["proxy"] == {
        "model": "vit_small_patch8_224.dino",
        "weights": "vit_small_patch8_224.dino/random-seed0",
    }

    other_classes = MaskCLIPLabeler.from_config(_config(proxy="dino_vits8", proxy_weights="none", classes="sky"))
    assert other_classes.proxy is labeler.proxy  # loaded once per process, shared

    filters = FilterConfig()
    plain = MaskCLIPLabeler.from_config(_config()).config()
    other_seed = MaskCLIPLabeler.from_config(_config(proxy="dino_vits8", proxy_weights="none", seed=1)).config()
    hashes = {labeling_config_hash(c, filters) for c in (config, plain, other_seed)}
    assert len(hashes) == 3


def test_proxy_weights_file_and_clear_errors(tmp_path):
    proxy = load_proxy("dino_vits8", "none", seed=3)
    path = tmp_path / "dino.pth"
    torch.save(proxy.model.state_dict(), path)
    loaded = load_proxy("dino_vits8", str(path))
    assert loaded.weights_id.startswith("vit_small_patch8_224.dino/sha256:")
    weights, reloaded = proxy.model.state_dict(), loaded.model.state_dict()
    assert weights.keys() == reloaded.keys() and all(torch.equal(weights[k], reloaded[k]) for k in weights)
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        load_proxy("dino_vits8", str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="unknown proxy encoder"):
        load_proxy("not_a_model_anywhere", "none")
    with pytest.raises(ValueError, match="needs a ViT"):
        MaskCLIPLabeler.from_config(
            LabelerConfig(
                model="maskclip-tiny-RN", pretrained="none", classes="a", proxy="dino_vits8", proxy_weights="none"
            )
        )
