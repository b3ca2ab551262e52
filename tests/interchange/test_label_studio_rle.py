"""Our Label Studio brush RLE against the official label-studio-sdk converter, both directions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from label_studio_sdk.converter import brush

from maskclip_core.interchange.label_studio_rle import decode_mask, decode_values, encode_mask, encode_values

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco-sample"


def sdk_alpha(rle: list[int], h: int, w: int) -> np.ndarray:
    """The SDK's reading of a brush RLE (what its exporters do): alpha channel of [H, W, 4]."""
    return brush.decode_rle(bytes(rle)).reshape(h, w, 4)[:, :, 3] != 0


def check_both_ways(mask: np.ndarray) -> None:
    h, w = mask.shape
    ours = encode_mask(mask)
    assert all(0 <= b <= 255 for b in ours)
    np.testing.assert_array_equal(sdk_alpha(ours, h, w), mask)
    sdk = brush.mask2rle(mask.astype(np.uint8) * 255)
    np.testing.assert_array_equal(decode_mask(sdk, h, w), mask)
    # Same tokens as the SDK encoder while no run needs two tokens (the SDK then writes the remainder in a
    # 16-bit field, we in the smallest that fits); it also adds a zero byte when the bits end on a byte.
    if longest_run(mask) * 4 <= 1 << 16:
        assert sdk[: len(ours)] == ours and len(sdk) - len(ours) in (0, 1)


def longest_run(mask: np.ndarray) -> int:
    flat = mask.ravel()
    bounds = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]))
    return int(np.diff(bounds).max())


def edge_masks(h: int, w: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(h * 1000 + w)
    first, last, middle = (np.zeros((h, w), bool) for _ in range(3))
    first[0, 0] = True
    last[-1, -1] = True
    middle[h // 2, w // 2] = True
    stripes = np.zeros((h, w), bool)
    if h * w < 1000:
        stripes[:, ::2] = True  # one run per pixel
    else:
        stripes[::2] = True  # one run per row
    return {
        "empty": np.zeros((h, w), bool),
        "full": np.ones((h, w), bool),
        "first_pixel": first,
        "last_pixel": last,
        "middle_pixel": middle,
        # dense noise is one run per pixel: keep it small, the SDK's pure-Python coder is slow on it
        "noise": rng.random((h, w)) < (0.5 if h * w < 1000 else 0.02),
        "stripes": stripes,
    }


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (7, 3), (641, 427)])
def test_edge_cases_both_ways(shape):
    for name, mask in edge_masks(*shape).items():
        try:
            check_both_ways(mask)
        except AssertionError as e:
            raise AssertionError(f"{shape} {name}") from e


def test_runs_longer_than_one_token():
    # 300 x 300 x 4 = 360000 equal bytes: split over 16-bit tokens; and runs just around the token limit.
    check_both_ways(np.ones((300, 300), bool))
    for n in (16383, 16384, 16385):  # x4 = 65532, 65536, 65540 values
        mask = np.zeros((1, 2 * n + 1), bool)
        mask[0, :n] = True
        check_both_ways(mask)


def test_decoder_reads_literal_runs_like_the_sdk():
    # The SDK encoder writes single values as literal tokens; Label Studio's JS encoder also writes
    # multi-word literal chunks. Hand-build such a stream and check we read it as the SDK does.
    values = [5, 9, 9, 200, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 1, 2, 3]
    header = f"{len(values):032b}" + f"{7:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))
    body = "0" + "00" + f"{3:03b}" + "".join(f"{v:08b}" for v in (5, 9, 9, 200))  # literal, 4 words
    body += "1" + "01" + f"{9:04b}" + f"{7:08b}"  # repeat 10 x 7, 4-bit field
    body += "0" + "10" + f"{2:08b}" + "".join(f"{v:08b}" for v in (1, 2, 3))  # literal, 8-bit field
    bits = header + body
    bits += "0" * (-len(bits) % 8)
    rle = [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]
    np.testing.assert_array_equal(brush.decode_rle(bytes(rle)), values)
    np.testing.assert_array_equal(decode_values(rle), values)

    rng = np.random.default_rng(3)
    arbitrary = rng.integers(0, 256, 5000).astype(np.uint8)
    arbitrary[1000:1300] = 17  # one long run among singles
    np.testing.assert_array_equal(decode_values(brush.encode_rle(arbitrary)), arbitrary)
    np.testing.assert_array_equal(brush.decode_rle(bytes(encode_values(arbitrary))), arbitrary)


def test_empty_value_array():
    assert decode_values(encode_values(np.zeros(0, np.uint8))).size == 0


def test_corrupt_streams_raise():
    rle = encode_mask(np.eye(5, dtype=bool))
    with pytest.raises(ValueError, match="truncated"):
        decode_values(rle[:-2])
    with pytest.raises(ValueError, match="expected"):
        decode_mask(rle, 4, 5)
    # A run longer than the declared number of values.
    bits = f"{4:032b}" + f"{7:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16)) + "1" + "00" + "111" + "0" * 8
    bits += "0" * (-len(bits) % 8)
    with pytest.raises(ValueError, match="overflows"):
        decode_values([int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)])
    with pytest.raises(ValueError):
        encode_values(np.array([256]))


@pytest.mark.skipif(not (SAMPLE / "train" / "annotations.json").exists(), reason="coco-sample data absent")
def test_real_coco_masks_both_ways():
    doc = json.loads((SAMPLE / "train" / "annotations.json").read_text())
    image_ids = sorted(img["id"] for img in doc["images"])[:10]
    anns = [a for a in doc["annotations"] if a["image_id"] in image_ids]
    assert len(anns) > 50
    for ann in anns:
        check_both_ways(mask_utils.decode(ann["segmentation"]).astype(bool))


def test_mask_is_the_alpha_channel():
    # Label Studio paints a pixel when its alpha byte is non-zero, whatever the colour bytes hold.
    rng = np.random.default_rng(5)
    h, w = 9, 11
    rgba = rng.integers(0, 256, (h, w, 4)).astype(np.uint8)
    rgba[..., 3] = np.where(rng.random((h, w)) < 0.5, 0, rgba[..., 3])
    rgba[0, 0] = (255, 255, 255, 0)
    rgba[0, 1] = (0, 0, 0, 1)
    rle = encode_values(rgba.ravel())
    np.testing.assert_array_equal(decode_mask(rle, h, w), rgba[..., 3] != 0)
    result = {
        "type": "brushlabels",
        "rle": rle,
        "original_width": w,
        "original_height": h,
        "brushlabels": ["x"],
    }
    np.testing.assert_array_equal(brush.decode_from_annotation("tag", [result])["tag-x-0"] != 0, rgba[..., 3] != 0)
