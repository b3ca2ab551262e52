"""The teacher's output step and its speed paths on the CPU.

- label maps are uint8 (uint16 past 255 classes), narrowed without changing a label;
- precision bf16 / fp16 / int8 and torch.compile agree with fp32 on a small model (agreement figures stated
  below; measured 0.9989 / 0.9999 / 0.9989 / 1.0 on these scenes), leave fp32 untouched, and enter the
  config hash unless fp32;
- the default precision ("auto") is the device's fast path, resolved when the labeler is built;
- combinations that cannot run are refused with one line when the labeler is built.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.scenes import scene

from maskclip_core.labeling.config_hash import labeling_config_hash
from maskclip_core.labeling.filter import FilterConfig
from maskclip_core.teacher import fast_paths
from maskclip_core.teacher.fast_paths import autocast_dtype, check_precision
from maskclip_core.teacher.labeler import LabelerConfig, MaskCLIPLabeler
from maskclip_core.teacher.window_predictor import InferenceConfig, _to_host, upsample_argmax
from maskclip_core.types import label_dtype

CLASSES = "cat, dog, grass, sky, road, tree"
SMALL = InferenceConfig(short_side=96, crop=64, stride=32, precision="fp32")  # each test names its path
# Pixel agreement with fp32 labels required of each path on the scenes below (random tiny ViT).
AGREEMENT = {"bf16": 0.99, "fp16": 0.99, "int8": 0.99, "compile": 0.999}


IMAGES = [scene(120, 160, 0), scene(150, 100, 1), scene(96, 200, 2)]


def labeler(**inference) -> MaskCLIPLabeler:
    config = LabelerConfig(
        model="maskclip-tiny-ViT", pretrained="none", classes=CLASSES, inference=SMALL.model_copy(update=inference)
    )
    return MaskCLIPLabeler.from_config(config, device="cpu")


@pytest.fixture(scope="module")
def fp32_results() -> list:
    return labeler().label(IMAGES)


def test_label_dtype_is_the_smallest_that_holds_the_classes_and_ignore():
    assert label_dtype(1) == np.uint8 and label_dtype(255) == np.uint8
    assert label_dtype(256) == np.uint16  # index 255 would read as "ignore" in a uint8 map
    assert label_dtype(65535) == np.uint16 and label_dtype(65536) == np.int64


@pytest.mark.parametrize(("classes", "size"), [(3, (301, 257)), (20, (480, 640)), (300, (40, 52))])
@pytest.mark.parametrize("max_elements", [1 << 25, 0])  # whole, and row bands
def test_upsampled_labels_are_narrowed_without_changing_them(classes, size, max_elements):
    g = torch.Generator().manual_seed(classes)
    probs = torch.softmax(torch.randn(classes, 23, 31, generator=g), 0)
    wide, conf_wide = upsample_argmax(probs, size, max_elements or 1)
    dtype = getattr(torch, label_dtype(classes).name)
    labels, conf = upsample_argmax(probs, size, max_elements or 1, dtype=dtype)
    assert wide.dtype == torch.long and labels.dtype == dtype == (torch.uint8 if classes < 256 else torch.uint16)
    assert torch.equal(labels.long(), wide) and torch.equal(conf, conf_wide)
    if max_elements:
        ref = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0].max(dim=0)
        assert torch.equal(conf, ref.values) and torch.equal(labels.long(), ref.indices)


def test_host_maps_share_nothing_surprising_on_cpu():
    maps = [(torch.arange(6, dtype=torch.uint8).reshape(2, 3), torch.rand(2, 3)), (torch.zeros(4, 1), torch.ones(4, 1))]
    host = _to_host(maps)
    for (labels, conf), (hl, hc) in zip(maps, host, strict=True):
        assert np.array_equal(hl, labels.numpy()) and np.array_equal(hc, conf.numpy())


def test_fp32_path_is_the_plain_model_and_returns_uint8_maps(fp32_results):
    lab = labeler()
    assert lab.predictor.encoder is lab.bundle.model and lab.predictor._autocast is None
    for image, result in zip(IMAGES, fp32_results, strict=True):
        assert result.labels.dtype == np.uint8 and result.labels.shape == image.shape[:2]
        assert result.confidence.dtype == np.float32
    # several classes win somewhere, so agreement below is not that of a constant map
    assert len(np.unique(np.concatenate([r.labels.ravel() for r in fp32_results]))) >= 3


@pytest.mark.parametrize("precision", ["bf16", "fp16", "int8"])
def test_precision_paths_agree_with_fp32(fp32_results, precision):
    fast = labeler(precision=precision)
    if precision == "int8":
        mlp = fast.predictor.encoder.visual.transformer.resblocks[0].mlp
        assert isinstance(mlp.c_fc, torch.ao.nn.quantized.dynamic.Linear)
        # the bundle's own model is untouched: other labelers in the process still run fp32
        assert type(fast.bundle.model.visual.transformer.resblocks[0].mlp.c_fc) is torch.nn.Linear
    else:
        # on the CPU a ViT runs from a low-precision copy, without autocast (see fast_paths)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        assert fast.predictor._autocast is None
        block = fast.predictor.encoder.transformer.resblocks[0]
        assert block.mlp.c_fc.weight.dtype == block.attn.in_proj_weight.dtype == dtype
        assert block.ln_1.weight.dtype == fast.predictor.encoder.proj.dtype == torch.float32
        assert fast.bundle.model.visual.transformer.resblocks[0].mlp.c_fc.weight.dtype == torch.float32
        assert fast_paths.low_precision_copy(fast.bundle.model, dtype) is fast.predictor.encoder  # one per model
    results = fast.label(IMAGES)
    agreement = np.mean([(r.labels == e.labels).mean() for r, e in zip(results, fp32_results, strict=True)])
    assert agreement >= AGREEMENT[precision]
    for r, e in zip(results, fp32_results, strict=True):
        assert r.labels.dtype == np.uint8
        np.testing.assert_allclose(r.confidence, e.confidence, atol=0.02)
        np.testing.assert_allclose(r.class_scores, e.class_scores, atol=0.02)


def test_compile_goes_through_torch_compile_once_per_model_and_agrees(fp32_results, monkeypatch):
    # Dynamo's eager backend: the graph capture and guards of the real path, without minutes of C++ builds
    # on a shared CI machine (benchmarks/bench_cpu_paths.py times the default inductor backend).
    calls, real_compile = [], torch.compile

    def eager_compile(fn):
        calls.append(fn)
        return real_compile(fn, backend="eager")

    monkeypatch.setattr(fast_paths.torch, "compile", eager_compile)
    fast = labeler(compile=True)
    fast.bundle.model.__dict__.pop(fast_paths._COMPILED_ATTRIBUTE, None)  # compiled by an earlier test
    results = fast.label(IMAGES)
    fast.set_vocabulary(fast.vocabulary)  # a new predictor for the same model reuses the compiled encoder
    fast.label(IMAGES[:1])
    assert len(calls) == 1
    agreement = np.mean([(r.labels == e.labels).mean() for r, e in zip(results, fp32_results, strict=True)])
    assert agreement >= AGREEMENT["compile"]
    for r, e in zip(results, fp32_results, strict=True):
        np.testing.assert_allclose(r.confidence, e.confidence, atol=1e-4)


def test_the_default_precision_is_the_devices_fast_path(monkeypatch):
    cpu = torch.device("cpu")
    assert InferenceConfig().precision == "auto"
    assert fast_paths.resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert fast_paths.resolve_precision("int8", cpu) == "int8"  # a named precision is kept
    monkeypatch.setattr(fast_paths, "fast_bf16_cpu", lambda: True)
    fast = MaskCLIPLabeler.from_config(
        LabelerConfig(model="maskclip-tiny-ViT", pretrained="none", classes=CLASSES), device="cpu"
    )
    assert fast.inference.precision == "bf16" and fast.config()["inference"]["precision"] == "bf16"
    assert fast.predictor.encoder is fast_paths.low_precision_copy(fast.bundle.model)
    monkeypatch.setattr(fast_paths, "fast_bf16_cpu", lambda: False)
    fast_paths._say_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="no native bf16"):
        assert InferenceConfig().resolved(cpu).precision == "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process, not per labeler
        assert InferenceConfig().resolved(cpu).precision == "fp32"
    with pytest.raises(ValueError, match="resolved"):
        InferenceConfig().identity()  # an unresolved precision names no labeling


def test_half_precision_of_older_configs_is_read_as_a_precision():
    assert InferenceConfig.model_validate({"half_precision": False}).precision == "fp32"
    assert InferenceConfig.model_validate({"half_precision": True}).precision == "auto"
    assert InferenceConfig.model_validate({"half_precision": False, "precision": "bf16"}).precision == "bf16"


def test_precision_enters_the_config_hash_unless_fp32():
    fp32 = InferenceConfig(precision="fp32")
    assert "precision" not in fp32.identity() and "compile" not in fp32.identity()
    assert InferenceConfig(precision="bf16").identity()["precision"] == "bf16"
    assert fp32.model_copy(update={"compile": True}).identity() == fp32.identity()  # speed only, like window_batch
    filters = FilterConfig()
    base = labeling_config_hash(labeler().config(), filters)
    assert labeling_config_hash(labeler(precision="fp32", compile=True).config(), filters) == base
    assert labeling_config_hash(labeler(precision="int8").config(), filters) != base


def test_impossible_combinations_are_refused_in_one_line():
    with pytest.raises(ValueError, match="runs on the CPU only"):
        check_precision("int8", torch.device("cuda"), is_vit=True)
    with pytest.raises(ValueError, match="ResNet"):
        MaskCLIPLabeler.from_config(
            LabelerConfig(
                model="maskclip-tiny-RN", pretrained="none", classes="a, b", inference=InferenceConfig(precision="int8")
            ),
            device="cpu",
        )
    with pytest.raises(ValueError, match="precision"):
        InferenceConfig(precision="int4")


def test_autocast_choice_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("fp32", cuda) is None  # fp32 is fp32
    assert autocast_dtype("fp16", cuda) == torch.float16
    assert autocast_dtype("bf16", cuda) == torch.bfloat16
    assert autocast_dtype("int8", cpu) is None
    # bf16 / fp16 ViTs on the CPU run a low-precision copy instead; ResNets keep autocast
    assert autocast_dtype("bf16", cpu, is_vit=True) is None
    assert autocast_dtype("bf16", cpu, is_vit=False) == torch.bfloat16
    assert autocast_dtype("bf16", cuda, is_vit=True) == torch.bfloat16


def test_uint8_tensors_in_torchvision_layout_label_like_arrays(fp32_results):
    lab = labeler()
    tensors = [torch.from_numpy(im).permute(2, 0, 1).contiguous() for im in IMAGES]
    for r, e in zip(lab.label(tensors), fp32_results, strict=True):
        assert r.labels.shape == e.labels.shape
        assert (r.labels == e.labels).mean() >= 0.999
        np.testing.assert_allclose(r.confidence, e.confidence, atol=1e-4)
    with pytest.raises(ValueError, match=r"uint8 tensor \[3, H, W\]"):
        lab.label([torch.from_numpy(IMAGES[0])])  # [H, W, 3]: the numpy layout as a tensor
