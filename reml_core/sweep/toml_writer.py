"""A config written as TOML that ``reml-run --config`` reads back to the same dict (the sweep's trial
configs and ``best.toml``). Python's standard library reads TOML but does not write it."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from reml_core.errors import UserError

_BARE_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")
_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UserError(f"{where}: {value} cannot be written to TOML")
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item, where) for item in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{"
            + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v, where)}" for k, v in value.items() if v is not None)
            + "}"
        )
    raise UserError(f"{where}: a {type(value).__name__} value cannot be written to TOML")


def to_toml(data: Mapping[str, Any], header: Sequence[str] = ()) -> str:
    """A config as TOML that ``reml-run --config`` reads back to the same dict.

    TOML has no null: a key whose value is None is left out (it then takes its default, which
    :func:`reml_core.sweep.plan.plan_sweep` checks is the same None) and named in a comment.
    """
    lines = [f"# {line}" if line else "#" for line in header]
    unset: list[str] = []

    def table(prefix: tuple[str, ...], items: Mapping[str, Any]) -> None:
        scalars = [(k, v) for k, v in items.items() if not isinstance(v, Mapping)]
        tables = [(k, v) for k, v in items.items() if isinstance(v, Mapping)]
        if prefix and (scalars or not tables):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(str(p)) for p in prefix) + "]")
        for key, value in scalars:
            where = ".".join((*prefix, str(key)))
            if value is None:
                unset.append(where)
                continue
            lines.append(f"{_toml_key(str(key))} = {_toml_value(value, where)}")
        for key, value in tables:
            table((*prefix, str(key)), value)

    table((), data)
    if unset:
        lines.append("")
        lines.append("# not set (null, their default): " + ", ".join(unset))
    return "\n".join(lines) + "\n"


def read_toml_config(text: str, source: str) -> dict[str, Any]:
    from reml_core.config import parse_config_text  # noqa: PLC0415 - lazy: start-up time: reml_core.config imports torch

    return parse_config_text(text, "toml", source=source)
