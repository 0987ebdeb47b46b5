"""Files a run leaves behind, written so that a crash at any moment loses nothing complete.

Single files are written atomically (a temporary file in the same folder, flushed and fsynced,
then renamed over the target). A checkpoint is a folder written under a temporary name, fsynced
and renamed into place; ``checkpoints/latest`` (itself written atomically) names the newest.
Each checkpoint carries a manifest of its files' SHA-256 digests, checked before loading, so a
truncated or altered checkpoint is an error rather than a silently different model. Every file
REML reads back (checkpoints, ``--from`` folders) goes through :func:`read_json_file` /
:func:`read_text_file`, so a damaged one is one clear error, never a traceback. Files and folders
are created with the permissions the user's umask allows, as any other program's would be.

Every file REML writes inside one of its folders is first noted in that folder's ledger,
``.reml.files`` (:func:`record_written`), so ``--force`` can remove exactly REML's files, at any
depth, and nothing else. A symbolic link between the folder and the file being written is
refused (:func:`owner_of`): REML never makes links, and writing through one could change a file
outside the folder. A write that fails because the disk is full raises :class:`DiskFullError`
naming the file, after removing its temporary copy.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reml_core.errors import CheckpointError, DiskFullError, UserError, disk_full_reason

MANIFEST = "manifest.json"
#: The list of every file REML wrote in one of its folders (one path relative to the folder a line;
#: ``glob:PATTERN`` for the files a third-party writer names itself, e.g. tensorboard's event files).
LEDGER = ".reml.files"
PATTERN_PREFIX = "glob:"
LATEST = "latest"
#: Files every REML checkpoint holds besides the policy's own; a manifest that omits one is refused.
CHECKPOINT_CORE_FILES = frozenset({"pool.safetensors", "reward.json", "trainer.json", "config.json"})
#: Larger than any file REML writes for reading back (pointers, manifests, configs, trainer state).
READ_LIMIT_BYTES = 64 * 1024 * 1024


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path, *, directory: bool = False) -> None:
    """Give a file made by ``tempfile`` (always 0600/0700) the mode an ordinary ``open`` would have."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


# -- reading back what REML wrote -----------------------------------------------------------------


def read_text_file(
    path: Path, what: str, *, error: type[UserError] = CheckpointError, limit: int = READ_LIMIT_BYTES
) -> str:
    """The UTF-8 text of a file REML wrote earlier; any problem is one ``error`` naming ``what`` it should be."""
    path = Path(path)
    try:
        if path.is_dir():
            raise error(f"{path} is a folder, but should be {what}")
        size = path.stat().st_size
        if size > limit:
            raise error(f"{path} is {size} bytes, far more than {what} holds; it is not a file REML wrote")
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path} is missing (expected {what})") from None
    except OSError as problem:
        raise error(f"cannot read {path} ({what}): {problem.strerror or problem}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path} is damaged: {what} must be UTF-8 text") from None


def read_json_file(
    path: Path, what: str, *, expect: type | tuple[type, ...] = dict, error: type[UserError] = CheckpointError
) -> Any:
    """Parse a JSON file REML wrote earlier, checking its top-level type; one clear ``error`` otherwise."""
    text = read_text_file(path, what, error=error)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as problem:
        raise error(f"{path} is damaged: {what} is not valid JSON ({' '.join(str(problem).split())[:120]})") from None
    if not isinstance(data, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        kind = {"dict": "a JSON object", "list": "a JSON list"}.get(names, names)
        raise error(f"{path} is damaged: {what} should be {kind}, not {type(data).__name__}")
    return data


# -- the ledger of what REML wrote, and no writing through links ----------------------------------


def link_error(link: Path, folder: Path | None = None) -> UserError:
    where = f" inside {folder}" if folder is not None else ""
    return UserError(
        f"{link} is a symbolic link{where}; REML does not write through links (it could change files outside "
        "the folder), so remove the link and run again"
    )


def owner_of(path: Path) -> Path | None:
    """The REML folder whose ledger lists ``path`` (the nearest folder above it holding one), or None.

    A symbolic link between that folder and ``path`` (``out/logs -> /elsewhere``) is refused; the
    folder itself may be reached through links the user chose.
    """
    path = Path(os.path.abspath(path))
    links: list[Path] = []
    for parent in path.parents:
        if os.path.isfile(parent / LEDGER) and not os.path.islink(parent / LEDGER):
            if links:
                raise link_error(links[-1], parent)
            return parent
        if os.path.islink(parent):
            links.append(parent)
    return None


_RECORDED: set[tuple[Path, str]] = set()


def record_written(path: Path, *, pattern: str | None = None, folder: bool = False) -> None:
    """Note in the ledger of the REML folder holding ``path`` that REML writes it (call *before* writing).

    With ``pattern`` (a glob for one path component, e.g. ``"events.out.tfevents.*"``), ``path``
    is the folder and every file in it matching the pattern is REML's: for files a library names
    itself. With ``folder``, ``path`` is a REML folder made inside this one (a sweep's trial): its
    own ledger lists its files. Outside a REML folder this does nothing but refuse links.
    """
    path = Path(os.path.abspath(path))
    owner = owner_of(path / "_" if pattern is not None else path)
    if owner is None:
        return
    relative = path.relative_to(owner).as_posix() if path != owner else ""
    if pattern is not None:
        line = PATTERN_PREFIX + (f"{relative}/{pattern}" if relative else pattern)
    else:
        line = relative + ("/" if folder and relative else "")
    if not line or (owner, line) in _RECORDED:
        return
    if "\n" in line:
        raise UserError(f"{path}: REML does not write file names holding a line break")
    descriptor = open_for_append(owner / LEDGER)
    try:  # a line a killed process left unfinished is ended first (with NUL: no path has one, so it is dropped)
        size = os.fstat(descriptor).st_size
        torn = size > 0 and os.pread(descriptor, 1, size - 1) != b"\n"
        _write_all(
            descriptor, (b"\x00\n" if torn else b"") + (line + "\n").encode("utf-8", "surrogateescape"), owner / LEDGER
        )
    finally:
        os.close(descriptor)
    _RECORDED.add((owner, line))


def start_ledger(folder: Path) -> None:
    """Give ``folder`` a new, empty ledger (a new folder's, or a ``--force``d one's)."""
    global _RECORDED
    folder = Path(os.path.abspath(folder))
    _RECORDED = {entry for entry in _RECORDED if entry[0] != folder}
    # not listed in any folder above: a REML folder inside another is that one's only if it said so first
    # (a sweep lists its trials' folders before they exist); a run a user puts inside a run is not
    atomic_write_with(folder / LEDGER, lambda temporary: temporary.write_bytes(b""), record=False)


def read_ledger_lines(folder: Path) -> list[str] | None:
    """The lines of ``folder``'s ledger (None when it has none); a torn last line of a killed write is dropped."""
    path = Path(folder) / LEDGER
    if os.path.islink(path):
        raise link_error(path)
    if not path.is_file():
        return None
    text = read_text_file(path, "REML's list of the files it wrote", error=UserError, limit=1 << 30)
    lines = text.split("\n")
    return [
        line for line in lines[:-1] if line and "\x00" not in line
    ]  # the part after the last newline is a torn write


def append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (made if missing) without following a link or a hard link out of the folder."""
    descriptor = open_for_append(path)
    try:
        _write_all(descriptor, data, path)
    finally:
        os.close(descriptor)


def open_for_append(path: Path) -> int:
    """A descriptor appending to ``path`` (noted in its REML folder's ledger first): never through a
    symbolic link, never into a file linked elsewhere too."""
    path = Path(path)
    if path.name != LEDGER:
        record_written(path)  # also refuses a link among the folders above it
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as error:
        if os.path.islink(path):
            raise link_error(path) from None
        reason = disk_full_reason(error)
        if reason:
            raise DiskFullError(path, reason) from None
        raise
    if os.fstat(descriptor).st_nlink > 1:
        os.close(descriptor)
        raise UserError(
            f"{path} has other hard links; REML does not write into a file shared with another path, "
            "so remove it and run again"
        )
    return descriptor


def _write_all(descriptor: int, data: bytes, path: Path) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(descriptor, view) :]
    except OSError as error:
        reason = disk_full_reason(error)
        if reason:
            raise DiskFullError(path, reason) from None
        raise


def raise_if_disk_full(error: BaseException, path: Path) -> None:
    """Turn a writer's failure that means "disk full" (any library's wording) into :class:`DiskFullError`."""
    reason = disk_full_reason(error)
    if reason:
        raise DiskFullError(path, reason) from None


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


def atomic_write_with(path: Path, writer: Callable[[Path], object], *, record: bool = True) -> None:
    """Let ``writer`` produce a file at a temporary path, then move it atomically onto ``path``.

    ``path`` is first listed in its REML folder's ledger (unless not ``record``: the ledger itself).
    """
    path = Path(path)
    if record:
        record_written(path)  # first: a killed write leaves only what the ledger names (and its .tmp)
    else:
        owner_of(path)  # still no writing through a link
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise_if_disk_full(error, path)
        raise
    os.close(descriptor)
    try:
        writer(Path(temporary))
        follow_umask(Path(temporary))
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)  # replaces a link at ``path`` itself, never what it points to
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        raise_if_disk_full(error, path)
        raise
    _fsync_directory(path.parent)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- checkpoints -------------------------------------------------------------------------------


@contextmanager
def new_checkpoint(checkpoints: Path, name: str, *, latest: bool = True) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it is sealed with a manifest and renamed to ``name``.

    With ``latest``, ``checkpoints/latest`` is then updated, so it always names a complete checkpoint.
    """
    if os.path.islink(checkpoints):
        raise link_error(checkpoints)
    record_written(checkpoints, pattern=f".{glob.escape(name)}.*/**")  # the staging folder and all in it
    final = checkpoints / name
    try:
        checkpoints.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=checkpoints))
    except OSError as error:
        raise_if_disk_full(error, final)
        raise
    try:
        follow_umask(staging, directory=True)
        yield staging
        for path in staging.iterdir():
            if path.is_symlink() or not path.is_file():
                raise CheckpointError(f"{path} is not a plain file; a checkpoint holds only the files its writers made")
        files = sorted(p for p in staging.iterdir() if p.is_file())
        for path in files:  # whatever wrote them (safetensors writes 0600), they follow the umask
            follow_umask(path)
        manifest = {"name": name, "files": {p.name: sha256(p) for p in files}}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for path in (*files, staging / MANIFEST):
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_directory(staging)
        if os.path.islink(final):
            raise link_error(final)
        for path in (*files, staging / MANIFEST):
            record_written(final / path.name)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_directory(checkpoints)
        if latest:
            atomic_write_text(checkpoints / LATEST, name + "\n")
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise_if_disk_full(error, final)
        raise


def verify_checkpoint(directory: Path) -> dict[str, Any]:
    """Check every file of a checkpoint against its manifest; return the manifest.

    The manifest must list every file the checkpoint folder holds (so nothing unchecked is ever
    loaded) and at least the files every REML checkpoint has; an empty or partial one is refused.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not (manifest_path.exists() or manifest_path.is_symlink()):
        raise CheckpointError(f"{directory} is not a complete checkpoint (no {MANIFEST})")
    manifest = read_json_file(manifest_path, "a checkpoint manifest")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise CheckpointError(f"{manifest_path} is damaged: 'files' should map file names to SHA-256 digests")
    for name in files:
        if not name or Path(name).name != name or name in (".", ".."):
            raise CheckpointError(f"{manifest_path} names a file outside its checkpoint: {name!r}")
    missing_core = sorted(CHECKPOINT_CORE_FILES - set(files))
    if missing_core:
        raise CheckpointError(f"{manifest_path} is incomplete: it does not list {', '.join(missing_core)}")
    try:
        present = {p.name for p in directory.iterdir() if p.name != MANIFEST}
    except OSError as problem:
        raise CheckpointError(f"cannot read checkpoint {directory}: {problem.strerror or problem}") from None
    unlisted = sorted(present - set(files))
    if unlisted:
        raise CheckpointError(
            f"checkpoint {directory} holds {unlisted[0]}, which its manifest does not list (altered or mixed "
            "checkpoint)"
        )
    for name, digest in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory} is missing {name}")
        if sha256(path) != digest:
            raise CheckpointError(
                f"checkpoint {directory} is damaged: {name} does not match its manifest (truncated or altered)"
            )
    return manifest


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The checkpoint ``latest`` names, or None if there is none yet."""
    pointer = checkpoints / LATEST
    if not (pointer.exists() or pointer.is_symlink()):
        return None
    name = read_text_file(pointer, "the name of the newest checkpoint", limit=4096).strip()
    if not name or Path(name).name != name or name in (".", "..") or not (checkpoints / name).is_dir():
        raise CheckpointError(f"{pointer} names no checkpoint ({name[:80]!r})")
    return checkpoints / name


def discard_partial_writes(out: Path) -> list[Path]:
    """Remove what a killed run left half-written: staging folders and temporary files (of the run's
    own files and of the checkpoints' ``latest`` pointer). Returns them."""
    checkpoints = out / "checkpoints"
    if os.path.islink(checkpoints):
        raise link_error(checkpoints, out)
    leftovers = [p for p in checkpoints.glob(".*") if p.is_dir() and not p.is_symlink()] if checkpoints.is_dir() else []
    leftovers += [p for p in checkpoints.glob(".*.tmp") if p.is_file()] if checkpoints.is_dir() else []
    leftovers += [p for p in out.glob(".*.tmp") if p.is_file()]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return leftovers


def prune_checkpoints(checkpoints: Path, newest: int = 2) -> None:
    """Delete all but the ``newest`` step checkpoints (``best`` and ``final`` are not step checkpoints)."""
    steps = sorted(
        (p for p in checkpoints.glob("step-*") if p.is_dir()),
        key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1,
    )
    for path in steps[:-newest] if newest else steps:
        shutil.rmtree(path, ignore_errors=True)
