"""What the three command-line tools share: one-line errors, signals, plugin warnings, config flags.

Only the standard library (and :mod:`reml_core.specs`, which imports nothing else: the flags that
pick components are built from its tables) is imported at module level: the heavy imports (pydantic, torch,
stable-baselines3) happen inside :func:`run_main`, so an interrupt during start-up ends as cleanly
as one at any later moment.
"""

from __future__ import annotations

import argparse
import errno
import importlib.abc
import importlib.machinery
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from reml_core.errors import ConfigError, DiskFullError, UserError, disk_full_reason
from reml_core.folders import check_path, release_all
from reml_core.interrupts import Interrupts as _Interrupts  # the state is the library's; the handlers below set it
from reml_core.interrupts import Terminated, raise_if_interrupted, set_interrupt_hint  # noqa: F401  (re-exported for the tools)
from reml_core.interrupts import unraisable_hook as _unraisable
from reml_core.logs import configure as configure_logging
from reml_core.specs import CHOICE_FLAGS, NAMED_SECTIONS, PRESETS, SPEC_TYPES, StateEncoderSpec

if TYPE_CHECKING:
    from reml_core.registry import PluginRegistry
    from reml_core.results import ResultsDocument

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_FOR_SIGNAL: dict[int, int] = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}
#: A config error lists its problems; past this many the rest are counted, not printed.
MAX_PROBLEMS_SHOWN = 20


#: The signals a command handles itself (see :func:`run_main`); they are held while native code initialises.
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Packages whose import runs native initialisation (C++ through pybind11 and the like) that calls back
#: into Python: a KeyboardInterrupt raised in one of those callbacks cannot unwind through the C++
#: frames and ends in std::terminate (the process aborts, SIGABRT, with a native stack). Every module
#: of these packages, and every extension module of any package, is imported with the signals held.
NATIVE_PACKAGES = frozenset(
    {"torch", "numpy", "scipy", "sklearn", "matplotlib", "pandas", "PIL", "ray", "pyarrow", "grpc"}
)


@contextmanager
def signals_held() -> Iterator[None]:
    """Block SIGINT and SIGTERM for this thread meanwhile; one that arrives stays pending and is
    delivered (Python raises it) the moment they are released, at a point where Python code runs."""
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    except (AttributeError, OSError, ValueError):  # a platform without signal masks
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _HeldLoader:
    """A module's own loader, run with the signals held; the module keeps its own loader afterwards."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def create_module(self, spec: Any) -> Any:
        with signals_held():  # a single-phase extension module initialises here
            return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        try:
            with signals_held():
                self.loader.exec_module(module)
        finally:
            namespace = getattr(module, "__dict__", {})  # written directly: some modules refuse setattr
            if namespace.get("__loader__") is self:
                namespace["__loader__"] = self.loader
            spec = namespace.get("__spec__")
            if spec is not None and getattr(spec, "loader", None) is self:
                spec.loader = self.loader


class NativeImportGuard(importlib.abc.MetaPathFinder):
    """Installed for the length of a command: finds modules as the rest of ``sys.meta_path`` does,
    and has those of :data:`NATIVE_PACKAGES` and every extension module loaded with the signals held."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if isinstance(finder, NativeImportGuard) or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        native = fullname.partition(".")[0] in NATIVE_PACKAGES or isinstance(
            spec.loader, importlib.machinery.ExtensionFileLoader
        )
        if (
            native
            and spec.has_location
            and hasattr(spec.loader, "exec_module")
            and not isinstance(spec.loader, _HeldLoader)
        ):
            spec.loader = _HeldLoader(spec.loader)
        return spec


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (and exit 2), not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_list(text: str) -> list[int]:
    """``5,10`` -> [5, 10], for flags such as ``--shots``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def path_arg(text: str) -> Path:
    """A path flag; an empty one is refused (``Path("")`` would silently mean the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path; name a directory (use . for the current one)")
    return Path(text)


def name_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return list(dict.fromkeys(values))


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0, got 0")
    return value


def choice_flag_help(kind: str, *, several: bool = False) -> str:
    """The help of the flag that picks a component of ``kind`` (see :data:`reml_core.specs.CHOICE_FLAGS`),
    from what its record type declares; ``several``: the flag takes comma-separated names."""
    spec = SPEC_TYPES[kind]
    default = " (default: the task plugin's choice)" if spec.chosen_by_name else ""
    if several:
        return (
            f"REML's {spec.flag_help}(s), comma-separated: REML is trained once per {spec.section}{default}, "
            f"e.g. {','.join(spec.flag_examples)}"
        )
    return f"{spec.flag_help}{default}, e.g. {', '.join(spec.flag_examples)}"


def add_experiment_flags(parser: argparse.ArgumentParser, *, several_encoders: bool = False) -> None:
    """Flags that choose components and budgets; each overrides the same key of ``--config``.

    One flag per entry of :data:`reml_core.specs.CHOICE_FLAGS` (``--plugin``, then ``--SECTION``
    for every section chosen by name); ``several_encoders``: ``--encoder`` takes several, as
    ``reml-bench`` does (REML is trained once per encoder).
    """
    group = parser.add_argument_group("experiment")
    for flag, kind in CHOICE_FLAGS.items():
        several = several_encoders and kind == StateEncoderSpec.kind
        group.add_argument(
            f"--{flag}", metavar="A,B" if several else "NAME", help=choice_flag_help(kind, several=several)
        )
    group.add_argument(
        "--preset",
        choices=PRESETS,
        help="budget preset: smoke (about a minute), default, full (the thesis' scale); default: default",
    )
    group.add_argument("--config", metavar="FILE", type=path_arg, help="TOML or YAML config file; flags override it")
    group.add_argument("--seed", type=non_negative_int, metavar="N", help="seed fixing every random number (default 0)")
    group.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set env.inner_adam_lr=0.001 or --set policy.n_steps=512 (repeatable)",
    )


def user_config(
    args: argparse.Namespace, extra: dict[str, Any] | None = None, *, registry: PluginRegistry | None = None
) -> dict[str, Any]:
    """The config file (if any) with flags on top, as one nested dict (a later layer's setting replaces an
    earlier one's under either name of a renamed setting: the plugins in ``registry`` say which are renamed)."""
    from reml_core.config import deep_merge, load_config_file, parse_assignment, renamed_settings  # noqa: PLC0415 - lazy: start-up time: reml_core.config imports torch; Ctrl-C at start-up, see cli/common.NativeImportGuard

    data: dict[str, Any] = load_config_file(check_path(args.config, "--config")) if args.config is not None else {}
    flags: dict[str, Any] = {}
    for key in ("plugin", "preset", "seed"):
        if getattr(args, key) is not None:
            flags[key] = getattr(args, key)
    for section in NAMED_SECTIONS:  # --encoder NAME sets encoder.name
        if getattr(args, section) is not None:
            flags[section] = {"name": getattr(args, section)}
        if isinstance(data.get(section), str):  # shorthand in the file: policy = "ppo-lstm"
            data[section] = {"name": data[section]}
    renames = renamed_settings(registry or discover_plugins())
    merged = deep_merge(data, deep_merge(flags, extra or {}, renames), renames)
    for assignment in args.assignments:
        merged = deep_merge(merged, parse_assignment(assignment), renames)
    return merged


def print_summary(results: ResultsDocument, out: Path) -> None:
    """The few-shot tables and where the files are, once a run or benchmark has finished."""
    from reml_core.reports import SMOKE_WARNING, document_tables, reference_lines  # noqa: PLC0415 - lazy: start-up time: reml_core.reports imports numpy; Ctrl-C at start-up, see cli/common.NativeImportGuard

    print(document_tables(results))
    for line in reference_lines(results):  # what predicting 0 or the support mean scores on the same tasks
        print(line)
    if (results.preset or results.config.get("preset")) == "smoke":
        print(SMOKE_WARNING.replace("`", "") + "\n")
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.md'}")


def announce_loading(prog: str) -> None:
    """A first line at once for the person at a terminal, before the seconds that importing torch and
    the plugins take (nothing when stderr is not a terminal: a user's mistake stays one line there)."""
    isatty = getattr(sys.stderr, "isatty", None)
    if callable(isatty) and isatty():
        print(f"{prog}: loading torch and the plugins...", file=sys.stderr, flush=True)


def execute_prepared(prog: str, prepared: Any, hint: str, stopped: Callable[[Any], str]) -> int:
    """The end every experiment command shares: run what was prepared (a Ctrl-C before or during it
    answered with ``hint``), then print the summary. A stop requested during training (the run
    checkpointed first) is one line, ``PROG: interrupted; <stopped(stop)>``, and the signal's exit code."""
    from reml_core.pipeline import command_line  # noqa: PLC0415 - lazy: start-up time: reml_core.pipeline imports torch; Ctrl-C at start-up, see cli/common.NativeImportGuard
    from reml_core.training import StopRequested  # noqa: PLC0415 - lazy: start-up time: reml_core.training imports torch; Ctrl-C at start-up, see cli/common.NativeImportGuard

    set_interrupt_hint(hint)
    raise_if_interrupted()
    try:
        results = prepared.execute(command=command_line()).document
    except StopRequested as stop:
        set_interrupt_hint(None)
        print(f"{prog}: {interruption_word(stop.signum)}; {stopped(stop)}", file=sys.stderr, flush=True)
        return EXIT_FOR_SIGNAL.get(stop.signum, 130)
    set_interrupt_hint(f"it had finished: its results are in {prepared.out}")  # a signal during the summary
    print_summary(results, prepared.out)
    return 0


def discover_plugins() -> PluginRegistry:
    from reml_core.registry import PluginRegistry  # noqa: PLC0415 - lazy: start-up time: reml_core.registry imports pluggy; Ctrl-C at start-up, see cli/common.NativeImportGuard

    return PluginRegistry.discover()


def _show_warning(
    message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    from reml_core.registry import PluginWarning  # noqa: PLC0415 - lazy: start-up time: reml_core.registry imports pluggy; Ctrl-C at start-up, see cli/common.NativeImportGuard

    stream = file or sys.stderr
    if issubclass(category, PluginWarning):
        stream.write(f"reml: warning: {message}\n")
    else:
        stream.write(warnings.formatwarning(message, category, filename, lineno, line))


def _terminate(signum: int, frame: Any) -> None:
    _Interrupts.received = signal.SIGTERM
    raise Terminated


def _interrupt(signum: int, frame: Any) -> None:
    _Interrupts.received = signal.SIGINT
    raise KeyboardInterrupt


def _signal_seen() -> int | None:
    """The signal that arrived during the command, raised or swallowed (a SIGTERM swallowed outranks)."""
    return _Interrupts.pending if _Interrupts.pending is not None else _Interrupts.received


def _exit_for(signum: int | None) -> int:
    return EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
        pass


def interruption_word(signum: int) -> str:
    """How the last line names what stopped the command: ``interrupted`` (Ctrl-C) or ``terminated (SIGTERM)``."""
    return "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"


def _interrupted(prog: str, code: int) -> int:
    what = interruption_word(signal.SIGTERM if code == EXIT_TERMINATED else signal.SIGINT)
    hint = f"; {_Interrupts.hint}" if _Interrupts.hint else ""
    print(f"{prog}: {what}{hint}", file=sys.stderr, flush=True)
    return code


class OutputError(Exception):
    """Standard output or standard error could not be written (disk full, I/O error, closed pipe).

    Deliberately not an ``OSError``: code that swallows ``OSError`` around a write (argparse's help,
    logging's error handler) must not hide it; :func:`run_main` turns it into one line and exit 2."""

    def __init__(self, name: str, error: OSError) -> None:
        super().__init__(f"{name}: {error}")
        self.name = name
        self.error = error


class _Output:
    """``sys.stdout`` / ``sys.stderr`` during a command: a write that fails raises :class:`OutputError`
    and is remembered, so that even one swallowed by library code ends the command as failed."""

    #: The first failure during the current command, if any.
    failure: OutputError | None = None

    def __init__(self, stream: Any, name: str) -> None:
        self._stream = stream
        self._name = name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _failed(self, error: OSError) -> OutputError:
        failure = OutputError(self._name, error)
        if _Output.failure is None:
            _Output.failure = failure
        return failure

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as error:
            raise self._failed(error) from error

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as error:
            raise self._failed(error) from error


def _silence(stream: Any) -> None:
    """Point a failed stream's file descriptor at /dev/null, so the interpreter's final flush of
    what is still buffered cannot fail again (and print "Exception ignored ...")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stream without a file descriptor (tests)
        pass


def _output_failed(prog: str, failure: OutputError, stdout: Any, stderr: Any) -> int:
    """One line on stderr (if stderr itself can still be written) and exit 2."""
    if failure.error.errno == errno.EPIPE:
        what = "output closed before everything was written (broken pipe)"
    else:
        reason = failure.error.strerror or str(failure.error)
        what = f"cannot write {failure.name}: {reason[:1].lower()}{reason[1:]}; the output is incomplete"
    if failure.name == "standard output":
        _silence(stdout)
    try:
        print(f"{prog}: error: {what}", file=stderr, flush=True)
    except OSError:
        _silence(stderr)
    return EXIT_USER_ERROR


def run_main(prog: str, body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """Run a CLI body: a user's mistake is one line on stderr and exit 2, never a traceback.

    Ctrl-C exits 130 and SIGTERM 143, each with the hint the body set (how to resume), at any
    moment: during imports, set-up, training (which checkpoints first), evaluation or writing.
    Every folder lock the body took is released on the way out. Standard output or error that
    cannot be written (a full disk, an I/O error, a closed pipe, even in ``--help``) is one line on
    stderr and exit 2, never a traceback and never a silent exit 0.
    """
    stdout, stderr = sys.stdout, sys.stderr
    if stdout is not None:
        sys.stdout = _Output(stdout, "standard output")
    if stderr is not None:
        sys.stderr = _Output(stderr, "standard error")
    _Output.failure = None
    try:
        code = _run_command(prog, body, argv)
        if stdout is not None:
            sys.stdout.flush()  # what is still buffered fails now, not at the interpreter's exit
    except OutputError as failure:
        return _output_failed(prog, _Output.failure or failure, stdout, stderr)
    except SystemExit:  # argparse's --help (which swallows a failed write) and its errors
        if _Output.failure is not None:
            return _output_failed(prog, _Output.failure, stdout, stderr)
        raise
    finally:
        if isinstance(sys.stdout, _Output):
            sys.stdout = stdout
        if isinstance(sys.stderr, _Output):
            sys.stderr = stderr
    if _Output.failure is not None:  # a failed write that library code caught and ignored
        return _output_failed(prog, _Output.failure, stdout, stderr)
    return code


def _run_command(prog: str, body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """:func:`run_main` with the output streams guarded."""
    try:
        previous_term = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (an embedding program): leave its signals alone
        previous_term = None
    previous_int = None
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # an ignored SIGINT stays ignored
            previous_int = signal.signal(signal.SIGINT, _interrupt)
    except ValueError:
        pass
    _Interrupts.hint = None
    _Interrupts.pending = None
    _Interrupts.received = None
    previous_unraisable = sys.unraisablehook
    sys.unraisablehook = _unraisable(previous_unraisable)
    guard = NativeImportGuard()
    sys.meta_path.insert(0, guard)
    try:
        warnings.showwarning = _show_warning
        configure_logging()
        code = body(argv)
        raise_if_interrupted()  # swallowed after the last phase boundary (a fork hook): it still ends the command
        if code == 0 and _Interrupts.received is not None:  # library code caught the signal's exception and went on
            return _interrupted(prog, _exit_for(_Interrupts.received))
        return code
    except (ConfigError, UserError) as error:
        if _signal_seen() is not None:  # e.g. a plugin left unloaded by a swallowed Ctrl-C
            return _interrupted(prog, _exit_for(_signal_seen()))
        if isinstance(error, UserError) and not isinstance(error, ConfigError):
            print(f"{prog}: error: {error}", file=sys.stderr)
            return error.exit_code
        shown = error.problems[:MAX_PROBLEMS_SHOWN]
        for problem in shown:
            print(problem, file=sys.stderr)
        if len(error.problems) > len(shown):
            print(f"... and {len(error.problems) - len(shown):,} more problems", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return _interrupted(prog, EXIT_INTERRUPTED)
    except Terminated:
        return _interrupted(prog, EXIT_TERMINATED)
    except BrokenPipeError:
        _silence_stdout()
        print(f"{prog}: error: output closed before everything was written (broken pipe)", file=sys.stderr)
        return EXIT_USER_ERROR
    except MemoryError:
        print(f"{prog}: error: out of memory; make the pool, networks or budgets smaller", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as error:
        if _signal_seen() is not None:  # the interrupt's consequence, not a bug
            return _interrupted(prog, _exit_for(_signal_seen()))

        reason = disk_full_reason(error)  # a full disk met by a library's own writer (a training log): one line too
        if reason:
            print(
                f"{prog}: error: {DiskFullError(getattr(error, 'filename', None) or 'a file', reason)}", file=sys.stderr
            )
            return EXIT_USER_ERROR
        raise
    finally:
        if guard in sys.meta_path:
            sys.meta_path.remove(guard)
        sys.unraisablehook = previous_unraisable
        # Run as a console script (argv None), the command is done and the process only exits now: a signal
        # that lands in this last moment is ignored, not left to kill the process (exit -2/-15) or print a
        # traceback. Called in-process (argv given), the caller's handlers come back.
        console = argv is None
        if previous_int is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN if console else previous_int)
        if previous_term is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN if console else previous_term)
        _Interrupts.hint = None

        release_all()
