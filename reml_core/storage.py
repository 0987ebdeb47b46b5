"""Files a run leaves behind, written so that a crash at any moment loses nothing complete.

Single files are written atomically (a temporary file in the same folder, flushed and fsynced,
then renamed over the target). A checkpoint is a folder written under a temporary name, fsynced
and renamed into place; ``checkpoints/latest`` (itself written atomically) names the newest.
Each checkpoint carries a manifest of its files' SHA-256 digests, checked before loading, so a
truncated or altered checkpoint is an error rather than a silently different model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reml_core.errors import CheckpointError, UserError

MANIFEST = "manifest.json"
LATEST = "latest"


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step: readers see the old file or the new, never half."""
    atomic_write_with(path, lambda temporary: temporary.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def atomic_write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Let ``writer`` produce a file at a temporary path, then move it atomically onto ``path``."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    try:
        writer(Path(temporary))
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- run directories ---------------------------------------------------------------------------


def open_run_directory(out: Path, *, force: bool, flag: str = "--out") -> Path:
    """Create the directory for a new run (call it after every other check); return it resolved.

    An existing run there is refused unless ``force`` (then its contents are replaced); a
    non-empty directory that is not a run is always refused, so ``--force`` cannot wipe other files.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "config.json").exists():
            raise UserError(f"{flag} {out} already holds files that are not a REML run; choose an empty or new directory")
        if not force:
            raise UserError(f"{flag} {out} already holds a run; continue it with --resume {out}, or pass --force to overwrite it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise UserError(f"{flag} {out} is not writable: {error.strerror or error}") from None
    if force:
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    return out.resolve()


# -- checkpoints -------------------------------------------------------------------------------


@contextmanager
def new_checkpoint(checkpoints: Path, name: str, *, latest: bool = True) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it is sealed with a manifest and renamed to ``name``.

    With ``latest``, ``checkpoints/latest`` is then updated, so it always names a complete checkpoint.
    """
    checkpoints.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=checkpoints))
    try:
        yield staging
        files = sorted(p for p in staging.iterdir() if p.is_file())
        manifest = {"name": name, "files": {p.name: sha256(p) for p in files}}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for path in (*files, staging / MANIFEST):
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_directory(staging)
        final = checkpoints / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_directory(checkpoints)
        if latest:
            atomic_write_text(checkpoints / LATEST, name + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def verify_checkpoint(directory: Path) -> dict[str, Any]:
    """Check every file of a checkpoint against its manifest; return the manifest."""
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a mapping")
    except FileNotFoundError:
        raise CheckpointError(f"{directory} is not a complete checkpoint (no {MANIFEST})") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{manifest_path} is damaged: {error}") from None
    for name, digest in files.items():
        path = directory / name
        if Path(name).name != name:
            raise CheckpointError(f"{manifest_path} names a file outside its checkpoint: {name!r}")
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory} is missing {name}")
        if sha256(path) != digest:
            raise CheckpointError(f"checkpoint {directory} is damaged: {name} does not match its manifest (truncated or altered)")
    return manifest


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The checkpoint ``latest`` names, or None if there is none yet."""
    pointer = checkpoints / LATEST
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    if not name or Path(name).name != name or not (checkpoints / name).is_dir():
        raise CheckpointError(f"{pointer} names no checkpoint ({name!r})")
    return checkpoints / name


def discard_partial_writes(out: Path) -> list[Path]:
    """Remove what a killed run left half-written: staging folders and temporary files. Returns them."""
    leftovers = [p for p in (out / "checkpoints").glob(".*") if p.is_dir()] if (out / "checkpoints").is_dir() else []
    leftovers += [p for p in out.glob(".*.tmp") if p.is_file()]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return leftovers


def prune_checkpoints(checkpoints: Path, keep: set[str], newest: int = 2) -> None:
    """Delete older step checkpoints, keeping the ``newest`` and those named in ``keep``."""
    steps = sorted(
        (p for p in checkpoints.glob("step-*") if p.is_dir()),
        key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1,
    )
    for path in steps[:-newest] if newest else steps:
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
