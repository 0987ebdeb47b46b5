"""Saving and loading the meta-learned initialisation: safetensors plus a small JSON beside it.

``maml.safetensors`` holds the parameters; ``maml.json`` the architecture, the config, the
iterations done and the SHA-256 of the tensor file, so a truncated or altered file is refused
with a one-line :class:`CheckpointError` rather than loaded as a different model. Both files are
written atomically (temporary file in the same folder, flush, fsync, rename).

The architecture is an MLP's layer sizes and activation (:class:`Architecture`, the sine path) or,
for a network built by a layer pool (the image path), its class and the names, shapes and dtypes
of its ``state_dict`` (:class:`ModuleArchitecture`); a checkpoint of either kind is refused by a
baseline configured for anything else.
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
from reml_plugins.maml.network import Architecture, ModuleArchitecture

TENSORS = "maml.safetensors"
METADATA = "maml.json"
FORMAT = "reml-maml/1"


@dataclass(frozen=True)
class Checkpoint:
    """What a MAML checkpoint holds."""

    parameters: dict[str, torch.Tensor]
    architecture: Architecture | ModuleArchitecture
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


def load_checkpoint(directory: Path, expected: Architecture | ModuleArchitecture) -> Checkpoint:
    """Read and check a checkpoint written by :func:`save_checkpoint` for the architecture ``expected``."""
    directory = Path(directory)
    metadata_path, tensors_path = directory / METADATA, directory / TENSORS
    metadata = _read_metadata(metadata_path)
    try:
        data = tensors_path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"{tensors_path}: cannot be read ({error.strerror or error})") from None
    if hashlib.sha256(data).hexdigest() != metadata["sha256"]:
        raise CheckpointError(
            f"{tensors_path}: contents do not match the SHA-256 recorded in {METADATA} (truncated or modified)"
        )
    architecture = _architecture(metadata["architecture"])
    if architecture != expected:
        raise CheckpointError(
            f"{metadata_path}: holds a {_describe(architecture)} network but this baseline is configured for "
            f"{_describe(expected)}" + _difference(architecture, expected)
        )
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{tensors_path}: not a readable safetensors file ({error})") from None
    shapes = expected.parameter_shapes
    dtypes = expected.dtypes if isinstance(expected, ModuleArchitecture) else dict.fromkeys(shapes, "float32")
    if set(tensors) != set(shapes):
        raise CheckpointError(
            f"{tensors_path}: holds tensors {sorted(tensors)} but the architecture needs {sorted(shapes)}"
        )
    for name, shape in shapes.items():
        tensor = tensors[name]
        dtype = str(tensor.dtype).removeprefix("torch.")
        if tuple(tensor.shape) != shape or dtype != dtypes[name]:
            raise CheckpointError(
                f"{tensors_path}: tensor {name} is {dtype} {tuple(tensor.shape)}, expected {dtypes[name]} {shape}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{tensors_path}: tensor {name} holds non-finite values")
    return Checkpoint(
        {name: tensors[name] for name in shapes}, architecture, metadata["config"], metadata["iterations"]
    )


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
    if not (_is_mlp(architecture) or _is_module(architecture)):
        return "architecture is missing or malformed"
    if not isinstance(metadata.get("iterations"), int) or metadata["iterations"] < 0:
        return "iterations is missing or not a non-negative integer"
    if not isinstance(metadata.get("config"), dict):
        return "config is missing or not an object"
    digest = metadata.get("sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        return "sha256 is missing or malformed"
    return None


def _is_mlp(architecture: Any) -> bool:
    return (
        isinstance(architecture, dict)
        and isinstance(architecture.get("sizes"), list)
        and len(architecture["sizes"]) >= 2
        and all(isinstance(s, int) and s > 0 for s in architecture["sizes"])
        and isinstance(architecture.get("activation"), str)
    )


def _is_module(architecture: Any) -> bool:
    """A :class:`ModuleArchitecture` as ``to_dict`` writes it: a class name and a non-empty list of named tensors."""
    if not (
        isinstance(architecture, dict)
        and isinstance(architecture.get("module"), str)
        and isinstance(architecture.get("state"), list)
    ):
        return False
    entries = architecture["state"]
    return (
        bool(entries)
        and all(
            isinstance(e, dict)
            and isinstance(e.get("name"), str)
            and isinstance(e.get("dtype"), str)
            and isinstance(e.get("shape"), list)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in e["shape"])
            for e in entries
        )
        and len({e["name"] for e in entries}) == len(entries)
    )


def _architecture(data: dict[str, Any]) -> Architecture | ModuleArchitecture:
    if _is_mlp(data):
        return Architecture(tuple(data["sizes"]), data["activation"])
    return ModuleArchitecture.from_dict(data)


def _describe(architecture: Architecture | ModuleArchitecture) -> str:
    if isinstance(architecture, ModuleArchitecture):
        return architecture.describe()
    return "-".join(str(s) for s in architecture.sizes) + f" {architecture.activation}"


def _difference(found: Architecture | ModuleArchitecture, expected: Architecture | ModuleArchitecture) -> str:
    """The first way two module architectures differ (empty for anything else): names the tensor at fault."""
    if not (isinstance(found, ModuleArchitecture) and isinstance(expected, ModuleArchitecture)):
        return ""
    if found.module != expected.module:
        return f" (class {found.module}, expected {expected.module})"
    theirs, ours = found.parameter_shapes, expected.parameter_shapes
    for name in ours:
        if name not in theirs:
            return f" (it lacks tensor {name})"
        if theirs[name] != ours[name] or found.dtypes[name] != expected.dtypes[name]:
            return (
                f" (tensor {name} is {found.dtypes[name]} {theirs[name]}, "
                f"expected {expected.dtypes[name]} {ours[name]})"
            )
    extra = sorted(set(theirs) - set(ours))
    return f" (it has extra tensor {extra[0]})" if extra else ""
