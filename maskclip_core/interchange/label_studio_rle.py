"""Label Studio brush RLE: the thi-ng ``rle-pack`` bitstream over a row-major RGBA byte array.

Bitstream, most significant bit first, zero-padded to whole bytes:

    header: num values (32 bits) | word size - 1 (5) | four run-length field sizes - 1 (4 each)
    token:  repeat flag (1) | field-size index (2) | run length - 1 (that field's size in bits) | word(s)

A repeat token (flag 1) carries one word for the whole run; a literal token (flag 0) carries ``run`` words.
A brush mask is [height, width, 4] RGBA bytes flattened row-major; Label Studio paints a pixel when its
alpha byte is non-zero and itself writes 255 in all four channels of a painted pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WORD_SIZE = 8
RLE_SIZES = (3, 4, 8, 16)  # Label Studio's (and rle-pack's) default field sizes
_MAX_RUN = 1 << RLE_SIZES[-1]  # longest run one token can carry
_HEADER_BITS = 32 + 5 + 4 * len(RLE_SIZES)


def encode_values(values: np.ndarray | Sequence[int]) -> list[int]:
    """Encode a 1-D uint8 array as repeat tokens; returns the bytes as ints (Label Studio's ``rle``)."""
    v = np.asarray(values).ravel()
    if v.size and (v.min() < 0 or v.max() > 255):
        raise ValueError("brush RLE words are 8-bit: values must lie in 0..255")
    v = v.astype(np.uint8)
    n = v.size
    if n >= 1 << 32:
        raise ValueError(f"{n} values do not fit the 32-bit length header")

    # Runs of equal values; runs longer than one token allows are split into full tokens plus a remainder.
    starts = np.concatenate(([0], np.flatnonzero(v[1:] != v[:-1]) + 1)) if n else np.zeros(0, np.int64)
    lengths = np.diff(np.append(starts, n))
    pieces = -(-lengths // _MAX_RUN)
    run_of_piece = np.repeat(np.arange(lengths.size), pieces)
    piece_len = np.full(run_of_piece.size, _MAX_RUN, dtype=np.int64)
    piece_len[np.cumsum(pieces) - 1] = lengths - (pieces - 1) * _MAX_RUN
    count = (piece_len - 1).astype(np.uint64)
    value = v[starts][run_of_piece].astype(np.uint64)

    # Smallest field that holds count: < 8 -> 3 bits, < 16 -> 4, < 256 -> 8, else 16.
    size_idx = np.searchsorted([1 << s for s in RLE_SIZES[:-1]], count, side="right").astype(np.uint64)
    nbits = np.asarray(RLE_SIZES, dtype=np.uint64)[size_idx]
    tok_len = 3 + nbits + WORD_SIZE
    tok = (
        (np.uint64(1) << (tok_len - np.uint64(1)))
        | (size_idx << (nbits + np.uint64(WORD_SIZE)))
        | (count << np.uint64(WORD_SIZE))
        | value
    )

    header = n << 21 | (WORD_SIZE - 1) << 16
    for i, s in enumerate(RLE_SIZES):
        header |= (s - 1) << (4 * (len(RLE_SIZES) - 1 - i))
    words = np.concatenate(([np.uint64(header)], tok)).astype(np.uint64)
    lens = np.concatenate(([_HEADER_BITS], tok_len.astype(np.int64)))
    return _pack_bits(words, lens)


def _pack_bits(words: np.ndarray, lens: np.ndarray) -> list[int]:
    """Concatenate variable-width codes (MSB first) into bytes, zero-padded at the end."""
    ends = np.cumsum(lens)
    owner = np.repeat(np.arange(lens.size), lens)
    shift = (ends[owner] - 1 - np.arange(int(ends[-1]))).astype(np.uint64)
    bits = ((words[owner] >> shift) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits).tolist()


def decode_values(rle: bytes | Sequence[int]) -> np.ndarray:
    """Decode a bitstream to its 1-D word array (uint8 for word sizes up to 8, as in the JS decoder).

    Tokens are variable-width and each one's position depends on the previous, so the scan is a loop over
    tokens (not bits or pixels); the output is then built with one ``np.repeat``.
    """
    data = bytes(rle)
    total_bits = len(data) * 8
    padded = data + bytes(8)  # lets every read take an 8-byte window

    def read(pos: int, nbits: int) -> int:
        if pos + nbits > total_bits:
            raise ValueError("brush RLE is truncated")
        window = int.from_bytes(padded[pos >> 3 : (pos >> 3) + 8], "big")
        return (window >> (64 - (pos & 7) - nbits)) & ((1 << nbits) - 1)

    num = read(0, 32)
    word_size = read(32, 5) + 1
    sizes = [read(37 + 4 * k, 4) + 1 for k in range(4)]
    pos = _HEADER_BITS
    vals: list[int] = []
    reps: list[int] = []
    i = 0
    while i < num:
        repeat = read(pos, 1)
        nb = sizes[read(pos + 1, 2)]
        run = read(pos + 3, nb) + 1
        pos += 3 + nb
        if i + run > num:
            raise ValueError(f"brush RLE run overflows its {num} values")
        if repeat:
            vals.append(read(pos, word_size))
            reps.append(run)
            pos += word_size
        else:
            for _ in range(run):
                vals.append(read(pos, word_size))
                reps.append(1)
                pos += word_size
        i += run
    dtype = np.uint8 if word_size < 9 else np.uint16 if word_size < 17 else np.uint32
    return np.repeat(np.asarray(vals, dtype=dtype), np.asarray(reps, dtype=np.int64))


def encode_mask(mask: np.ndarray) -> list[int]:
    """[H, W] mask (non-zero = painted) -> Label Studio ``rle``; painted pixels are RGBA 255,255,255,255."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    rgba = np.repeat((np.asarray(mask) != 0).astype(np.uint8).ravel() * 255, 4)
    return encode_values(rgba)


def decode_mask(rle: bytes | Sequence[int], height: int, width: int) -> np.ndarray:
    """Label Studio ``rle`` -> [H, W] bool mask of pixels with non-zero alpha (what Label Studio paints)."""
    declared = int.from_bytes(bytes(rle[:4]), "big")  # the header's value count, checked before decoding
    if declared != height * width * 4:
        raise ValueError(f"brush RLE declares {declared} values, expected {height}x{width}x4")
    values = decode_values(rle)
    if values.size != height * width * 4:
        raise ValueError(f"brush RLE holds {values.size} values, expected {height}x{width}x4")
    return values.reshape(height, width, 4)[:, :, 3] != 0
