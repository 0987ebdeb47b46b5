"""What the library and the command-line tools share about Ctrl-C and SIGTERM.

The state lives here, in the library, because library code (the API's phases, a sweep's end)
asks whether an interrupt is pending and raises what a signal means; the command-line tools
(:mod:`reml_core.cli.common`) install the handlers that set it and print the hint it holds.
Standard library only, so a command can import it before anything heavy.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Terminated(BaseException):
    """SIGTERM (what a cluster scheduler sends) arrived outside training; handled like Ctrl-C."""


class Interrupts:
    """What to tell the user if the command is interrupted now: set once its folder exists.

    ``pending``: the signal (SIGINT or SIGTERM) whose exception (KeyboardInterrupt or
    :class:`Terminated`) Python could not raise, because it arrived while a callback that Python
    calls from C ran: a weakref or garbage-collection callback (importlib's module-lock callback
    during an import), a ``__del__``, an ``os.register_at_fork`` hook (logging's, right after the
    fork of a worker or an evaluation process). Python only reports such an exception as
    "ignored". The command's unraisable hook (:func:`unraisable_hook`) records it here;
    :func:`raise_if_interrupted` raises it at the next phase boundary, and a command that reaches
    its end with it still pending ends as interrupted: the signal is neither lost nor shown as a
    traceback.
    """

    hint: str | None = None
    pending: int | None = None
    #: The signal (SIGINT or SIGTERM) that arrived during the command, if one did: an error that
    #: follows it is its consequence (e.g. a module left half-imported when an import was cut
    #: short and the interrupt swallowed by library code), so the command ends as interrupted.
    received: int | None = None

    @classmethod
    def reset(cls) -> None:
        cls.hint, cls.pending, cls.received = None, None, None


def set_interrupt_hint(hint: str | None) -> None:
    """The line printed (on stderr) when an interrupt ends the command from now on, e.g. how to resume."""
    Interrupts.hint = hint


def raise_if_interrupted() -> None:
    """Raise the Ctrl-C or SIGTERM Python had to swallow (see :class:`Interrupts`), if there was one."""
    pending, Interrupts.pending = Interrupts.pending, None
    if pending == signal.SIGTERM:
        raise Terminated
    if pending is not None:
        raise KeyboardInterrupt


def unraisable_hook(previous: Any) -> Any:
    """A ``sys.unraisablehook`` that records a swallowed KeyboardInterrupt or :class:`Terminated` (the
    exceptions the commands' signal handlers raise) and passes anything else on."""

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
            if Interrupts.pending != signal.SIGTERM:  # a SIGTERM (the scheduler's) outranks a Ctrl-C
                Interrupts.pending = signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT
            return
        previous(unraisable)

    hook.records_interrupts = True  # type: ignore[attr-defined]
    return hook


@contextmanager
def swallowed_interrupts_raised() -> Iterator[None]:
    """For the API's calls (``reml_core.api.run``, ``bench``, ``sweep``): a Ctrl-C that Python swallows while
    the call runs (see :class:`Interrupts`) is raised at its next phase boundary, or when the call ends, as
    the command-line tools do, instead of being lost. The caller's ``sys.unraisablehook`` is restored after
    the call and sees everything else; inside a command (whose hook is already in place) this changes nothing."""
    previous = sys.unraisablehook
    if getattr(previous, "records_interrupts", False):
        yield
        return
    Interrupts.pending = None
    hook = unraisable_hook(previous)
    sys.unraisablehook = hook
    try:
        yield
        raise_if_interrupted()
    finally:
        Interrupts.pending = None
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous
