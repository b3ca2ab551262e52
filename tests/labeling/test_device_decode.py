"""Which bytes the GPU decoder takes: complete colour JPEGs in display orientation; everything else goes to
the CPU decoder, which gives each its outcome (tests/gpu checks the decoded pixels on a CUDA device)."""

from __future__ import annotations

import pytest
from support.bad_inputs import corpus_bytes

from maskclip_core.labeling.device_decode import decode_jpegs_on_device, gpu_decodable

CORPUS = corpus_bytes()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_only_complete_upright_colour_jpegs_go_to_the_gpu(name: str) -> None:
    assert gpu_decodable(CORPUS[name][0]) == (name == "ok.jpg")


def test_pixel_cap_and_trailing_padding() -> None:
    data = CORPUS["ok.jpg"][0]
    assert not gpu_decodable(data, max_pixels=48 * 64 - 1)
    assert gpu_decodable(data + b"\x00\x00\r\n")


def test_decoding_on_the_cpu_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="needs a CUDA device"):
        decode_jpegs_on_device([CORPUS["ok.jpg"][0]], "cpu")
