"""What the library and the command-line tools share about Ctrl-C and SIGTERM.

The state lives here, in the library, because library code (the API's phases, a sweep's end)
asks whether an interrupt is pending and raises what a signal means; the command-line tools
(:mod:`reml_core.cli.common`) install the handlers that set it and print the hint it holds.
Standard library only, so a command can import it before anything heavy.
"""

from __future__ import annotations

from typing import Any


class Terminated(BaseException):
    """SIGTERM (what a cluster scheduler sends) arrived outside training; handled like Ctrl-C."""


class Interrupts:
    """What to tell the user if the command is interrupted now: set once its folder exists.

    ``pending``: a Ctrl-C whose KeyboardInterrupt Python could not raise, because it arrived
    while a weakref or garbage-collection callback ran (e.g. importlib's module-lock callback
    during an import): Python only reports such an exception as "ignored". The command's
    unraisable hook (:func:`unraisable_hook`) records it here, and :func:`raise_if_interrupted`
    raises it at the next phase boundary, so the interrupt is neither lost nor shown as a traceback.
    """

    hint: str | None = None
    pending: bool = False
    #: The signal (SIGINT or SIGTERM) that arrived during the command, if one did: an error that
    #: follows it is its consequence (e.g. a module left half-imported when an import was cut
    #: short and the interrupt swallowed by library code), so the command ends as interrupted.
    received: int | None = None

    @classmethod
    def reset(cls) -> None:
        cls.hint, cls.pending, cls.received = None, False, None


def set_interrupt_hint(hint: str | None) -> None:
    """The line printed (on stderr) when an interrupt ends the command from now on, e.g. how to resume."""
    Interrupts.hint = hint


def raise_if_interrupted() -> None:
    """Raise the Ctrl-C Python had to swallow (see :class:`Interrupts`), if there was one."""
    if Interrupts.pending:
        Interrupts.pending = False
        raise KeyboardInterrupt


def unraisable_hook(previous: Any) -> Any:
    """A ``sys.unraisablehook`` that records a swallowed KeyboardInterrupt and passes anything else on."""

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            Interrupts.pending = True
            return
        previous(unraisable)

    return hook
