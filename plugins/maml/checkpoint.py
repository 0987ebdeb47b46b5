"""Saving and loading the meta-learned initialisation: safetensors plus a small JSON beside it.

``maml.safetensors`` holds the parameters; ``maml.json`` the architecture, the config, the
iterations done and the SHA-256 of the tensor file, so a truncated or altered file is refused
with a one-line :class:`CheckpointError` rather than loaded as a different model. Both files are
written atomically (temporary file in the same folder, flush, fsync, rename).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from reml_core.errors import CheckpointError
from reml_core.storage import atomic_write_bytes
from reml_plugins.maml.network import Architecture

TENSORS = "maml.safetensors"
METADATA = "maml.json"
FORMAT = "reml-maml/1"


@dataclass(frozen=True)
class Checkpoint:
    """What a MAML checkpoint holds."""

    parameters: dict[str, torch.Tensor]
    architecture: Architecture
    config: dict[str, Any]
    iterations: int


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    """Write ``maml.safetensors`` then ``maml.json`` (which vouches for it) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = save_tensors({name: t.detach().contiguous().clone() for name, t in checkpoint.parameters.items()})
    metadata = {
        "format": FORMAT,
        "architecture": checkpoint.architecture.to_dict(),
        "config": checkpoint.config,
        "iterations": checkpoint.iterations,
        "tensors": TENSORS,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    atomic_write_bytes(directory / TENSORS, data)
    atomic_write_bytes(directory / METADATA, (json.dumps(metadata, indent=2, allow_nan=False) + "\n").encode())


def load_checkpoint(directory: Path, expected: Architecture) -> Checkpoint:
    """Read and check a checkpoint written by :func:`save_checkpoint` for the architecture ``expected``."""
    directory = Path(directory)
    metadata_path, tensors_path = directory / METADATA, directory / TENSORS
    metadata = _read_metadata(metadata_path)
    try:
        data = tensors_path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"{tensors_path}: cannot be read ({error.strerror or error})") from None
    if hashlib.sha256(data).hexdigest() != metadata["sha256"]:
        raise CheckpointError(f"{tensors_path}: contents do not match the SHA-256 recorded in {METADATA} (truncated or modified)")
    architecture = Architecture(tuple(metadata["architecture"]["sizes"]), metadata["architecture"]["activation"])
    if architecture != expected:
        raise CheckpointError(
            f"{metadata_path}: holds a {_describe(architecture)} network but this baseline is configured for {_describe(expected)}"
        )
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{tensors_path}: not a readable safetensors file ({error})") from None
    shapes = expected.parameter_shapes
    if set(tensors) != set(shapes):
        raise CheckpointError(f"{tensors_path}: holds tensors {sorted(tensors)} but the architecture needs {sorted(shapes)}")
    for name, shape in shapes.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape or tensor.dtype != torch.float32:
            found = f"{str(tensor.dtype).removeprefix('torch.')} {tuple(tensor.shape)}"
            raise CheckpointError(f"{tensors_path}: tensor {name} is {found}, expected float32 {shape}")
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{tensors_path}: tensor {name} holds non-finite values")
    return Checkpoint({name: tensors[name] for name in shapes}, architecture, metadata["config"], metadata["iterations"])


def _read_metadata(path: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (no MAML checkpoint in {path.parent})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not readable JSON ({error})") from None
    problem = _metadata_problem(metadata)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return metadata


def _metadata_problem(metadata: Any) -> str | None:
    if not isinstance(metadata, dict):
        return "not a JSON object"
    if metadata.get("format") != FORMAT:
        return f"format {metadata.get('format')!r} is not {FORMAT!r}"
    architecture = metadata.get("architecture")
    if not (
        isinstance(architecture, dict)
        and isinstance(architecture.get("sizes"), list)
        and len(architecture["sizes"]) >= 2
        and all(isinstance(s, int) and s > 0 for s in architecture["sizes"])
        and isinstance(architecture.get("activation"), str)
    ):
        return "architecture is missing or malformed"
    if not isinstance(metadata.get("iterations"), int) or metadata["iterations"] < 0:
        return "iterations is missing or not a non-negative integer"
    if not isinstance(metadata.get("config"), dict):
        return "config is missing or not an object"
    digest = metadata.get("sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        return "sha256 is missing or malformed"
    return None


def _describe(architecture: Architecture) -> str:
    return "-".join(str(s) for s in architecture.sizes) + f" {architecture.activation}"


