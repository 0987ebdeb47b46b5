"""The public API's arguments, checked before anything runs: each against its annotation, strictly.

:func:`check_arguments` wraps a public function (:mod:`reml_core.api`'s ``run``, ``bench``,
``sweep``, ``load``, the ``Results`` methods): an argument of the wrong type (``seeds="3"``, a str
where a list of names belongs, ``out=3``) raises :class:`ArgumentError` naming it, before the
function writes anything.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from reml_core.errors import UserError


class ArgumentError(UserError, TypeError):
    """An argument of a public function of the wrong type or value, named: raised before anything
    is written. A :class:`~reml_core.errors.UserError` (the CLIs print it as one line) and a ``TypeError``."""


_Function = TypeVar("_Function", bound=Callable[..., Any])
_PUBLIC_NAMES = {
    "run": "reml_core.run",
    "bench": "reml_core.bench",
    "sweep": "reml_core.sweep",
    "load": "reml_core.load",
}


def _expected(annotation: Any) -> str:
    """What a parameter's annotation accepts, for people: ``a str, a pathlib.Path or None``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_expected(arg) for arg in typing.get_args(annotation)]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "anything"
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return "a mapping (dict) with str keys"
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence):
        args = typing.get_args(annotation)
        return f"a list of {args[0].__name__ if args and isinstance(args[0], type) else 'items'}"
    if annotation is Path:
        return "a pathlib.Path"
    if annotation is int:
        return "an int"
    if isinstance(annotation, type):
        return f"a {annotation.__name__}"
    return str(annotation)


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


@functools.cache
def _checkers(function: Callable[..., Any]) -> tuple[inspect.Signature, dict[str, tuple[Any, Any]]]:
    """The function's signature and, per annotated parameter, its annotation and a strict pydantic validator."""
    from pydantic import ConfigDict, TypeAdapter  # noqa: PLC0415 - lazy: start-up time: pydantic

    from reml_core.registry import PluginRegistry  # noqa: PLC0415 - lazy: start-up time: reml_core.registry imports pluggy
    from reml_core.sweep.space import Dimension  # noqa: PLC0415 - lazy: start-up time: reml_core.sweep.space imports pydantic

    hints = typing.get_type_hints(
        function,
        localns={"PluginRegistry": PluginRegistry, "Dimension": Dimension},  # the API's TYPE_CHECKING names
    )
    signature = inspect.signature(function)
    config = ConfigDict(strict=True, arbitrary_types_allowed=True)
    checkers = {}
    for name, parameter in signature.parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL) or name not in hints:
            continue
        checkers[name] = (hints[name], TypeAdapter(hints[name], config=config))
    return signature, checkers


def check_arguments(function: _Function) -> _Function:
    """Check every argument of ``function`` against its annotation (strictly: no ``"3"`` for an int, no
    ``True`` for a count, no str where a list of names belongs) before it runs; :class:`ArgumentError` otherwise."""
    default = function.__qualname__ if "." in function.__qualname__ else f"{function.__module__}.{function.__name__}"
    label = _PUBLIC_NAMES.get(function.__qualname__, default)

    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError  # noqa: PLC0415 - lazy: start-up time: pydantic

        signature, checkers = _checkers(function)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            raise ArgumentError(f"{label}(): {error}") from None
        for name, value in bound.arguments.items():
            if name not in checkers:
                continue
            annotation, adapter = checkers[name]
            try:
                adapter.validate_python(value)
            except ValidationError as error:
                first = error.errors(include_url=False)[0]
                if first["type"] == "sequence_str" or (isinstance(value, str) and "list of" in _expected(annotation)):
                    raise ArgumentError(
                        f"{label}(): argument {name!r} must be {_expected(annotation)}, not a str: "
                        f"{value!r} would be read letter by letter; give [{value!r}]"
                    ) from None
                where = "".join(f"[{part!r}]" for part in first["loc"] if isinstance(part, int))
                inner = f" (its item {where} is {_shown(first['input'])})" if where else ""
                raise ArgumentError(
                    f"{label}(): argument {name!r} must be {_expected(annotation)}, not {_shown(value)}{inner}"
                ) from None
        return function(*args, **kwargs)

    return checked  # type: ignore[return-value]


def refuse_with_resume(resume: str | Path | None, given: Sequence[str], source: str, *, flag: str = "resume") -> None:
    """``resume`` takes every setting from the folder it continues (its ``source`` file): refuse anything
    else that was ``given`` (named as the caller's user knows it: keyword arguments, or the CLIs' flags)."""
    if resume is not None and given:
        raise UserError(f"{flag} takes every setting from {Path(resume) / source}; drop {', '.join(given)}")


def at_least_one_seed(seeds: int | None, label: str) -> None:
    if seeds is not None and seeds < 1:
        raise ArgumentError(f"{label}(): argument 'seeds' must be at least 1, not {seeds}")


def nonempty_names(name: str, value: Sequence[str] | None, label: str) -> list[str] | None:
    if value is None:
        return None
    if not value:
        raise ArgumentError(
            f"{label}(): argument {name!r} is empty; name at least one, or leave it out for the default"
        )
    return list(dict.fromkeys(value))
