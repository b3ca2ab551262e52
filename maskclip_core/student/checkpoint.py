"""Student checkpoints at an fsspec URL (local dir, s3://, memory://).

Layout of a checkpoint directory::

    round-002.safetensors        weights; metadata: format, config, vocabulary (JSON), round, iteration
    round-002.state.safetensors  optimizer momentum buffers and RNG states (for an exact resume)
    round-002.state.json         iteration, round, metric history, training config
    latest.json                  which round is the newest complete checkpoint (written last)

Every file is written whole (``storage.atomic_write_bytes``: a temporary name then a rename, or one PUT),
and ``latest.json`` is written after the files it names, so a crash never leaves a reader
pointing at a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

import safetensors.torch
import torch

from maskclip_core.storage.fs import atomic_write_bytes, join_url, read_bytes, resolve
from maskclip_core.student.classifier import ClassVocabulary
from maskclip_core.student.model import StudentConfig, StudentNet, build_student

FORMAT = "maskclip-student/1"
LATEST = "latest.json"


# A safetensors header is JSON describing the tensors: a few KB. Anything near this is not a real header.
MAX_HEADER_BYTES = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A student checkpoint file that cannot be used; the message names the file and what is wrong."""


def safetensors_metadata(data: bytes, url: str = "checkpoint") -> dict[str, str]:
    """The ``__metadata__`` of a serialized safetensors file (header: u64 length, then JSON).

    Raises :class:`CheckpointError` (one line) for anything that is not a sound safetensors header.
    """
    if data[:1] == b"\x80" or data[:2] == b"PK":
        raise CheckpointError(f"{url}: a Python pickle / torch zip, not safetensors: refused (pickles can run code)")
    if len(data) < 8:
        raise CheckpointError(f"{url}: {len(data)} bytes, too short for a safetensors file (truncated?)")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(MAX_HEADER_BYTES, len(data) - 8):
        raise CheckpointError(f"{url}: header claims {length} bytes but the file has {len(data)} (truncated or forged)")
    try:
        header = json.loads(data[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{url}: the safetensors header is not JSON ({type(e).__name__})") from e
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{url}: the safetensors header has no metadata object")
    return metadata


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def round_name(round_index: int) -> str:
    return f"round-{round_index:03d}"


@dataclass
class StudentCheckpoint:
    """A loaded student checkpoint (weights on the CPU)."""

    state_dict: dict[str, torch.Tensor]
    config: StudentConfig
    vocabulary: ClassVocabulary
    round: int
    iteration: int
    url: str
    sha256: str

    def build(self, device: torch.device | str | None = None) -> StudentNet:
        """The network with these weights; never downloads backbone weights."""
        embeddings = self.state_dict["classifier.embeddings"]
        model = build_student(self.config, embeddings, self.vocabulary, backbone_weights="none")
        model.load_state_dict(self.state_dict)
        return model.to(device) if device is not None else model


def weights_url(directory: str, round_index: int) -> str:
    """Where :func:`save_weights` writes a round's weights."""
    return join_url(directory, f"{round_name(round_index)}.safetensors")


def save_weights(
    directory: str, model: StudentNet, round_index: int, iteration: int, storage_options: dict | None = None
) -> str:
    """Write ``round-NNN.safetensors`` and return its URL."""
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "vocabulary": json.dumps(model.vocabulary.to_dict()),
        "round": str(round_index),
        "iteration": str(iteration),
    }
    url = weights_url(directory, round_index)
    atomic_write_bytes(url, safetensors.torch.save(_cpu(model.state_dict()), metadata), storage_options)
    return url


def resolve_checkpoint(url: str, storage_options: dict | None = None) -> str:
    """A weights-file URL, or a checkpoint directory (then its newest round per ``latest.json``)."""
    if url.endswith(".safetensors"):
        return url
    latest = read_latest(url, storage_options)
    if latest is None:
        raise FileNotFoundError(f"no student checkpoint at {url} ({LATEST} missing)")
    return join_url(url, latest["weights"])


def load_checkpoint(url: str, storage_options: dict | None = None) -> StudentCheckpoint:
    """Load weights, config and vocabulary from a weights file or a checkpoint directory URL."""
    url = resolve_checkpoint(url, storage_options)
    data = read_bytes(url, storage_options)
    meta = safetensors_metadata(data, url)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{url} is not a student checkpoint (format {meta.get('format')!r})")
    try:
        state_dict = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own SafetensorError for bad offsets, dtypes, sizes
        raise CheckpointError(f"{url}: the tensors cannot be read ({_first_line(e)})") from e
    try:
        config = StudentConfig.from_dict(json.loads(meta["config"]))
        vocabulary = ClassVocabulary.from_dict(json.loads(meta["vocabulary"]))
        round_index, iteration = int(meta["round"]), int(meta["iteration"])
    except KeyError as e:
        raise CheckpointError(f"{url}: the checkpoint metadata lacks {e}") from e
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{url}: the checkpoint metadata is malformed ({_first_line(e)})") from e
    return StudentCheckpoint(
        state_dict=state_dict,
        config=config,
        vocabulary=vocabulary,
        round=round_index,
        iteration=iteration,
        url=url,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def save_train_state(
    directory: str,
    round_index: int,
    optimizer: torch.optim.Optimizer,
    info: dict[str, Any],
    storage_options: dict | None = None,
) -> None:
    """Write what an exact resume needs beside the weights: optimizer buffers, RNG states, ``info`` JSON."""
    opt = optimizer.state_dict()
    tensors = {
        f"optimizer.{idx}.{key}": value
        for idx, state in opt["state"].items()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    base = join_url(directory, round_name(round_index))
    atomic_write_bytes(f"{base}.state.safetensors", safetensors.torch.save(_cpu(tensors)), storage_options)
    payload = {**info, "round": round_index, "param_groups": opt["param_groups"]}
    atomic_write_bytes(f"{base}.state.json", json.dumps(payload).encode(), storage_options)


def load_train_state(
    directory: str, round_index: int, optimizer: torch.optim.Optimizer, storage_options: dict | None = None
) -> dict[str, Any]:
    """Restore the optimizer and RNG states of a round; returns its ``info`` JSON."""
    base = join_url(directory, round_name(round_index))
    info = json.loads(read_bytes(f"{base}.state.json", storage_options))
    tensors = safetensors.torch.load(read_bytes(f"{base}.state.safetensors", storage_options))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": info.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
    if cuda_states:
        torch.cuda.set_rng_state_all(cuda_states)
    return info


def write_latest(directory: str, round_index: int, iteration: int, storage_options: dict | None = None) -> None:
    """Commit a round: written only after its weights and state files."""
    name = round_name(round_index)
    payload = {
        "round": round_index,
        "iteration": iteration,
        "weights": f"{name}.safetensors",
        "state": f"{name}.state.json",
    }
    atomic_write_bytes(join_url(directory, LATEST), json.dumps(payload).encode(), storage_options)


def read_latest(directory: str, storage_options: dict | None = None) -> dict[str, Any] | None:
    fs, path = resolve(join_url(directory, LATEST), storage_options)
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))
