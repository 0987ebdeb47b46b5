"""Which folders are REML's, and one writer per folder.

A folder REML writes into (a ``reml-run`` run, a ``reml-bench`` benchmark) holds a marker,
``.reml.json``, written before anything else. It names the tool that made the folder and every
top-level entry REML writes there. A folder is REML's only if that marker says so: a stray
``config.json`` proves nothing. ``--force`` removes only the entries the marker names and refuses
when anything else is in the folder, so it can never delete a user's own files.

One process writes into a folder at a time: ``.reml.lock`` is locked with ``flock`` for the life
of the process. The operating system drops the lock when the process ends, however it ends, so a
killed run never leaves a stale lock behind. The lock file holds the writer's PID for the message
a second writer gets.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from reml_core.errors import UserError
from reml_core.storage import atomic_write_json, read_json_file

MARKER = ".reml.json"
LOCK = ".reml.lock"
MARKER_FORMAT = "reml.folder/1"
FolderKind = Literal["run", "bench"]

#: What each tool writes at the top of its folder (a benchmark adds one ``seed-N`` folder per seed).
OUTPUTS = ("config.json", "results.json", "report.md", "few_shot.png", "convergence.png")
RUN_ENTRIES = (*OUTPUTS, "checkpoints", "logs")
BENCH_ENTRIES = OUTPUTS
KIND_TOOLS = {"run": "reml-run", "bench": "reml-bench"}
KIND_NOUNS = {"run": "run", "bench": "benchmark"}

#: Conservative limits that hold on every common Linux/macOS file system.
NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4095


@dataclass(frozen=True)
class FolderMarker:
    """The contents of ``.reml.json``: who made the folder and what REML writes in it."""

    kind: FolderKind
    tool: str
    entries: tuple[str, ...]
    created: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"format": MARKER_FORMAT, "kind": self.kind, "tool": self.tool, "created": self.created, "entries": list(self.entries)}

    def owns(self, name: str) -> bool:
        """True for an entry REML wrote: a named entry, the marker, the lock, or a temporary file of REML's."""
        if name in (MARKER, LOCK) or name in self.entries:
            return True
        # atomic writes leave ".NAME.XXXXXXXX.tmp" behind only if killed mid-write
        return name.startswith(".") and name.endswith(".tmp") and any(name.startswith(f".{entry}.") for entry in (*self.entries, MARKER))


# -- paths ---------------------------------------------------------------------------------------


def check_path(path: Path | str, flag: str) -> Path:
    """A path a user gave, checked before anything is written: not empty, UTF-8, within the OS's limits."""
    text = os.fspath(path)
    if not text.strip():
        raise UserError(f"{flag}: empty path; name a directory (use . for the current one)")
    if "\x00" in text:
        raise UserError(f"{flag}: the path contains a NUL byte")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise UserError(f"{flag}: the path {shown!r} is not valid UTF-8; REML records paths in UTF-8 files, so rename it") from None
    for part in Path(text).parts:
        size = len(part.encode("utf-8"))
        if size > NAME_MAX_BYTES:
            raise UserError(f"{flag}: a path component is {size} bytes long; the limit is {NAME_MAX_BYTES} ({part[:40]}...)")
    absolute = len(os.path.abspath(text).encode("utf-8"))
    if absolute > PATH_MAX_BYTES or len(encoded) > PATH_MAX_BYTES:
        raise UserError(f"{flag}: the path is {max(absolute, len(encoded))} bytes long; the limit is {PATH_MAX_BYTES}")
    return Path(text).expanduser()


# -- the marker ----------------------------------------------------------------------------------


def read_marker(folder: Path) -> FolderMarker | None:
    """The folder's marker, or None when it has none; a marker that is not REML's is an error."""
    path = folder / MARKER
    if not (path.exists() or path.is_symlink()):
        return None
    data = read_json_file(path, "REML's folder marker", error=UserError)
    kind, tool, entries = data.get("format"), data.get("kind"), data.get("entries")
    if kind != MARKER_FORMAT or tool not in KIND_TOOLS or not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise UserError(f"{path} is not a marker REML wrote (expected format {MARKER_FORMAT!r}); leave the folder alone or remove it yourself")
    return FolderMarker(kind=tool, tool=str(data.get("tool", KIND_TOOLS[tool])), entries=tuple(entries), created=str(data.get("created", "")))


def write_marker(folder: Path, kind: FolderKind, entries: tuple[str, ...]) -> FolderMarker:
    marker = FolderMarker(kind=kind, tool=KIND_TOOLS[kind], entries=tuple(dict.fromkeys(entries)), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_json(folder / MARKER, marker.to_dict())
    return marker


# -- the lock ------------------------------------------------------------------------------------


@dataclass
class FolderLock:
    """An exclusive ``flock`` on a folder's ``.reml.lock``, held until :meth:`release` or process exit."""

    folder: Path
    descriptor: int = field(default=-1)

    def release(self) -> None:
        if self.descriptor >= 0:
            os.close(self.descriptor)  # closing drops the flock
            self.descriptor = -1


_HELD: dict[Path, FolderLock] = {}


def lock_folder(folder: Path, flag: str) -> FolderLock:
    """Take the folder's writer lock (idempotent within a process); refuse, naming the holder, if taken."""
    key = folder.resolve()
    if key in _HELD:
        return _HELD[key]
    path = folder / LOCK
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as error:
        raise UserError(f"{flag} {folder} is not writable: {error.strerror or error}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = _read_pid(descriptor)
        os.close(descriptor)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            who = f"PID {holder}" if holder else "another process"
            raise UserError(f"{flag} {folder} is in use by another REML process ({who}); wait for it to finish or stop it first") from None
        raise UserError(f"{flag} {folder}: cannot lock it: {error.strerror or error}") from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    lock = FolderLock(folder, descriptor)
    _HELD[key] = lock
    return lock


def _read_pid(descriptor: int) -> int | None:
    try:
        text = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def release_all() -> None:
    """Drop every lock this process holds (the command-line tools call it on exit; tests rely on it)."""
    for lock in _HELD.values():
        lock.release()
    _HELD.clear()


# -- claiming a folder ---------------------------------------------------------------------------


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(child.name for child in folder.iterdir())
    except OSError as error:
        raise UserError(f"cannot read {folder}: {error.strerror or error}") from None


def claim_new_folder(out: Path, *, kind: FolderKind, force: bool, flag: str = "--out", entries: tuple[str, ...] = ()) -> Path:
    """Make ``out`` the folder of a new run or benchmark (call after every other check); return it resolved.

    An empty or new folder is claimed. A folder holding a REML run or benchmark is refused unless
    ``force``; then only what its marker names is removed, and anything else in it refuses the
    claim. A non-empty folder without a marker is never touched. Takes the folder's writer lock.
    """
    out = check_path(out, flag)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} exists and is not a directory")
    if out.is_dir():
        present = [name for name in _entries(out) if name != LOCK]
        if present and read_marker(out) is None:
            raise UserError(
                f"{flag} {out} already holds files that are not a REML run (no {MARKER} marker, e.g. {present[0]!r}); "
                "choose an empty or new directory"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{flag} {out} is not writable: {error.strerror or error}") from None
    lock_folder(out, flag)
    present = [name for name in _entries(out) if name != LOCK]  # again, now that no one else can write
    if present:
        marker = read_marker(out)
        if marker is None:
            raise UserError(f"{flag} {out} already holds files that are not a REML run (e.g. {present[0]!r}); choose an empty or new directory")
        if not force:
            if marker.kind == "run":
                raise UserError(f"{flag} {out} already holds a run; continue it with --resume {out}, or pass --force to overwrite it")
            raise UserError(f"{flag} {out} already holds a {KIND_NOUNS[marker.kind]}; pass --force to overwrite it, or choose another directory")
        foreign = [name for name in present if not marker.owns(name)]
        if foreign:
            raise UserError(
                f"{flag} {out} holds {foreign[0]!r}, which REML did not write there; --force removes only REML's own files, "
                "so move it away or choose another directory"
            )
        for name in present:
            if name == MARKER:
                continue
            child = out / name
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    write_marker(out, kind, (*(RUN_ENTRIES if kind == "run" else BENCH_ENTRIES), *entries))
    return out.resolve()


def claim_run_to_resume(folder: Path, *, flag: str = "--resume") -> Path:
    """An existing ``reml-run`` folder, locked for this process; anything else is refused."""
    return _claim_to_resume(folder, "run", "config.json", flag)


def claim_bench_to_resume(folder: Path, *, flag: str = "--resume") -> Path:
    """An existing ``reml-bench`` folder (with the plan it was started with), locked for this process."""
    return _claim_to_resume(folder, "bench", "bench-plan.json", flag)


def _claim_to_resume(folder: Path, kind: FolderKind, needed: str, flag: str) -> Path:
    tool, noun = KIND_TOOLS[kind], KIND_NOUNS[kind]
    folder = check_path(folder, flag)
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: no such directory")
    marker = read_marker(folder)
    if marker is None:
        raise UserError(f"{flag} {folder}: not a REML {noun} directory (no {MARKER} marker; only folders {tool} created can be resumed)")
    if marker.kind != kind:
        raise UserError(f"{flag} {folder} is a {KIND_TOOLS.get(marker.kind, marker.kind)} folder; {tool} --resume continues only {tool} {noun}s")
    if not (folder / needed).is_file():
        raise UserError(f"{flag} {folder}: not a resumable {noun} directory (no {needed})")
    lock_folder(folder, flag)
    return folder.resolve()
