"""Student network: shapes, the frozen text classifier (cosine x temperature, synonyms, swapping),
backbone weights (local file, ImageNet download and its offline error) and the Labeler contract."""

from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torchvision import models

from maskclip_core.student import (
    BackboneWeightsUnavailable,
    ClassVocabulary,
    StudentConfig,
    StudentLabeler,
    build_backbone,
    build_student,
)
from maskclip_core.student.preprocess import network_size

K, D = 4, 16
NAMES = ("cat", "dog", "grass", "sky")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def embeddings(k: int = K, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, D, generator=torch.Generator().manual_seed(seed))


def config(backbone: str = "resnet18", output_stride: int = 16, head: str = "deeplabv3", **kw) -> StudentConfig:
    return StudentConfig(
        embed_dim=D,
        backbone=backbone,
        output_stride=output_stride,
        head=head,
        head_channels=32,
        temperature=kw.pop("temperature", 10.0),
        backbone_weights=kw.pop("backbone_weights", "none"),
    )


def student(seed: int = 0, **kw):
    """A random student whose BatchNorm statistics fit its inputs, so its predictions are not constant."""
    torch.manual_seed(seed)
    model = build_student(config(**kw), embeddings(), ClassVocabulary(NAMES))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 3, 64, 64) * 4 - 2)
    return model.eval()


@pytest.mark.parametrize(
    "backbone, output_stride, head",
    [
        ("resnet18", 8, "deeplabv3"),
        ("resnet18", 16, "deeplabv2"),
        ("resnet50", 8, "deeplabv2"),
        ("resnet101", 16, "deeplabv3"),
        ("mobilenet_v3_large", 16, "deeplabv3"),
        ("mobilenet_v3_large", 8, "deeplabv2"),
    ],
)
def test_shapes_and_output_stride(backbone: str, output_stride: int, head: str) -> None:
    model = student(backbone=backbone, output_stride=output_stride, head=head)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = model.embed(x)
        logits = model(x)
    assert feats.shape == (2, D, 64 // output_stride, 96 // output_stride)
    assert logits.shape == (2, K, 64, 96)
    assert logits.abs().max() <= 10.0 + 1e-4  # |temperature * cosine| <= temperature


def test_logits_are_temperature_times_cosine_to_normalised_text_embeddings() -> None:
    model = student(temperature=7.0)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        feats = model.embed(x)
        logits = model(x, upsample=False)
    text = F.normalize(embeddings(), dim=1)
    expected = 7.0 * torch.einsum("bdhw,kd->bkhw", F.normalize(feats, dim=1), text)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.classifier.embeddings.norm(dim=1), torch.ones(K))


def test_text_embeddings_are_frozen_buffers_saved_with_the_weights() -> None:
    model = student().train()
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("classifier.") for n in names)
    assert "classifier.embeddings" in model.state_dict()
    before = model.classifier.embeddings.clone()
    head_before = model.head[-1].weight.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.randint(0, K, (2, 32, 32)))
    loss.backward()
    opt.step()
    assert torch.equal(model.classifier.embeddings, before)
    assert not torch.equal(model.head[-1].weight, head_before)  # the projection to text space does learn


def test_synonym_logits_are_max_pooled_per_class() -> None:
    model = student()
    queries = embeddings(6, seed=3)
    q2c = (0, 1, 1, 2, 3, 3)  # dog and sky have two queries each
    x = torch.randn(1, 3, 48, 48)
    model.set_vocabulary(queries, ClassVocabulary(tuple(f"q{i}" for i in range(6))))
    with torch.no_grad():
        per_query = model(x)
    model.set_vocabulary(queries, ClassVocabulary(NAMES, q2c))
    with torch.no_grad():
        per_class = model(x)
    assert per_class.shape == (1, K, 48, 48)
    for c in range(K):
        rows = [q for q, cls in enumerate(q2c) if cls == c]
        torch.testing.assert_close(per_class[:, c], per_query[:, rows].amax(dim=1))


def test_swapping_the_classifier_renames_reorders_and_adds_classes() -> None:
    model = student(seed=1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # Text embeddings taken from the network's own features at 4 places: each class surely wins
        # somewhere, so the predictions below are not a constant map.
        feats = model.embed(x)[0].flatten(1)
        text = feats[:, [0, 5, 10, 15]].T.contiguous()
        model.set_vocabulary(text, ClassVocabulary(NAMES))
        base = model(x, upsample=False)
    assert len(base.argmax(1).unique()) == K

    perm = [3, 1, 0, 2]  # new class j is old class perm[j]
    model.set_vocabulary(text[perm], ClassVocabulary(tuple(NAMES[p] for p in perm)))
    with torch.no_grad():
        permuted = model(x, upsample=False)
    torch.testing.assert_close(permuted, base[:, perm])
    assert torch.equal(permuted.argmax(1), torch.as_tensor(np.argsort(perm))[base.argmax(1)])

    extra = torch.cat([text, embeddings(1, seed=9)])
    model.set_vocabulary(extra, ClassVocabulary((*NAMES, "tree")))
    with torch.no_grad():
        added = model(x, upsample=False)
    assert added.shape[1] == K + 1 and model.class_names[-1] == "tree"
    torch.testing.assert_close(added[:, :K], base)


def test_vocabulary_validation() -> None:
    with pytest.raises(ValueError, match="without a query"):
        ClassVocabulary(("a", "b", "c"), (0, 0, 1))
    with pytest.raises(ValueError, match="outside"):
        ClassVocabulary(("a", "b"), (0, 1, 2))
    with pytest.raises(ValueError):
        ClassVocabulary(())
    model = student()
    with pytest.raises(ValueError, match="queries"):
        model.set_vocabulary(embeddings(3), ClassVocabulary(NAMES))
    with pytest.raises(ValueError, match="dim"):
        model.set_vocabulary(torch.randn(K, D + 1), ClassVocabulary(NAMES))
    with pytest.raises(ValueError, match="dim"):
        build_student(config(), torch.randn(K, D + 2), ClassVocabulary(NAMES))
    vocab = ClassVocabulary(("a", "b"), (0, 1, 1))
    assert ClassVocabulary.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab
    cfg = config(head="deeplabv2")
    assert StudentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# --- backbone weights -------------------------------------------------------------------------------


def _reference(name: str) -> torch.nn.Module:
    """A torchvision classifier with distinctive weights and BatchNorm statistics."""
    torch.manual_seed(123)
    model = getattr(models, name)(weights=None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_large"])
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_backbone_weights_from_a_local_path(tmp_path, name: str, fmt: str) -> None:
    ref = _reference(name)
    path = tmp_path / f"{name}.{fmt}"
    state = ref.state_dict()
    if fmt == "pth":
        torch.save({"state_dict": state}, path)  # wrapped, as many training scripts save
    else:
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    torch.manual_seed(0)
    model = build_student(config(backbone=name, backbone_weights=str(path)), embeddings(), ClassVocabulary(NAMES))
    if name == "resnet18":
        pairs = [
            (model.backbone.conv1.weight, ref.conv1.weight),
            (model.backbone.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var),
            (model.backbone.layer3[0].conv1.weight, ref.layer3[0].conv1.weight),
        ]
    else:
        pairs = [
            (model.backbone[0][0].weight, ref.features[0][0].weight),
            (model.backbone[-1][1].running_mean, ref.features[-1][1].running_mean),
        ]
    for mine, theirs in pairs:
        assert torch.equal(mine, theirs)


def test_backbone_weights_that_do_not_fit_are_rejected(tmp_path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(_reference("resnet50").state_dict(), path)
    with pytest.raises(ValueError, match="do not fit resnet18.*wrong shape"):
        build_backbone("resnet18", 16, str(path))


def test_imagenet_weights_offline_give_a_clear_error(monkeypatch) -> None:
    calls = []

    def offline(url, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(BackboneWeightsUnavailable) as info:
        build_student(config(backbone="resnet50", backbone_weights="imagenet"), embeddings(), ClassVocabulary(NAMES))
    message = str(info.value)
    url = models.ResNet50_Weights.IMAGENET1K_V1.url
    assert calls == [url]
    assert url in message and "name resolution" in message
    assert "backbone_weights='/path/to/resnet50-0676ba61.pth'" in message  # the fix: a local path
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_imagenet_weights_through_torchvision_when_reachable(monkeypatch) -> None:
    ref = _reference("resnet18")
    seen = {}

    def download(url, **kwargs):
        seen.update(url=url, **kwargs)
        return ref.state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    backbone, channels = build_backbone("resnet18", 8, "imagenet")
    assert seen["url"] == models.ResNet18_Weights.IMAGENET1K_V1.url and seen["check_hash"] is True
    assert channels == 512 and torch.equal(backbone.layer2[0].conv1.weight, ref.layer2[0].conv1.weight)


def test_unknown_backbone_and_stride() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("resnet18", 32)
    with pytest.raises(ValueError, match="head"):
        StudentConfig(head="fpn")


# --- the student as a Labeler ------------------------------------------------------------------------


def test_network_size_scales_the_short_side_and_rounds_to_the_multiple() -> None:
    assert network_size(480, 640, 448) == (448, 608)  # 597.3 -> 608
    assert network_size(640, 427, 448) == (672, 448)  # 671.4 -> 672
    assert network_size(480, 640, 448, None) == (448, 597)
    assert network_size(30, 41, None) == (30, 41)  # no resizing, no rounding
    assert network_size(1000, 20, 16) == (800, 32)  # never below one multiple


def test_student_labeler_contract() -> None:
    labeler = StudentLabeler(student(seed=2), short_side=64, batch_size=2, device="cpu")
    seen_sizes = []
    labeler.model.backbone.register_forward_pre_hook(lambda m, args: seen_sizes.append(tuple(args[0].shape)))
    rng = np.random.default_rng(0)
    sizes = [(50, 70), (70, 50), (50, 70), (33, 41), (50, 70)]
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]
    results = labeler.label(images)

    assert labeler.class_names == NAMES
    # Short side resized to 64, sides rounded to multiples of 32 (41 * 64 / 33 = 79.5 -> 80 -> 64);
    # same-size images share batches of at most 2.
    assert sorted(seen_sizes) == sorted([(2, 3, 64, 96), (1, 3, 64, 96), (1, 3, 96, 64), (1, 3, 64, 64)])
    for image, res in zip(images, results, strict=True):
        assert res.size == image.shape[:2]
        assert res.labels.dtype == np.uint8 and res.labels.min() >= 0 and res.labels.max() < K
        assert res.confidence.dtype == np.float32 and res.confidence.shape == image.shape[:2]
        assert res.confidence.min() >= 1 / K - 1e-6 and res.confidence.max() <= 1 + 1e-6
        assert res.class_scores.dtype == np.float32 and res.class_scores.shape == (K,)
        assert res.dropped.dtype == bool and not res.dropped.any()
        assert res.class_names == NAMES
        for c in np.unique(res.labels):
            assert res.class_scores[c] == pytest.approx(res.confidence[res.labels == c].max())
    # A result does not depend on which other images were labeled with it.
    alone = labeler.label([images[2]])[0]
    np.testing.assert_array_equal(alone.labels, results[2].labels)
    np.testing.assert_allclose(alone.confidence, results[2].confidence, atol=1e-5)
    # size_multiple=None: the exact short-side size.
    seen_sizes.clear()
    exact = StudentLabeler(labeler.model, short_side=64, batch_size=2, device="cpu", size_multiple=None)
    assert [r.size for r in exact.label(images)] == sizes
    assert sorted(seen_sizes) == sorted([(2, 3, 64, 90), (1, 3, 64, 90), (1, 3, 90, 64), (1, 3, 64, 80)])
    assert exact.config()["size_multiple"] is None

    cfg = labeler.config()
    json.dumps(cfg)
    assert cfg["short_side"] == 64 and cfg["round"] is None and cfg["model"]["backbone"] == "resnet18"
    labeler.set_vocabulary(embeddings(seed=5), ClassVocabulary(NAMES))
    assert labeler.config()["text_embeddings_sha256"] != cfg["text_embeddings_sha256"]
