"""decode_image: each awkward input decodes to displayed-orientation RGB or is rejected with a code."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from support.bad_inputs import _pattern, _png_chunk, corpus_bytes, exif_rotated_jpeg, png_bomb, write_bad_input_corpus

from maskclip_core.labeling.decode import DecodedImage, ImageRejected, decode_image

COCO_SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco-sample"
CORPUS = corpus_bytes()


def _decode_or_reason(data: bytes, **kwargs: int) -> str:
    try:
        decode_image(data, **kwargs)
    except ImageRejected as e:
        return e.reason
    return "labeled"


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_outcomes(name: str) -> None:
    data, expected = CORPUS[name]
    assert _decode_or_reason(data) == expected


@pytest.mark.parametrize("name", sorted(n for n, (_, outcome) in CORPUS.items() if outcome == "labeled"))
def test_labeled_outputs_are_contiguous_rgb_uint8(name: str) -> None:
    out = decode_image(CORPUS[name][0])
    assert isinstance(out, DecodedImage)
    assert out.rgb.dtype == np.uint8 and out.rgb.ndim == 3 and out.rgb.shape[2] == 3
    assert out.rgb.flags.c_contiguous and out.rgb.flags.writeable
    assert out.size == out.rgb.shape[:2]


def test_write_bad_input_corpus_writes_files(tmp_path: Path) -> None:
    expected = write_bad_input_corpus(tmp_path / "corpus")
    assert set(expected) >= {
        "zero.jpg", "truncated.jpg", "text.jpg", "bomb.png", "sixteen_bit.png", "cmyk.jpg",
        "gray.png", "rgba.png", "palette.png", "exif_rotated.jpg",
    }  # fmt: skip
    for name, outcome in expected.items():
        data = (tmp_path / "corpus" / name).read_bytes()
        assert _decode_or_reason(data) == outcome, name
    assert (tmp_path / "corpus" / "zero.jpg").stat().st_size == 0
    assert (tmp_path / "corpus" / "bomb.png").stat().st_size < 100_000


def test_plain_rgb_has_no_note() -> None:
    assert decode_image(CORPUS["ok.jpg"][0]).note is None


# --- orientation ---------------------------------------------------------------------------------------

# What a viewer shows for each EXIF orientation, written as numpy operations on the stored pixels.
DISPLAYED = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(DISPLAYED))
def test_exif_orientation_gives_displayed_pixels(orientation: int) -> None:
    data = exif_rotated_jpeg(orientation)
    stored = np.array(Image.open(io.BytesIO(data)).convert("RGB"))  # Image.open does not transpose
    out = decode_image(data)
    np.testing.assert_array_equal(out.rgb, DISPLAYED[orientation](stored))
    assert out.note == f"EXIF orientation {orientation} applied"


def test_exif_rotation_6_puts_top_left_red_block_top_right() -> None:
    out = decode_image(CORPUS["exif_rotated.jpg"][0]).rgb
    h, w = _pattern().shape[:2]
    assert out.shape == (w, h, 3)  # portrait once displayed
    top_right = out[: w // 4, -h // 4 :].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 180 and top_right[1] < 60 and top_right[2] < 60


# --- conversions ---------------------------------------------------------------------------------------


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    gray16 = np.array([[0, 129, 257, 32768, 65280, 65535]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(gray16).save(buf, "PNG")
    out = decode_image(buf.getvalue())
    assert out.note == "16-bit scaled to 8-bit"
    np.testing.assert_array_equal(out.rgb[0, :, 0], [0, 1, 1, 128, 254, 255])
    np.testing.assert_array_equal(out.rgb[..., 0], out.rgb[..., 2])


def test_sixteen_bit_corpus_gradient_spans_full_range() -> None:
    out = decode_image(CORPUS["sixteen_bit.png"][0]).rgb[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotonic gradient survives


def test_cmyk_comes_back_close_to_the_original_colours() -> None:
    out = decode_image(CORPUS["cmyk.jpg"][0])
    assert out.note == "CMYK converted to RGB"
    diff = np.abs(out.rgb.astype(int) - _pattern().astype(int))
    assert diff[:10, :20].mean() < 12  # the flat red block, away from JPEG ringing


def test_grayscale_replicated_to_three_channels() -> None:
    gray = np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) % 256
    buf = io.BytesIO()
    Image.fromarray(gray.astype(np.uint8)).save(buf, "PNG")
    out = decode_image(buf.getvalue())
    assert out.note == "grayscale converted to RGB"
    for c in range(3):
        np.testing.assert_array_equal(out.rgb[..., c], gray)


def test_bilevel_is_black_and_white() -> None:
    out = decode_image(CORPUS["bilevel.png"][0])
    assert set(np.unique(out.rgb).tolist()) <= {0, 255}
    assert out.note == "1-bit converted to RGB"


def test_rgba_is_composited_on_white() -> None:
    rgb = _pattern()
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    out = decode_image(CORPUS["rgba.png"][0])
    assert out.note == "alpha composited on white"
    a = alpha[..., None].astype(int)
    expected = (rgb.astype(int) * a + 255 * (255 - a) + 127) // 255
    np.testing.assert_array_equal(out.rgb, expected)
    assert (out.rgb[:, 0] == 255).all()  # alpha 0 column is pure white


def test_opaque_alpha_is_just_dropped() -> None:
    rgba = np.dstack([_pattern(), np.full(_pattern().shape[:2], 255, np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, "PNG")
    out = decode_image(buf.getvalue())
    np.testing.assert_array_equal(out.rgb, _pattern())
    assert out.note == "opaque alpha dropped"


def test_palette_transparent_entry_becomes_white() -> None:
    data = CORPUS["palette.png"][0]
    indices = np.array(Image.open(io.BytesIO(data)))
    out = decode_image(data)
    assert out.note == "palette converted; alpha composited on white"
    assert (indices == 0).any() and (indices != 0).any()
    assert (out.rgb[indices == 0] == 255).all()
    opaque = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(out.rgb[indices != 0], opaque[indices != 0])


def test_palette_without_transparency() -> None:
    buf = io.BytesIO()
    Image.fromarray(_pattern()).quantize(colors=8).save(buf, "PNG")
    out = decode_image(buf.getvalue())
    assert out.note == "palette converted"
    np.testing.assert_array_equal(out.rgb, np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))


def test_float_and_32bit_modes() -> None:
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    buf = io.BytesIO()
    f.save(buf, "TIFF")
    out = decode_image(buf.getvalue())
    np.testing.assert_array_equal(out.rgb[0, :, 0], [0, 128, 255])
    i32 = Image.fromarray(np.array([[-1000, 0, 3000]], dtype=np.int32), mode="I")
    buf = io.BytesIO()
    i32.save(buf, "TIFF")
    np.testing.assert_array_equal(decode_image(buf.getvalue()).rgb[0, :, 0], [0, 64, 255])


# --- rejections ----------------------------------------------------------------------------------------


def test_bomb_is_rejected_before_pixels_are_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixel data decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageRejected) as info:
        decode_image(png_bomb())
    assert info.value.reason == "too_many_pixels"
    assert "10000x10000" in info.value.detail


@pytest.mark.filterwarnings("error")
def test_pillow_bomb_warning_does_not_escape() -> None:
    # 100 M pixels is above Pillow's soft limit (~89 M): its warning must not turn into a crash.
    assert _decode_or_reason(png_bomb()) == "too_many_pixels"


def test_bomb_beyond_pillow_hard_limit() -> None:
    # Header only: Pillow's own DecompressionBombError fires inside Image.open.
    ihdr = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0)
    with pytest.raises(ImageRejected) as info:
        decode_image(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))
    assert info.value.reason == "too_many_pixels"


def test_max_pixels_is_inclusive() -> None:
    data = CORPUS["ok.jpg"][0]
    assert _decode_or_reason(data, max_pixels=48 * 64) == "labeled"
    assert _decode_or_reason(data, max_pixels=48 * 64 - 1) == "too_many_pixels"


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9])
def test_truncated_jpeg_at_several_points(keep: float) -> None:
    data = CORPUS["ok.jpg"][0]
    assert _decode_or_reason(data[: int(len(data) * keep)]) == "truncated"


def test_header_only_jpeg_is_corrupt_not_text() -> None:
    assert _decode_or_reason(b"\xff\xd8\xff") == "corrupt"


def test_rejection_carries_reason_and_detail() -> None:
    with pytest.raises(ImageRejected) as info:
        decode_image(b"")
    assert info.value.reason == "empty_file"
    assert str(info.value).startswith("empty_file: ")
    assert isinstance(info.value, Exception)


def test_real_coco_photos_decode_to_mask_size() -> None:
    if not COCO_SAMPLE.is_dir():
        pytest.skip("coco-sample data not available")
    for path in sorted((COCO_SAMPLE / "val" / "images").glob("*.jpg"))[:5]:
        out = decode_image(path.read_bytes())
        mask = Image.open(COCO_SAMPLE / "val" / "masks-coco" / (path.stem + ".png"))
        assert out.size == (mask.height, mask.width)
