"""Inference protocol, refinements and the classifier path, on planted inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import maskclip_core.teacher.window_predictor as inference
from maskclip_core.teacher.clip_loader import load_clip
from maskclip_core.teacher.labeler import MaskCLIPLabeler
from maskclip_core.teacher.refine import key_smoothing, prompt_denoising_keep
from maskclip_core.teacher.text_classifier import TextClassifier, build_text_classifier
from maskclip_core.teacher.vocabulary import Vocabulary
from maskclip_core.teacher.window_predictor import DensePredictor, InferenceConfig, upsample_argmax, window_boxes


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():  # scoped to each test: a module-level switch would leak into other test modules
        yield


@pytest.fixture(scope="module")
def bundle():
    return load_clip("maskclip-tiny-ViT", "none", device="cpu", seed=11)


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- windows and upsampling
def test_window_boxes_cover_the_image_like_mmseg():
    boxes = window_boxes(448, 1000, 448, 224)
    assert boxes[0] == (0, 448, 0, 448) and boxes[-1] == (0, 448, 552, 1000)
    assert len(boxes) == 4  # x0 = 0, 224, 448, 552 (the last one shifted back to the edge)
    covered = np.zeros((448, 1000), int)
    for y0, y1, x0, x1 in boxes:
        assert y1 - y0 == 448 and x1 - x0 == 448
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    assert window_boxes(300, 200, 448, 224) == [(0, 300, 0, 200)]  # smaller than a crop: one window


def test_banded_upsampling_equals_interpolate():
    probs = torch.softmax(torch.randn(5, 13, 17), 0)
    ref = F.interpolate(probs[None], size=(301, 257), mode="bilinear", align_corners=False)[0]
    labels, conf = upsample_argmax(probs, (301, 257), max_elements=5 * 257 * 7)  # forces 7-row bands
    torch.testing.assert_close(conf, ref.max(0).values, rtol=1e-5, atol=1e-6)
    assert (labels == ref.argmax(0)).float().mean() > 0.999  # ties at float precision may flip


def test_single_window_slide_equals_whole_image(bundle):
    vocab = Vocabulary.parse("cat, grass; lawn, road")
    image = _image(180, 250, seed=1)
    common = dict(short_side=None, crop=256, stride=128)
    slide = MaskCLIPLabeler(bundle, vocab, InferenceConfig(mode="slide", **common)).label([image])[0]
    whole = MaskCLIPLabeler(bundle, vocab, InferenceConfig(mode="whole", **common)).label([image])[0]
    assert slide.labels.shape == whole.labels.shape == (180, 250)
    np.testing.assert_array_equal(slide.labels, whole.labels)
    np.testing.assert_allclose(slide.confidence, whole.confidence, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(361, 640), (500, 333), (97, 1203)])
def test_outputs_have_the_original_size_and_are_distributions(bundle, shape):
    labeler = MaskCLIPLabeler(
        bundle, Vocabulary.parse("sky, tree, car"), InferenceConfig(short_side=224, crop=224, stride=112)
    )
    [result] = labeler.label([_image(*shape)])
    assert result.labels.shape == shape and result.confidence.shape == shape
    assert result.labels.min() >= 0 and result.labels.max() < 3
    assert np.all(result.confidence > 1 / 3 - 1e-5) and np.all(result.confidence <= 1 + 1e-5)
    assert result.class_scores.shape == (3,) and result.dropped.dtype == bool


def test_batched_labels_equal_one_by_one(bundle):
    labeler = MaskCLIPLabeler(
        bundle, Vocabulary.parse("a, b, c"), InferenceConfig(short_side=160, crop=160, stride=96, window_batch=3)
    )
    images = [_image(200, 300, 2), _image(160, 160, 3), _image(250, 190, 4)]
    together = labeler.label(images)
    for image, batched in zip(images, together, strict=True):
        [alone] = labeler.label([image])
        np.testing.assert_array_equal(batched.labels, alone.labels)
        np.testing.assert_allclose(batched.confidence, alone.confidence, atol=1e-5)


# ---------------------------------------------------------------- refinements on planted inputs
def test_key_smoothing_stays_within_key_clusters():
    torch.manual_seed(0)
    h, w, K = 4, 6, 3
    cluster = torch.zeros(h, w, dtype=torch.bool)
    cluster[:, :3] = True  # left half = cluster A, right half = cluster B
    basis = torch.eye(8)
    keys = torch.where(cluster[None], basis[0].view(8, 1, 1), basis[1].view(8, 1, 1))
    keys = keys * (torch.rand(1, h, w) * 3 + 0.1)  # magnitude must not matter: cosine similarity
    probs = torch.softmax(torch.randn(1, K, h, w) * 2, dim=1)
    out = key_smoothing(probs, keys[None], threshold=1.0)[0]
    mean_a = probs[0][:, cluster].mean(dim=1)
    mean_b = probs[0][:, ~cluster].mean(dim=1)
    torch.testing.assert_close(out[:, cluster], mean_a[:, None].expand(K, int(cluster.sum())))
    torch.testing.assert_close(out[:, ~cluster], mean_b[:, None].expand(K, int((~cluster).sum())))
    torch.testing.assert_close(out.sum(0), torch.ones(h, w))


def test_key_smoothing_threshold_keeps_confident_patches():
    probs = torch.tensor([[0.95, 0.5], [0.05, 0.5]]).view(1, 2, 1, 2)
    keys = torch.ones(1, 4, 1, 2)  # identical keys: full smoothing where allowed
    out = key_smoothing(probs, keys, threshold=0.9)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.95, 0.05]))  # confident: untouched
    torch.testing.assert_close(out[0, :, 0, 1], torch.tensor([0.725, 0.275]))  # averaged


def test_prompt_denoising_threshold():
    keep = prompt_denoising_keep(torch.tensor([0.4, 0.6, 0.5, 0.49999]), 0.5)
    assert keep.tolist() == [False, True, True, False]
    # all below: the best one survives, so an image always keeps a class
    assert prompt_denoising_keep(torch.tensor([0.2, 0.3, 0.1]), 0.5).tolist() == [False, True, False]


# ---------------------------------------------------------------- planted features through the classifier path
def _orthonormal_classifier(names, dim=16, seed=0, synonyms=None):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    rows = len(names) + len(synonyms or {})
    query_to_class = list(range(len(names))) + [names.index(c) for c in (synonyms or {}).values()]
    return TextClassifier(q[:rows].contiguous(), torch.tensor(query_to_class), tuple(names))


class _PlantedEncoder:
    """Stands in for dense_features: returns features planted per patch."""

    def __init__(self, features: torch.Tensor, keys: torch.Tensor | None = None):
        self.features, self.keys = features, keys if keys is not None else torch.randn_like(features)

    def __call__(self, model, pixels, mode="maskclip", *, position_resize="size"):
        B = pixels.shape[0]
        return self.features.expand(B, -1, -1, -1), self.keys.expand(B, -1, -1, -1)


def _predictor(classifier, **cfg):
    config = InferenceConfig(short_side=None, mode="whole", **cfg)
    return DensePredictor(torch.nn.Identity(), classifier, stride=16, mean=(0, 0, 0), std=(1, 1, 1), config=config)


def test_planted_features_give_back_the_planted_label_map(monkeypatch):
    names = ["cat", "grass", "tree stump", "road"]
    clf = _orthonormal_classifier(names, synonyms={"lawn": "grass"})  # row 4 is a synonym of grass
    rng = np.random.default_rng(0)
    gh, gw = 9, 13
    planted_rows = torch.from_numpy(rng.integers(0, 5, (gh, gw)))  # query rows, incl. the synonym
    features = clf.embeddings[planted_rows].permute(2, 0, 1)[None] * 7.0  # scale must not matter
    monkeypatch.setattr(inference, "dense_features", _PlantedEncoder(features))
    expected = clf.query_to_class[planted_rows].numpy()

    result = _predictor(clf, key_smoothing=False, prompt_denoising=False).predict([_image(gh * 16, gw * 16)])[0]
    assert result.labels.shape == (gh * 16, gw * 16)
    np.testing.assert_array_equal(result.labels[8::16, 8::16], expected)  # every patch centre: exact
    nearest = np.kron(expected, np.ones((16, 16), dtype=int))
    assert (result.labels == nearest).mean() > 0.9  # only bilinear boundary pixels may differ
    # orthonormal embeddings: the planted class has cosine 1, others 0 -> softmax(100 * cos) is ~one-hot;
    # at a patch centre bilinear upsampling takes (15.5/16)^2 of its own patch
    assert result.confidence[8::16, 8::16].min() > (15.5 / 16) ** 2 - 1e-3


REFERENCE = {"merge": "logits", "key_smoothing": False, "prompt_denoising": False, "partial_patches": "floor"}


def test_query_share_scores_a_class_by_its_best_query_among_all(monkeypatch):
    """The references' softmax over all queries: a patch on one of grass's two queries gives grass that query's
    share (not the softmax over class maxima), and ties with a background that asks the same word go to it."""
    names = ["cat", "grass", "background"]
    # rows: cat, grass, lawn (grass), sky (background), lawn again (background): rows 2 and 4 are the same query
    basis = _orthonormal_classifier(names + ["lawn", "sky"]).embeddings
    clf = TextClassifier(basis[[0, 1, 2, 3, 2]], torch.tensor([0, 1, 1, 2, 2]), tuple(names))
    features = torch.zeros(1, 16, 2, 2)
    features[0, :, 0, 0], features[0, :, 0, 1] = clf.embeddings[1], clf.embeddings[2]  # grass; lawn (tie)
    features[0, :, 1, :] = clf.embeddings[0][:, None]  # cat
    monkeypatch.setattr(inference, "dense_features", _PlantedEncoder(features))
    config = {**REFERENCE, "logit_scale": 3.0, "class_scores": "query_share"}
    ours = _predictor(clf, **config, background_wins_ties=True).predict([_image(32, 32)])[0]
    one_hot = torch.softmax(torch.tensor([3.0, 0, 0, 0, 0]), 0)[0].item()  # 5 queries, one at cosine 1
    assert ours.labels[4, 4] == 1 and ours.confidence[4, 4] == pytest.approx(one_hot, abs=1e-6)
    tie = torch.softmax(torch.tensor([3.0, 3.0, 0, 0, 0]), 0)[0].item()  # lawn twice: one share each
    assert ours.labels[4, 28] == 2 and ours.confidence[4, 28] == pytest.approx(tie, abs=1e-6)
    assert _predictor(clf, **config).predict([_image(32, 32)])[0].labels[4, 28] == 1  # first index wins
    assert (ours.labels[20:, :] == 0).all()


def test_area_threshold_hands_a_small_class_to_the_next_one(monkeypatch):
    """SCLIP's area_thd: a foreground class on at most 10 % of the foreground pixels is removed."""
    names = ["cat", "dog", "background"]
    clf = _orthonormal_classifier(names)
    features = (0.6 * clf.embeddings[0] + 0.2 * clf.embeddings[1])[:, None, None].repeat(1, 10, 10)
    features[:, 0, 0] = clf.embeddings[1] + 0.2 * clf.embeddings[0]  # one dog patch of 100, cat second there
    monkeypatch.setattr(inference, "dense_features", _PlantedEncoder(features[None]))
    config = {**REFERENCE, "class_scores": "query_share", "logit_scale": 20.0}
    kept = _predictor(clf, **config).predict([_image(160, 160)])[0]
    assert kept.labels[0, 0] == 1
    dropped = _predictor(clf, **config, area_threshold=0.1).predict([_image(160, 160)])[0]
    assert (dropped.labels == 0).all() and dropped.confidence[0, 0] < kept.confidence[0, 0]


def test_prompt_denoising_drops_a_class_at_max_probability_04_keeps_06(monkeypatch):
    g = torch.Generator().manual_seed(1)
    basis, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    clf = TextClassifier(basis[:4].contiguous(), torch.arange(4), ("a", "b", "c", "d"))
    spare = basis[4]  # orthogonal to every class: pads each feature to the same norm
    norm = 10.0

    def feature_for(probs):
        # cosine(f, e_c) = l_c / |f|; with |f| = logit_scale = norm the logits are exactly l_c = log p_c + const
        logits = torch.log(torch.tensor(probs, dtype=torch.float32))
        logits = logits - logits.mean()
        pad = torch.sqrt(norm**2 - (logits**2).sum())
        return (logits[:, None] * basis[:4]).sum(0) + pad * spare

    p_a = [0.6, 0.4 / 3, 0.4 / 3, 0.4 / 3]  # class a peaks at 0.6: kept
    p_b = [0.3, 0.4, 0.3 - 1e-3, 1e-3]  # class b peaks at 0.4: dropped
    p_c = [0.05, 0.05, 0.85, 0.05]
    grid = torch.stack([feature_for(p) for p in (p_a, p_b, p_c, p_c)]).T.reshape(8, 2, 2)[None]
    monkeypatch.setattr(inference, "dense_features", _PlantedEncoder(grid))
    predictor = _predictor(clf, key_smoothing=False, prompt_denoising=True, logit_scale=norm)
    result = predictor.predict([_image(32, 32)])[0]
    np.testing.assert_allclose(result.class_scores, [0.6, 0.4, 0.85, 0.4 / 3], atol=1e-4)
    assert result.dropped.tolist() == [False, True, False, True]
    assert set(np.unique(result.labels)) <= {0, 2}
    # the b-patch goes to a or c once b is gone
    assert result.labels[8, 24] in (0, 2)


# ---------------------------------------------------------------- text classifier
def test_template_ensemble_matches_a_manual_computation(bundle):
    templates = ("a photo of a {}.", "there is a {} in the scene.", "art of the {}.")
    vocab = Vocabulary.parse("person; man; woman, tree stump")
    clf = build_text_classifier(bundle, vocab, templates)
    assert clf.embeddings.shape == (4, 64) and clf.query_to_class.tolist() == [0, 0, 0, 1]
    for row, (query, _) in enumerate(vocab.queries()):
        tokens = bundle.tokenizer([t.format(query) for t in templates])
        emb = F.normalize(bundle.model.encode_text(tokens).float(), dim=-1).mean(0)
        torch.testing.assert_close(clf.embeddings[row], F.normalize(emb, dim=0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(clf.embeddings.norm(dim=1), torch.ones(4))


def test_synonyms_are_max_pooled():
    clf = _orthonormal_classifier(["person", "tree"], dim=4, synonyms={"man": "person"})
    feats = torch.stack([clf.embeddings[2], clf.embeddings[1]], dim=1).view(1, 4, 1, 2)  # "man", "tree"
    cos = clf.cosine(feats)
    assert cos.shape == (1, 2, 1, 2)
    torch.testing.assert_close(cos[0, :, 0, 0], torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(cos[0, :, 0, 1], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)


def test_classifier_cache_is_per_model_and_vocabulary(bundle, tmp_path, monkeypatch):
    from maskclip_core.teacher import text_classifier as tc

    calls = []
    real = tc.build_text_classifier
    monkeypatch.setattr(tc, "build_text_classifier", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = tc.TextClassifierCache(tmp_path)
    v1, v2 = Vocabulary.parse("cat, dog"), Vocabulary.parse("cat, dog, bird")
    a = cache.get(bundle, v1, ("a {}.",))
    cache.get(bundle, v1, ("a {}.",))
    cache.get(bundle, v2, ("a {}.",))
    assert len(calls) == 2
    fresh = tc.TextClassifierCache(tmp_path).get(bundle, v1, ("a {}.",))  # from disk, no encoding
    assert len(calls) == 2
    torch.testing.assert_close(fresh.embeddings, a.embeddings)
    other_weights = load_clip("maskclip-tiny-ViT", "none", device="cpu", seed=12)
    cache.get(other_weights, v1, ("a {}.",))
    assert len(calls) == 3


def test_vocabulary_parsing():
    v = Vocabulary.parse(" cat , grass;  lawn ;grass, tree   stump", background="sky; wall, floor")
    assert v.names == ("cat", "grass", "tree stump", "background")
    assert v.classes[1].synonyms == ("lawn",)
    assert v.all_classes[-1].queries == ("sky", "wall", "floor")
    assert Vocabulary.from_json(v.to_json()) == v
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary.parse("cat, cat")
    with pytest.raises(ValueError, match="at least one"):
        Vocabulary.parse(" , ")
    with pytest.raises(ValueError, match="at most 255"):
        Vocabulary.parse([f"c{i}" for i in range(256)])


def test_truncated_text_encoding_equals_encode_text(bundle):
    from maskclip_core.teacher.text_classifier import _can_truncate, encode_texts

    assert _can_truncate(bundle.model)
    texts = ["a photo of a cat.", "there is a tree stump in the scene.", "itap of my {}.".format("lawn mower")]
    expected = F.normalize(bundle.model.encode_text(bundle.tokenizer(texts)).float(), dim=-1)
    torch.testing.assert_close(encode_texts(bundle, texts), expected, rtol=1e-5, atol=1e-6)
