"""Students in bf16 on the CPU: a bf16 channels_last copy of backbone and head against fp32.

Agreement is measured where it means something: students whose BatchNorm statistics fit their inputs (not a
constant map), with the number of classes present in the fp32 labels checked first. The copy follows the
model: reused while its weights are unchanged, rebuilt after they change, and a vocabulary swap needs none.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskclip_core.student import ClassVocabulary, StudentConfig, StudentLabeler, build_student
from maskclip_core.student.inference import low_precision_embedder
from maskclip_core.student.preprocess import image_to_tensor, network_size, normalize, resize_image

K, D = 6, 16
NAMES = ("cat", "dog", "grass", "sky", "road", "tree")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def student(backbone: str, seed: int = 0):
    """A random student whose BatchNorm statistics fit its inputs, so its predictions are not constant."""
    torch.manual_seed(seed)
    config = StudentConfig(
        embed_dim=D,
        backbone=backbone,
        output_stride=16,
        head="deeplabv3",
        head_channels=32,
        temperature=10.0,
        backbone_weights="none",
    )
    model = build_student(config, torch.randn(K, D), ClassVocabulary(NAMES))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 3, 96, 96) * 4 - 2)
    return model.eval()


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((96, 128), (128, 96), (96, 128)):
        coarse = torch.from_numpy(rng.uniform(0, 255, (3, 3, 4)).astype(np.float32))[None]
        big = F.interpolate(coarse, size=(h, w), mode="bicubic")[0].permute(1, 2, 0).numpy()
        out.append(np.clip(big + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


def spread_vocabulary(model, photos: list[np.ndarray]) -> None:
    """Class embeddings = the student's own features at K random positions of the photos: every class then
    wins pixels somewhere (random text embeddings leave a random student with one class everywhere)."""
    with torch.no_grad():
        feats = []
        for im in photos:
            pixels = resize_image(image_to_tensor(im, "cpu"), network_size(im.shape[0], im.shape[1], 96, 32))
            feats.append(model.embed(normalize(pixels[None]))[0].flatten(1))
        feats = torch.cat(feats, dim=1)
    picks = torch.randperm(feats.shape[1], generator=torch.Generator().manual_seed(0))[:K]
    model.set_vocabulary(feats[:, picks].T.contiguous(), ClassVocabulary(NAMES))


# measured (AVX512-BF16 CPU): feature cosine mean 0.999998 / 0.99999, min 0.999995 / 0.99997 (MobileNetV3 /
# ResNet-18); with 6 classes present, pixel agreement 0.973 / 0.972: a random student's features all point
# nearly the same way, so the classes' cosines are close and many pixels sit near a tie.
@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "resnet18"])
def test_bf16_student_agrees_with_fp32(backbone):
    model = student(backbone)
    photos = images()
    spread_vocabulary(model, photos)
    reference = StudentLabeler(model, short_side=96).label(photos)
    present = np.unique(np.concatenate([r.labels.ravel() for r in reference]))
    assert len(present) >= 4, "few classes in the fp32 labels: agreement would say little"
    fast = StudentLabeler(model, short_side=96, precision="bf16")
    results = fast.label(photos)
    agreement = np.mean([(r.labels == e.labels).mean() for r, e in zip(results, reference, strict=True)])
    print(f"{backbone}: {len(present)} classes in fp32 labels, bf16 agreement {agreement:.4f}")
    assert agreement >= 0.95
    for r, e in zip(results, reference, strict=True):
        assert r.labels.dtype == e.labels.dtype and r.confidence.dtype == np.float32
        np.testing.assert_allclose(r.class_scores, e.class_scores, atol=0.05)
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ours = low_precision_embedder(model)(x.to(torch.bfloat16, memory_format=torch.channels_last)).float()
        cos = F.cosine_similarity(ours, model.embed(x), dim=1)
    assert cos.mean() >= 0.9999 and cos.min() >= 0.999


def test_the_copy_follows_the_model_and_fp32_is_untouched():
    model = student("resnet18")
    body = low_precision_embedder(model)
    assert low_precision_embedder(model) is body  # cached while the weights are unchanged
    assert next(body.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        next(model.head.parameters()).add_(1.0)  # a training step, in place
    assert low_precision_embedder(model) is not body
    # a vocabulary swap reuses the copy: the model's own classifier is applied to its features
    body = low_precision_embedder(model)
    model.set_vocabulary(torch.randn(2, D), ClassVocabulary(("a", "b")))
    [result] = StudentLabeler(model, short_side=96, precision="bf16").label(images()[:1])
    assert low_precision_embedder(model) is body and result.class_names == ("a", "b")


def test_precision_enters_the_config_only_when_not_default():
    model = student("resnet18")
    assert "precision" not in StudentLabeler(model).config()
    assert StudentLabeler(model, precision="bf16").config()["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision"):
        StudentLabeler(model, precision="int4")
