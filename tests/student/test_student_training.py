"""The student learns: trained on CLIP-like corrupted pseudo-labels of a planted dataset it beats those
labels against the true masks, self-training keeps it there, and its classifier can be swapped.
Also: augmentation, deterministic batches, the schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.planted_student import (
    NAMES,
    SEED,
    miou,
    native,
    planted,
    planted_train_config,
    small_student,
    text_embeddings,
    threshold_filter,
)

from maskclip_core.student import (
    AugmentConfig,
    ClassVocabulary,
    Sample,
    TrainConfig,
    augment,
    fit_student,
    make_batch,
    phase_ends,
    poly_lr,
    predict,
)
from maskclip_core.student.data import batch_indices
from maskclip_core.types import IGNORE_INDEX

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained():
    images, masks, pseudo = planted(48, SEED)
    pool = planted(48, SEED + 1)[0]
    eval_images, eval_masks, _ = planted(24, SEED + 2)
    config = planted_train_config()
    result = fit_student(
        small_student(),
        text_embeddings(),
        ClassVocabulary(NAMES),
        [Sample(im, lab) for im, lab in zip(images, pseudo, strict=True)],
        config,
        unlabeled=pool,
        label_filter=threshold_filter(0.5),
        eval_pairs=list(zip(eval_images, eval_masks, strict=True)),
    )
    teacher = miou(pseudo, masks)  # the labels it was trained on, against the truth
    return result, teacher, eval_images, eval_masks


def test_student_beats_its_corrupted_pseudo_labels(trained) -> None:
    result, teacher, _, _ = trained
    assert 0.35 < teacher < 0.55  # the corruption is as heavy as intended
    first = result.metrics[0]
    assert (first["round"], first["iteration"]) == (0, 48)
    assert set(first["per_class_iou"]) == set(NAMES)
    assert first["miou"] > teacher + 0.1, (first["miou"], teacher)
    assert first["pixel_accuracy"] > 0.75


def test_self_training_round_does_not_lower_miou(trained) -> None:
    result, teacher, _, _ = trained
    before, after = result.metrics
    assert (after["round"], after["iteration"]) == (1, 80)
    # Tolerance: the 24-image evaluation moves by about a point between equally good students.
    assert after["miou"] >= before["miou"] - 0.03, (before["miou"], after["miou"])
    assert after["miou"] > teacher + 0.1


def test_renaming_classes_permutes_predictions_without_retraining(trained) -> None:
    result, _, images, _ = trained
    model = result.model
    before = predict(model, images[:6], short_side=None)
    perm = [2, 0, 3, 1]  # new class j is old class perm[j]
    new_names = ClassVocabulary(tuple(f"renamed-{NAMES[p]}" for p in perm))
    model.set_vocabulary(text_embeddings()[perm], new_names)
    try:
        after = predict(model, images[:6], short_side=None)
    finally:
        model.set_vocabulary(text_embeddings(), ClassVocabulary(NAMES))
    old_to_new = np.argsort(perm)
    for b, a in zip(before, after, strict=True):
        assert len(np.unique(b.labels)) >= 2  # a non-trivial prediction
        assert a.class_names == new_names.class_names
        np.testing.assert_array_equal(a.labels, old_to_new[b.labels])
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-6)
        np.testing.assert_allclose(a.class_scores, b.class_scores[perm], atol=1e-6)


def test_phase_ends_and_poly_lr() -> None:
    assert phase_ends(8000, 2, 0.1) == [800, 4400, 8000]
    assert phase_ends(100, 0, 0.1) == [100]
    assert phase_ends(10, 3, 0.1) == [1, 4, 7, 10]
    with pytest.raises(ValueError):
        phase_ends(2, 3, 0.1)
    config = TrainConfig(iterations=100, lr=0.01, min_lr=1e-4, poly_power=0.9)
    assert poly_lr(config, 0) == pytest.approx(0.01)
    assert poly_lr(config, 50) == pytest.approx((0.01 - 1e-4) * 0.5**0.9 + 1e-4)
    assert poly_lr(config, 100) == pytest.approx(1e-4)


def _coded_sample(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose pixel colour encodes its label, so image/label alignment survives any geometry."""
    rng = np.random.default_rng(seed)
    labels = np.kron(rng.integers(0, 4, size=(h // 8, w // 8)), np.ones((8, 8), dtype=np.int64))
    labels = labels.astype(np.uint8)
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    return palette[labels], labels


def test_augment_keeps_image_and_labels_aligned_and_pads_with_ignore() -> None:
    image, labels = _coded_sample(40, 56, 0)
    config = native(64, scale_range=(0.5, 2.0), photometric=False, cat_max_ratio=1.0)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    saw_pad = saw_flip_or_scale = False
    for seed in range(12):
        pixels, lab = augment(image, labels, config, np.random.default_rng(seed))
        assert pixels.shape == (3, 64, 64) and lab.shape == (64, 64) and lab.dtype == torch.int64
        assert set(lab.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
        rgb = (pixels * std + mean).round()
        valid = lab != IGNORE_INDEX
        saw_pad |= bool((~valid).any())
        # Away from label edges (bilinear image vs nearest labels), the colour gives back the label.
        code = (rgb[0] > 127).long() * 1 + (rgb[1] > 127).long() * 2 + (rgb[2] > 127).long() * 3
        interior = valid & (
            torch.nn.functional.max_pool2d(lab[None, None].float(), 5, 1, 2)[0, 0]
            == -torch.nn.functional.max_pool2d(-lab[None, None].float(), 5, 1, 2)[0, 0]
        )
        assert interior.sum() > 100
        assert bool((code[interior] == lab[interior]).all())
        # Padding is the mean pixel (zero after normalising).
        assert torch.allclose(pixels[:, ~valid], torch.zeros(1), atol=0.02)
        saw_flip_or_scale |= not torch.equal(lab[:40, :56], torch.from_numpy(labels).long())
    assert saw_pad and saw_flip_or_scale


def test_augment_is_a_function_of_its_seed_and_jitters_colours() -> None:
    image, labels = _coded_sample(96, 96, 1)
    config = native(48)
    a = augment(image, labels, config, np.random.default_rng(7))
    b = augment(image, labels, config, np.random.default_rng(7))
    c = augment(image, labels, config, np.random.default_rng(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # Photometric jitter changes colours of some draws (pure black / primaries otherwise stay exact).
    plain = native(48, photometric=False)
    changed = 0
    for seed in range(8):
        jit, _ = augment(image, labels, config, np.random.default_rng(seed))
        ref, _ = augment(image, labels, plain, np.random.default_rng(seed))
        changed += int(not torch.allclose(jit, ref))
    assert changed >= 4


def test_crop_avoids_single_class_crops_when_it_can() -> None:
    labels = np.zeros((128, 128), dtype=np.uint8)
    labels[:, 96:] = 1  # class 1 only in a quarter strip
    image = np.zeros((128, 128, 3), dtype=np.uint8)
    config = native(48, scale_range=(1.0, 1.0), flip=False, photometric=False)
    mixed = 0
    for seed in range(20):
        _, lab = augment(image, labels, config, np.random.default_rng(seed))
        counts = np.bincount(lab.numpy().ravel(), minlength=2)[:2]
        mixed += int(counts.max() / counts.sum() < 0.75)
    assert mixed >= 15  # a single uniform draw is mixed about a quarter of the time


def test_scale_is_relative_to_the_base_short_side() -> None:
    image, labels = _coded_sample(96, 192, 2)
    config = AugmentConfig(crop_size=80, base_short_side=48, scale_range=(1.0, 1.0), photometric=False)
    _, lab = augment(image, labels, config, np.random.default_rng(0))
    valid = (lab != IGNORE_INDEX).nonzero()
    # 96x192 -> 48x96 before cropping: 48 rows of labels, the rest of the 80 px crop is padding.
    assert valid[:, 0].max() == 47 and valid[:, 1].max() == 79


def test_batches_are_deterministic_and_cover_each_epoch() -> None:
    assert sorted(batch_indices(10, 5, 0, 0, 0) + batch_indices(10, 5, 0, 0, 1)) == list(range(10))
    assert batch_indices(10, 4, 3, 1, 7) == batch_indices(10, 4, 3, 1, 7)
    assert batch_indices(10, 10, 0, 0, 0) != batch_indices(10, 10, 0, 1, 0)  # streams differ
    samples = [Sample(*_coded_sample(32, 32, i)) for i in range(5)]
    config = native(24)
    x1, y1 = make_batch(samples, config, 3, seed=5, stream=0, step=4)
    x2, y2 = make_batch(samples, config, 3, seed=5, stream=0, step=4)
    x3, _ = make_batch(samples, config, 3, seed=5, stream=0, step=5)
    assert x1.shape == (3, 3, 24, 24) and y1.shape == (3, 24, 24)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)


def test_training_input_errors() -> None:
    samples = [Sample(*_coded_sample(32, 32, 0))]
    config = TrainConfig(iterations=2, batch_size=2, rounds=1, augment=native(16), log_every=0)
    student = small_student()
    vocab = ClassVocabulary(NAMES)
    with pytest.raises(ValueError, match="label_filter"):
        fit_student(student, text_embeddings(), vocab, samples, config)
    with pytest.raises(ValueError, match="batch_size"):
        fit_student(student, text_embeddings(), vocab, samples, TrainConfig(batch_size=1, rounds=0))
    bad = [Sample(samples[0].image, np.full((32, 32), 7, dtype=np.uint8))]
    with pytest.raises(ValueError, match="class indices"):
        fit_student(
            student,
            text_embeddings(),
            vocab,
            bad,
            TrainConfig(iterations=1, batch_size=2, rounds=0, augment=native(16)),
        )
    with pytest.raises(ValueError, match="label_filter must return"):
        fit_student(
            student,
            text_embeddings(),
            vocab,
            samples,
            config,
            label_filter=lambda r: r.labels.astype(np.int64),
        )
