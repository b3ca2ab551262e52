"""The CUDA paths give the CPU's numbers: CLIP's dense features, the teacher's and the student's labels
(fp32, and fp16 autocast within its tolerance), the text-classifier cache across devices, and a student
trained on the GPU that resumes on the CPU. Skipped where PyTorch sees no CUDA device (CI has none); run
on a GPU machine with ``pytest tests/gpu``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.planted_student import (
    NAMES,
    miou,
    planted,
    planted_train_config,
    small_student,
    text_embeddings,
    threshold_filter,
)

from maskclip_core.student import ClassVocabulary, RoundEnd, Sample, StudentLabeler, fit_student
from maskclip_core.teacher.clip_loader import load_clip
from maskclip_core.teacher.dense import dense_features
from maskclip_core.teacher.labeler import LabelerConfig, MaskCLIPLabeler
from maskclip_core.teacher.window_predictor import InferenceConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CLASSES = "cat, dog, grass; lawn, sky, road, tree"


@pytest.fixture(autouse=True)
def full_fp32() -> Iterator[None]:
    # TF32 (cuDNN's default for convolutions) differs from the CPU by ~1e-3: compare true fp32 here.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour regions with noise: varied enough that windows disagree, deterministic."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(4, 6, 3)).astype(np.float32)
    big = F.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(height, width), mode="bicubic")
    image = big[0].permute(1, 2, 0).numpy() + rng.normal(0, 10, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float().cpu() - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("name", ["ViT-B-16", "RN50"])
@torch.inference_mode()
def test_dense_features_on_cuda_equal_cpu(name: str) -> None:
    cpu = load_clip(name, "none", device="cpu", seed=3)
    gpu = load_clip(name, "none", device="cuda", seed=3)
    # Seeded random weights do not depend on the device (open_clip builds on the CPU, then moves).
    for (key, a), b in zip(cpu.model.state_dict().items(), gpu.model.state_dict().values(), strict=True):
        assert torch.equal(a, b.cpu()), key
    for shape in [(224, 224), (192, 320)]:
        pixels = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(0))
        f_cpu, k_cpu = dense_features(cpu.model, pixels)
        f_gpu, k_gpu = dense_features(gpu.model, pixels.cuda())
        assert f_gpu.is_cuda and f_gpu.shape == f_cpu.shape
        assert relative_error(f_gpu, f_cpu) < 1e-4
        assert relative_error(k_gpu, k_cpu) < 1e-4
        with torch.autocast("cuda", dtype=torch.float16):
            f16, k16 = dense_features(gpu.model, pixels.cuda())
        # fp16 changes values, not directions: what the cosine classifier sees.
        assert F.cosine_similarity(f16.float().cpu(), f_cpu, dim=1).min() > 0.995
        assert F.cosine_similarity(k16.float().cpu(), k_cpu, dim=1).min() > 0.995


def compare_results(gpu: list, cpu: list, *, label_agreement: float, prob_atol: float) -> None:
    for g, c in zip(gpu, cpu, strict=True):
        assert g.labels.shape == c.labels.shape and g.class_names == c.class_names
        np.testing.assert_allclose(g.class_scores, c.class_scores, atol=prob_atol)
        np.testing.assert_allclose(g.confidence, c.confidence, atol=prob_atol)
        assert (g.labels == c.labels).mean() >= label_agreement
        # A class is dropped on one device and kept on the other only at a max probability of ~0.5.
        differ = g.dropped != c.dropped
        assert np.all(np.abs(c.class_scores[differ] - 0.5) < prob_atol)


@pytest.fixture(scope="module")
def labeled_on_cpu(tmp_path_factory) -> tuple[Path, list[np.ndarray], list]:
    cache = tmp_path_factory.mktemp("text-cache")
    images = [scene(300, 500, 0), scene(480, 640, 1), scene(97, 203, 2), scene(700, 260, 3)]
    inference = InferenceConfig(window_batch=4, precision="fp32")  # the reference
    cfg = LabelerConfig(model="ViT-B-16", pretrained="none", classes=CLASSES, inference=inference)
    return cache, images, MaskCLIPLabeler.from_config(cfg, device="cpu", text_cache_dir=str(cache)).label(images)


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_labeler_on_cuda_equals_cpu(labeled_on_cpu, precision: str) -> None:
    cache, images, expected = labeled_on_cpu
    inference = InferenceConfig(window_batch=4, precision=precision)
    cfg = LabelerConfig(model="ViT-B-16", pretrained="none", classes=CLASSES, inference=inference)
    # The same disk cache: the CPU-built text classifier is loaded onto the GPU.
    labeler = MaskCLIPLabeler.from_config(cfg, device="cuda", text_cache_dir=str(cache))
    assert labeler.classifier.embeddings.is_cuda
    fresh = MaskCLIPLabeler.from_config(cfg, device="cuda", text_cache_dir=str(cache / "fresh"))
    torch.testing.assert_close(fresh.classifier.embeddings, labeler.classifier.embeddings, atol=1e-5, rtol=0)
    results = labeler.label(images)
    assert labeler.inference.precision == {"fp32": "fp32", "auto": "fp16"}[precision]  # CUDA's default is fp16
    if precision == "auto":
        compare_results(results, expected, label_agreement=0.97, prob_atol=0.03)
    else:
        compare_results(results, expected, label_agreement=0.999, prob_atol=1e-3)
    # Batched on the GPU equals one by one on the GPU.
    single = [labeler.label([im])[0] for im in images]
    compare_results(single, results, label_agreement=0.999, prob_atol=1e-3)


class Interrupt(Exception):
    pass


def test_student_trained_on_cuda_resumes_and_labels_on_cpu(tmp_path: Path) -> None:
    images, masks, pseudo = planted(48, 1)
    pool = planted(48, 2)[0]
    eval_images, eval_masks, _ = planted(24, 3)
    config = planted_train_config()
    samples = [Sample(im, lab) for im, lab in zip(images, pseudo, strict=True)]

    def run(device: str, on_round_end=None):
        return fit_student(
            small_student(),
            text_embeddings(),
            ClassVocabulary(NAMES),
            samples,
            config,
            unlabeled=pool,
            label_filter=threshold_filter(0.5),
            checkpoint_url=str(tmp_path / "ckpt"),
            device=device,
            on_round_end=on_round_end,
        )

    def stop_after_round_0(end: RoundEnd) -> None:
        if end.round == 0:
            raise Interrupt

    with pytest.raises(Interrupt):  # a preempted GPU job: round 0 checkpointed on CUDA
        run("cuda", stop_after_round_0)
    result = run("cpu")  # picked up on a CPU machine: optimizer state and weights move across
    assert result.resumed_from_round == 0
    assert next(result.model.parameters()).device.type == "cpu"

    cpu = StudentLabeler.from_checkpoint(result.checkpoint_url, device="cpu", short_side=None)
    on_cpu = cpu.label(eval_images)
    for half, agreement, atol in [(False, 0.999, 1e-3), (True, 0.98, 0.03)]:
        gpu = StudentLabeler.from_checkpoint(result.checkpoint_url, device="cuda", short_side=None, half_precision=half)
        on_gpu = gpu.label(eval_images)
        compare_results(on_gpu, on_cpu, label_agreement=agreement, prob_atol=atol)
        assert miou([r.labels for r in on_gpu], eval_masks) > miou(pseudo, masks) + 0.05


# --- fast paths (issue 13): precision on CUDA, one pinned upload per batch, JPEGs decoded on the GPU ----------


def _teacher(cache: Path, **inference) -> MaskCLIPLabeler:
    inference = InferenceConfig(window_batch=4, **inference)
    cfg = LabelerConfig(model="ViT-B-16", pretrained="none", classes=CLASSES, inference=inference)
    return MaskCLIPLabeler.from_config(cfg, device="cuda", text_cache_dir=str(cache))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_precision_option_on_cuda_within_the_fp16_tolerance(labeled_on_cpu, precision: str) -> None:
    cache, images, expected = labeled_on_cpu
    labeler = _teacher(cache, precision=precision)
    assert labeler.predictor._autocast == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    compare_results(labeler.label(images), expected, label_agreement=0.97, prob_atol=0.03)


def test_int8_is_refused_on_cuda(labeled_on_cpu) -> None:
    with pytest.raises(ValueError, match="CPU only"):
        _teacher(labeled_on_cpu[0], precision="int8")


def test_one_pinned_upload_per_batch_equals_tensors_uploaded_one_by_one(labeled_on_cpu) -> None:
    cache, images, expected = labeled_on_cpu
    labeler = _teacher(cache, precision="fp32")
    batched = labeler.label(images)  # numpy arrays: one pinned buffer, one copy, one copy back per map kind
    tensors = [torch.from_numpy(im).permute(2, 0, 1).contiguous().cuda() for im in images]
    one_by_one = [labeler.label([t])[0] for t in tensors]
    for result, image in zip(batched, images, strict=True):
        assert result.labels.dtype == np.uint8 and result.labels.shape == image.shape[:2]
        assert result.confidence.dtype == np.float32 and result.confidence.shape == image.shape[:2]
    compare_results(one_by_one, batched, label_agreement=0.999, prob_atol=1e-3)
    compare_results(batched, expected, label_agreement=0.999, prob_atol=1e-3)


def test_jpegs_decoded_on_the_gpu_label_like_cpu_decoded_ones(labeled_on_cpu) -> None:
    import io

    from PIL import Image

    from maskclip_core.labeling.decode import decode_image
    from maskclip_core.labeling.device_decode import decode_jpegs_on_device

    cache, images, _ = labeled_on_cpu
    jpegs = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=95)
        jpegs.append(buf.getvalue())
    on_gpu = decode_jpegs_on_device([*jpegs, b"not a jpeg"], "cuda")
    assert on_gpu[-1] is None  # left for the CPU decoder and its rejection reason
    on_cpu = [decode_image(data).rgb for data in jpegs]
    for g, c in zip(on_gpu, on_cpu, strict=False):
        assert g is not None and g.is_cuda and g.dtype == torch.uint8 and g.shape == (3, *c.shape[:2])
        # nvJPEG and libjpeg-turbo use different IDCTs: a grey level here and there
        assert np.abs(g.permute(1, 2, 0).cpu().numpy().astype(int) - c).mean() < 1.0
    labeler = _teacher(cache, precision="fp32")
    expected = MaskCLIPLabeler.from_config(
        LabelerConfig(
            model="ViT-B-16",
            pretrained="none",
            classes=CLASSES,
            inference=InferenceConfig(window_batch=4, precision="fp32"),
        ),
        device="cpu",
        text_cache_dir=str(cache),
    ).label(on_cpu)
    compare_results(labeler.label(on_gpu[:-1]), expected, label_agreement=0.97, prob_atol=0.03)
