"""Trident's SAM refinement (maskclip_core/teacher/sam_refine.py) against a rewrite of the reference's
``sam_refinement`` (support/trident_reference.py, driving segment_anything's SamPredictor), with random weights,
and with a planted decoder whose mask is known."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from support.scenes import scene
from support.trident_reference import sam_predictor, sam_refinement
from test_trident import SMALL_SAM, TRIDENT_CONFIG, _proxy, _sam, trident_segment_args

from maskclip_core.teacher.clip_loader import WeightsUnavailableError, load_clip
from maskclip_core.teacher.labeler import LabelerConfig, cached_labeler
from maskclip_core.teacher.sam import sam_last_attention, sam_pixels
from maskclip_core.teacher.sam_refine import (
    RefinementSettings,
    SamPromptDecoder,
    class_regions,
    load_sam_decoder,
    sam_image_embedding,
    sam_refine,
)
from maskclip_core.teacher.trident_labeler import TridentLabeler
from maskclip_core.teacher.vocabulary import Vocabulary
from maskclip_core.teacher.window_predictor import InferenceConfig


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _coarse(num_classes: int, size: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random probabilities [C, H, W] (blobs of several classes) and their argmax."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.randn(1, num_classes, 5, 6, generator=gen) * 4
    probs = F.interpolate(low, size=size, mode="bicubic", align_corners=False)[0].softmax(dim=0)
    return probs, probs.argmax(dim=0)


@pytest.mark.parametrize(
    ("size", "coarse_thresh", "minimal_area", "seen"),
    [((64, 64), 0.1, 9, None), ((60, 90), 0.0, 0, None), ((90, 50), 0.3, 20, (96, 64))],
)
def test_refinement_equals_reference(size, coarse_thresh, minimal_area, seen):
    """``seen``: the reference's SAM sees the image resized to whole patches (its predictor's original size)."""
    sam = _sam(seed=4)
    decoder = load_sam_decoder(sam, "none", seed=5)
    embedding = torch.randn(1, SMALL_SAM["neck_chans"], 8, 8, generator=torch.Generator().manual_seed(6))
    probs, labels = _coarse(4, size, seed=sum(size))
    predictor = sam_predictor(decoder.prompt_encoder, decoder.mask_decoder, sam.input_size, embedding, seen or size)
    # Predicted IoUs of random weights: one threshold keeping every mask, one keeping about half.
    kept = []
    for iou_thresh in (-1e9, None):
        if iou_thresh is None:  # the median of the regions' predicted IoUs, from a probe through the predictor
            iou_thresh = _median_iou(decoder, embedding, probs, labels, sam.input_size, coarse_thresh, minimal_area)
        ref_labels, _, _, boxes = sam_refinement(
            torch.zeros(*size, 3), labels[None], probs, 4, predictor, coarse_thresh, minimal_area, 0.005, iou_thresh
        )
        ours, conf = sam_refine(
            probs,
            labels,
            embedding,
            decoder,
            sam.input_size,
            coarse_thresh=coarse_thresh,
            sam_iou_thresh=iou_thresh,
            minimal_area=minimal_area,
            sam_image_size=seen,
        )
        torch.testing.assert_close(ours, ref_labels[0], rtol=0, atol=0)
        assert conf.shape == size and (conf > 0).all()
        kept.append(sum(len(b) for b in boxes))
    assert kept[0] > kept[1] > 0  # both keeping and failing masks were exercised
    assert len(torch.unique(labels)) >= 3 and (ours != labels).any()  # several classes, and SAM moved labels


def _median_iou(decoder, embedding, probs, labels, input_size, coarse_thresh, minimal_area) -> float:
    """The middle of the decoder's predicted IoUs over every region (read through segment_anything's predictor)."""
    size = tuple(labels.shape)
    predictor = sam_predictor(decoder.prompt_encoder, decoder.mask_decoder, input_size, embedding, size)
    scores = []
    original = predictor.predict_torch

    def record(*args, **kwargs):
        out = original(*args, **kwargs)
        scores.append(out[1].flatten())
        return out

    predictor.predict_torch = record
    sam_refinement(torch.zeros(*size, 3), labels[None], probs, probs.shape[0], predictor, coarse_thresh, minimal_area)
    return float(torch.cat(scores).median())


class _KnownMask(torch.nn.Module):
    """A mask decoder answering every prompt with one planted mask (logits +-10 on its grid) and IoU 1."""

    def __init__(self, planted: torch.Tensor):
        super().__init__()
        self.planted = planted

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output):
        n = sparse_prompt_embeddings.shape[0]
        logits = torch.where(self.planted, 10.0, -10.0).expand(n, 1, *self.planted.shape)
        return logits, torch.ones(n, 1)


def test_planted_mask_relabels_its_region_and_leaves_the_rest():
    sam = _sam(seed=4)
    real = load_sam_decoder(sam, "none")
    planted = torch.zeros(32, 32, dtype=torch.bool)  # the decoder's grid: 4 x the 8 x 8 embedding
    planted[8:20, 4:24] = True
    decoder = SamPromptDecoder(real.prompt_encoder, _KnownMask(planted))
    # Image = SAM's input (128 x 128): a confident class-1 square inside unsure pixels (labelled 0, none > 0.5).
    probs = torch.full((3, 128, 128), 1 / 3)
    probs[:, 40:70, 30:60] = torch.tensor([0.05, 0.9, 0.05]).view(3, 1, 1)
    labels = probs.argmax(dim=0)
    regions = class_regions(labels[::2, ::2], probs[:, ::2, ::2], coarse_thresh=0.5, minimal_area=1)
    assert list(regions) == [1] and regions[1].boxes.tolist() == [[15.0, 20.0, 29.0, 34.0]]
    ours, conf = sam_refine(probs, labels, torch.zeros(1, 32, 8, 8), decoder, 128, coarse_thresh=0.5, minimal_area=1)
    up = F.interpolate(torch.where(planted, 10.0, -10.0)[None, None], size=(128, 128), mode="bilinear")[0, 0]
    covered = up > 0
    assert (labels[covered] == 0).sum() > 500 and (~covered).sum() > 5000  # it spills past the square, not all over
    expected = torch.where(covered, 1, labels)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert (ours != labels).sum() == (labels[covered] == 0).sum()
    torch.testing.assert_close(conf[covered], (up.sigmoid() * probs[1])[covered])


def test_labeler_refines_only_when_asked_and_hashes_the_setting():
    clip = load_clip("maskclip-tiny-ViT", "none", device="cpu", seed=31)
    proxy, sam = _proxy("vit_small_patch16_224.dino", 6), _sam(seed=6)
    vocabulary = Vocabulary.parse("red, green, blue", None)
    inference = InferenceConfig(short_side=96, crop=64, stride=48, logit_scale=40.0, precision="fp32")
    coarse = TridentLabeler(clip, proxy, sam, vocabulary, inference)
    settings = RefinementSettings(load_sam_decoder(sam, "none"), coarse_thresh=0.1, sam_iou_thresh=-1e9, minimal_area=4)
    refined = TridentLabeler(clip, proxy, sam, vocabulary, inference, refinement=settings)
    image = scene(70, 100, seed=10)
    [a], [b] = coarse.label([image]), refined.label([image])
    assert a.labels.shape == b.labels.shape == (70, 100) and (a.labels != b.labels).any()
    assert "sam_refinement" not in coarse.config()
    assert refined.config()["sam_refinement"] == {"coarse_thresh": 0.1, "sam_iou_thresh": -1e9, "minimal_area": 4}
    config = {**TRIDENT_CONFIG, "sam_refinement": True}
    assert cached_labeler(LabelerConfig(**config)).config()["sam_refinement"]["minimal_area"] == 225
    with pytest.raises(ValueError, match="set sam"):
        LabelerConfig(**{**config, "sam": None})


def test_refinement_weights_need_the_original_checkpoint(tmp_path):
    sam = _sam(seed=4)
    with pytest.raises(WeightsUnavailableError, match="original SAM checkpoint"):
        load_sam_decoder(sam, str(tmp_path / "missing.pth"))
    source = load_sam_decoder(sam, "none", seed=9)
    state = {f"prompt_encoder.{k}": v for k, v in source.prompt_encoder.state_dict().items()}
    state |= {f"mask_decoder.{k}": v for k, v in source.mask_decoder.state_dict().items()}
    torch.save(state, tmp_path / "sam.pth")
    loaded = load_sam_decoder(sam, str(tmp_path / "sam.pth"), seed=1)
    for a, b in zip(source.mask_decoder.state_dict().values(), loaded.mask_decoder.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_cli_sam_refinement_flag(tmp_path):
    from cli.main import main

    assert main([*trident_segment_args(tmp_path), "--sam-refinement"]) == 0
    summary = json.loads((tmp_path / "out" / "segment.json").read_text())
    assert summary["images"][0]["status"] == "labeled"
    assert summary["labeler"]["sam_refinement"] == {"coarse_thresh": 0.1, "sam_iou_thresh": 0.9, "minimal_area": 225}


def test_the_image_embedding_finishes_the_affinitys_pass():
    """The refinement's embedding comes from the encoder pass the affinity made (last block and neck run on its
    kept input): equal to SAM's one full pass, as the reference's predictor computes it."""
    sam = _sam(seed=7)
    pixels, _ = sam_pixels(scene(70, 100, seed=11), sam.input_size)
    with torch.inference_mode():
        finished = sam_image_embedding(sam, sam_last_attention(sam, pixels))
        full = sam.encoder.forward_features(pixels)
    assert finished.shape == full.shape and full.abs().max() > 0
    torch.testing.assert_close(finished, full, rtol=1e-5, atol=1e-6)
