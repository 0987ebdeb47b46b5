"""Which folders are REML's, and one writer per folder.

A folder REML writes into (a ``reml-run`` run, a ``reml-bench`` benchmark, a ``reml-sweep``
sweep) holds a marker, ``.reml.json``, written before anything else: one marker, read and written
here for all three (a sweep written before they shared it has ``.reml-sweep.json``, still read).
It names the tool that made the folder. A folder is REML's only if that marker says so: a
stray ``config.json`` proves nothing. Beside it, the ledger ``.reml.files`` lists every file REML
wrote there, at any depth, each noted *before* it is written (see :mod:`reml_core.storage`), so a
killed process leaves nothing the ledger does not name. ``--force`` removes exactly the files the
ledger names (and REML's own ``.NAME.*.tmp`` leftovers, and the folders that held only those) and
refuses, naming it, anything else anywhere inside: it can never delete a user's own files. A
REML folder inside another (a benchmark's or a sweep's runs) is judged by its own ledger.

REML never makes symbolic links: a link anywhere in a folder it is asked to continue or replace
is refused, and the lock is opened without following one, so REML never writes outside the folder.

One process writes into a folder at a time: ``.reml.lock`` is locked with ``flock`` for the life
of the process. The operating system drops the lock when the process ends, however it ends, so a
killed run never leaves a stale lock behind. The lock file holds the writer's PID for the message
a second writer gets.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from reml_core.errors import UserError
from reml_core.storage import (
    LEDGER,
    PATTERN_PREFIX,
    atomic_write_json,
    link_error,
    raise_if_disk_full,
    read_json_file,
    read_ledger_lines,
    start_ledger,
)

MARKER = ".reml.json"
LOCK = ".reml.lock"
#: A sweep's marker before sweeps shared ``.reml.json`` (format ``reml.sweep-folder/1``): read, never written.
LEGACY_SWEEP_MARKER = ".reml-sweep.json"
LEGACY_SWEEP_FORMAT = "reml.sweep-folder/1"
#: The files at the top of every REML folder that are REML's without being listed.
FOLDER_FILES = (MARKER, LEGACY_SWEEP_MARKER, LOCK, LEDGER)
MARKER_FORMAT = "reml.folder/1"
FolderKind = Literal["run", "bench", "sweep"]

#: What each tool writes at the top of its folder (a benchmark adds one ``seed-N`` folder per seed), named in the
#: marker for a reader; what ``--force`` may remove is the ledger's list, at every depth.
OUTPUTS = ("config.json", "results.json", "report.md", "few_shot.png", "convergence.png")
RUN_ENTRIES = (*OUTPUTS, "checkpoints", "logs")
BENCH_ENTRIES = OUTPUTS
SWEEP_ENTRIES = ("sweep.json", "sweep.md", "sweep.png", "best.toml", "configs", "trials", "logs", "tune")
KIND_ENTRIES: dict[str, tuple[str, ...]] = {"run": RUN_ENTRIES, "bench": BENCH_ENTRIES, "sweep": SWEEP_ENTRIES}
KIND_TOOLS = {"run": "reml-run", "bench": "reml-bench", "sweep": "reml-sweep"}
KIND_NOUNS = {"run": "run", "bench": "benchmark", "sweep": "sweep"}
#: What the message refusing a folder that already holds one of these says to do (without --force).
_ALREADY_HOLDS = {
    "run": "continue it with --resume {out}, or pass --force to overwrite it",
    "bench": "pass --force to overwrite it, or choose another directory",
    "sweep": "continue it with reml-sweep --resume {out}, or pass --force to overwrite it",
}

#: Conservative limits that hold on every common Linux/macOS file system.
NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4095


@dataclass(frozen=True)
class FolderMarker:
    """The contents of ``.reml.json``: who made the folder and what REML writes at its top (the ledger,
    ``.reml.files``, lists every file it wrote)."""

    kind: FolderKind
    tool: str
    entries: tuple[str, ...]
    created: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "format": MARKER_FORMAT,
            "kind": self.kind,
            "tool": self.tool,
            "created": self.created,
            "entries": list(self.entries),
        }


# -- what REML wrote, at every depth ---------------------------------------------------------------


@dataclass(frozen=True)
class Ledger:
    """What a folder's ledger says REML wrote there: files, and glob patterns (``**`` = any depth)."""

    files: frozenset[tuple[str, ...]]
    patterns: tuple[tuple[str, ...], ...]
    folders: frozenset[tuple[str, ...]]
    #: REML folders made inside this one (``trials/ID/``): their marker, lock and ledger are REML's
    nested: frozenset[tuple[str, ...]] = frozenset()

    @classmethod
    def of(cls, lines: list[str]) -> Ledger:
        files, patterns, nested = set(), [], set()
        for line in lines:
            if line.startswith(PATTERN_PREFIX):
                patterns.append(tuple(line[len(PATTERN_PREFIX) :].split("/")))
            elif line.endswith("/"):
                nested.add(tuple(line.rstrip("/").split("/")))
            else:
                files.add(tuple(line.split("/")))
        folders = {parts[:i] for parts in files for i in range(1, len(parts))}
        folders |= {parts[:i] for parts in nested for i in range(1, len(parts) + 1)}
        return cls(frozenset(files), tuple(patterns), frozenset(folders), frozenset(nested))

    def owns_file(self, parts: tuple[str, ...]) -> bool:
        if parts[-1] in FOLDER_FILES and (len(parts) == 1 or parts[:-1] in self.nested):
            return True
        if parts in self.files or any(_matches(pattern, parts) for pattern in self.patterns):
            return True
        # ".NAME.XXXXXXXX.tmp": what an atomic write of a listed NAME leaves behind if killed mid-write
        name = parts[-1]
        if name.startswith(".") and name.endswith(".tmp"):
            top = len(parts) == 1 or parts[:-1] in self.nested
            siblings = {*(p[-1] for p in self.files if p[:-1] == parts[:-1]), *(FOLDER_FILES if top else ())}
            return any(name.startswith(f".{sibling}.") for sibling in siblings)
        return False

    def owns_folder(self, parts: tuple[str, ...]) -> bool:
        return parts in self.folders or any(_matches(pattern, parts, prefix=True) for pattern in self.patterns)


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...], *, prefix: bool = False) -> bool:
    """``parts`` matches ``pattern`` (one glob per component; a last ``**`` matches any depth, even none).
    With ``prefix``, also a folder on the way to a match."""
    if pattern and pattern[-1] == "**":
        head = pattern[:-1]
        if len(parts) >= len(head):
            return all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, head))
    elif len(parts) == len(pattern):
        return all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern))
    if prefix and len(parts) < len(pattern):
        return all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern))
    return False


def read_ledger(folder: Path) -> Ledger | None:
    lines = read_ledger_lines(folder)
    return None if lines is None else Ledger.of(lines)


def _scan(folder: Path, relative: tuple[str, ...]) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder.joinpath(*relative)) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as error:
        raise UserError(f"cannot read {folder.joinpath(*relative)}: {error.strerror or error}") from None


def foreign_file(folder: Path, ledger: Ledger, relative: tuple[str, ...] = ()) -> str | None:
    """The first path under ``folder`` that REML did not write there (a link, a file or a folder the
    ledger does not name), relative to ``folder``; None when everything in it is REML's."""
    for entry in _scan(folder, relative):
        parts = (*relative, entry.name)
        shown = "/".join(parts)
        if entry.is_symlink():
            return f"{shown} (a symbolic link)"
        if entry.is_dir(follow_symlinks=False):
            if not ledger.owns_folder(parts):
                return shown + "/"
            nested = folder.joinpath(*parts)
            inner = read_ledger(nested) if ledger.owns_file((*parts, LEDGER)) else None
            if inner is not None:  # a REML folder made in this one: judged by its own list
                found = foreign_file(nested, inner)
                if found is not None:
                    return f"{shown}/{found}"
            else:
                found = foreign_file(folder, ledger, parts)
                if found is not None:
                    return found
        elif not ledger.owns_file(parts):
            return shown
    return None


def remove_written(folder: Path, ledger: Ledger, *, keep: tuple[str, ...] = (), relative: tuple[str, ...] = ()) -> None:
    """Delete what REML wrote under ``folder`` (check :func:`foreign_file` first), except the top-level ``keep``."""
    for entry in _scan(folder, relative):
        parts = (*relative, entry.name)
        path = folder.joinpath(*parts)
        if entry.is_dir(follow_symlinks=False) and not entry.is_symlink():
            inner = read_ledger(path) if ledger.owns_file((*parts, LEDGER)) else None
            if inner is not None:
                remove_written(path, inner)
            else:
                remove_written(folder, ledger, relative=parts)
            path.rmdir()  # fails, leaving the rest, if anything not REML's appeared meanwhile
        elif not (len(parts) == 1 and entry.name in keep):
            path.unlink()


def refuse_links(folder: Path, flag: str) -> None:
    """Refuse a folder REML is to write into again when a symbolic link is anywhere inside it."""
    stack = [Path(folder)]
    while stack:
        current = stack.pop()
        for entry in _scan(current, ()):
            if entry.is_symlink():
                raise UserError(
                    f"{flag} {folder}: {Path(entry.path).relative_to(folder)} is a symbolic link; REML never makes "
                    "links and does not write through one (it could change files outside the folder): remove it"
                )
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))


def clear_for_force(out: Path, flag: str, *, keep: tuple[str, ...]) -> None:
    """What ``--force`` does: refuse anything REML did not write in ``out``, else remove all REML wrote but ``keep``."""
    ledger = read_ledger(out)
    if ledger is None:
        raise UserError(
            f"{flag} {out} was written by an older REML that did not list the files it wrote ({LEDGER}), so --force "
            "cannot "
            "tell its files from yours; remove the folder yourself or choose another directory"
        )
    foreign = foreign_file(out, ledger)
    if foreign is not None:
        raise UserError(
            f"{flag} {out} holds {foreign!r}, which REML did not write there; --force removes only REML's own files, "
            "so move it away or choose another directory"
        )
    remove_written(out, ledger, keep=keep)


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
        raise UserError(
            f"{flag}: the path {shown!r} is not valid UTF-8; REML records paths in UTF-8 files, so rename it"
        ) from None
    for part in Path(text).parts:
        size = len(part.encode("utf-8"))
        if size > NAME_MAX_BYTES:
            raise UserError(
                f"{flag}: a path component is {size} bytes long; the limit is {NAME_MAX_BYTES} ({part[:40]}...)"
            )
    absolute = len(os.path.abspath(text).encode("utf-8"))
    if absolute > PATH_MAX_BYTES or len(encoded) > PATH_MAX_BYTES:
        raise UserError(f"{flag}: the path is {max(absolute, len(encoded))} bytes long; the limit is {PATH_MAX_BYTES}")
    return Path(text).expanduser()


# -- the marker ----------------------------------------------------------------------------------


def read_marker(folder: Path) -> FolderMarker | None:
    """The folder's marker, or None when it has none; a marker that is not REML's is an error."""
    path = folder / MARKER
    if not (path.exists() or path.is_symlink()):
        return _read_legacy_sweep_marker(folder)
    if path.is_symlink():
        raise link_error(path, folder)
    data = read_json_file(path, "REML's folder marker", error=UserError)
    kind, tool, entries = data.get("format"), data.get("kind"), data.get("entries")
    if (
        kind != MARKER_FORMAT
        or tool not in KIND_TOOLS
        or not isinstance(entries, list)
        or not all(isinstance(e, str) for e in entries)
    ):
        raise UserError(
            f"{path} is not a marker REML wrote (expected format {MARKER_FORMAT!r}); leave the folder alone or remove "
            "it yourself"
        )
    return FolderMarker(
        kind=tool,
        tool=str(data.get("tool", KIND_TOOLS[tool])),
        entries=tuple(entries),
        created=str(data.get("created", "")),
    )


def _read_legacy_sweep_marker(folder: Path) -> FolderMarker | None:
    """The marker a sweep folder had before sweeps shared ``.reml.json``, as a sweep's marker; None when absent."""
    path = folder / LEGACY_SWEEP_MARKER
    if not (path.exists() or path.is_symlink()):
        return None
    if path.is_symlink():
        raise link_error(path, folder)
    data = read_json_file(path, "reml-sweep's folder marker", error=UserError)
    entries = data.get("entries")
    if (
        data.get("format") != LEGACY_SWEEP_FORMAT
        or not isinstance(entries, list)
        or not all(isinstance(e, str) for e in entries)
    ):
        raise UserError(
            f"{path} is not a marker reml-sweep wrote (expected format {LEGACY_SWEEP_FORMAT!r}); leave the folder "
            "alone "
            "or remove it yourself"
        )
    return FolderMarker(kind="sweep", tool="reml-sweep", entries=tuple(entries), created=str(data.get("created", "")))


def write_marker(folder: Path, kind: FolderKind, entries: tuple[str, ...]) -> FolderMarker:
    marker = FolderMarker(
        kind=kind,
        tool=KIND_TOOLS[kind],
        entries=tuple(dict.fromkeys(entries)),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
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
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
    except OSError as error:
        if os.path.islink(path):
            raise UserError(
                f"{flag} {folder}: {LOCK} is a symbolic link; REML does not write through links (it could change "
                "a file outside the folder), so remove it"
            ) from None
        raise UserError(f"{flag} {folder} is not writable: {error.strerror or error}") from None
    if os.fstat(descriptor).st_nlink > 1:
        os.close(descriptor)
        raise UserError(
            f"{flag} {folder}: {LOCK} has other hard links; REML does not write into a file shared with another "
            "path, so remove it"
        )
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = _read_pid(descriptor)
        os.close(descriptor)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            who = f"PID {holder}" if holder else "another process"
            raise UserError(
                f"{flag} {folder} is in use by another REML process ({who}); wait for it to finish or stop it first"
            ) from None
        raise UserError(f"{flag} {folder}: cannot lock it: {error.strerror or error}") from None
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
    except OSError as error:
        os.close(descriptor)
        raise_if_disk_full(error, path)
        raise
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


def check_new_folder(out: Path, *, force: bool, flag: str = "--out") -> Path:
    """Refuse an ``out`` a new REML folder may not be made in, writing nothing (no lock either):
    a file, a non-empty folder without a marker, a REML folder unless ``force``. :func:`claim_new_folder`
    checks again under the lock; a tool that starts something slow before claiming (a sweep starts Ray)
    calls this first, so a mistake costs nothing."""
    out = check_path(out, flag)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} exists and is not a directory")
    if out.is_dir():
        present = [name for name in _entries(out) if name not in (LOCK, LEDGER)]
        if present:
            _refuse_present(out, present, force=force, flag=flag)
    return out


def _refuse_present(out: Path, present: list[str], *, force: bool, flag: str) -> FolderMarker:
    """``out`` holds ``present``: refuse unless it is a REML folder and ``force`` replaces it; return its marker."""
    marker = read_marker(out)
    if marker is None:
        # another REML process claiming it right now (its ledger's or marker's temporary file is there, the
        # marker not yet): say so, rather than call its files foreign
        _refuse_if_in_use(out, flag)
        raise UserError(
            f"{flag} {out} already holds files that are not a REML run, benchmark or sweep (no {MARKER} marker, e.g. "
            f"{present[0]!r}); "
            "choose an empty or new directory"
        )
    if not force:
        _refuse_if_in_use(out, flag)  # "continue it with --resume" would only be refused: say what is going on
        raise UserError(
            f"{flag} {out} already holds a {KIND_NOUNS[marker.kind]}; {_ALREADY_HOLDS[marker.kind].format(out=out)}"
        )
    return marker


def _refuse_if_in_use(out: Path, flag: str) -> None:
    """Refuse ``out`` by naming the other process that holds its writer lock, if one does."""
    holder = _writer_of(out)
    if holder is not None and holder != os.getpid() and out.resolve() not in _HELD:
        who = f"PID {holder}" if holder else "another process"
        raise UserError(
            f"{flag} {out} is in use by another REML process ({who}); wait for it to finish or stop it first"
        )


def _writer_of(folder: Path) -> int | None:
    """The PID of the process writing ``folder`` (0 when its PID is unreadable), or None when no one holds its lock.

    Only probes: the lock is taken and dropped at once when free, and nothing is created."""
    path = folder / LOCK
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None  # no lock file (or a link, which claiming refuses by name): no writer
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return _read_pid(descriptor) or 0
        return None
    else:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return None
    finally:
        os.close(descriptor)


def claim_new_folder(
    out: Path, *, kind: FolderKind, force: bool, flag: str = "--out", entries: tuple[str, ...] = ()
) -> Path:
    """Make ``out`` the folder of a new run, benchmark or sweep (call after every other check); return it resolved.

    An empty or new folder is claimed. A folder holding a REML run, benchmark or sweep is refused
    unless ``force``; then only what its ledger names is removed, and anything else in it refuses
    the claim. A non-empty folder without a marker is never touched. Takes the folder's writer lock.
    """
    out = check_new_folder(out, force=force, flag=flag)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{flag} {out} is not writable: {error.strerror or error}") from None
    lock_folder(out, flag)
    present = [name for name in _entries(out) if name not in (LOCK, LEDGER)]  # again, now that no one else can write
    if present:
        _refuse_present(out, present, force=force, flag=flag)
        clear_for_force(out, flag, keep=(MARKER, LOCK, LEDGER))
    start_ledger(out)  # a folder inside another REML folder is that one's only if it listed it first (a sweep's trials)
    write_marker(out, kind, (*KIND_ENTRIES[kind], *entries))
    return out.resolve()


def claim_run_to_resume(folder: Path, *, flag: str = "--resume") -> Path:
    """An existing ``reml-run`` folder, locked for this process; anything else is refused."""
    return _claim_to_resume(folder, "run", "config.json", flag)


def claim_bench_to_resume(folder: Path, *, flag: str = "--resume") -> Path:
    """An existing ``reml-bench`` folder (with the plan it was started with), locked for this process."""
    return _claim_to_resume(folder, "bench", "bench-plan.json", flag)


def claim_sweep_to_resume(folder: Path, *, flag: str = "--resume") -> Path:
    """An existing ``reml-sweep`` folder (with its plan, ``sweep.json``), locked for this process."""
    return _claim_to_resume(folder, "sweep", "sweep.json", flag)


def _claim_to_resume(folder: Path, kind: FolderKind, needed: str, flag: str) -> Path:
    tool, noun = KIND_TOOLS[kind], KIND_NOUNS[kind]
    folder = check_path(folder, flag)
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: no such directory")
    marker = read_marker(folder)
    if marker is None:
        _refuse_if_in_use(folder, flag)  # being claimed by another process right now (no marker yet)
        raise UserError(
            f"{flag} {folder}: not a REML {noun} directory (no {MARKER} marker; only folders {tool} created can be "
            "resumed)"
        )
    if marker.kind != kind:
        raise UserError(
            f"{flag} {folder} is a {KIND_TOOLS.get(marker.kind, marker.kind)} folder; {tool} --resume continues only "
            f"{tool} {noun}s"
        )
    if not (folder / needed).is_file():
        raise UserError(f"{flag} {folder}: not a resumable {noun} directory (no {needed})")
    lock_folder(folder, flag)
    refuse_links(folder, flag)
    return folder.resolve()
