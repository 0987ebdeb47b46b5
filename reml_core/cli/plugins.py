"""``reml-plugins``: every registered component, grouped by kind, with the plugin that provides it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reml_core.cli.common import ArgumentParser, discover_plugins, run_main
from reml_core.errors import UserError
from reml_core.specs import KIND_LABELS, KINDS, SECTIONS, TABLE_EACH_KINDS, TaskSamplerSpec

if TYPE_CHECKING:
    from reml_core.registry import PluginRegistry

PROG = "reml-plugins"
DISABLE_ENV_VAR = "REML_DISABLE_PLUGINS"  # the registry's; repeated here to keep start-up light


def listing(registry: PluginRegistry) -> dict[str, list[dict[str, str]]]:
    """``{kind: [{name, plugin, entry_point, description}, ...]}`` with all six kinds present.

    ``plugin`` is the distribution that installed the component, ``entry_point`` the plugin's
    name in the ``reml.plugins`` group; ``REML_DISABLE_PLUGINS`` takes either.
    """
    return {
        kind: [
            {
                "name": entry.name,
                "plugin": entry.distribution,
                "entry_point": entry.plugin,
                "description": entry.spec.description,
            }
            for entry in registry.components(kind)
        ]
        for kind in KINDS
    }


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    return text.replace("typing.", "").replace("NoneType", "None")


_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "length >=", "max_length": "length <="}


def _constraint(item: Any) -> str:
    """``Ge(ge=2)`` -> ``>= 2``; anything else as pydantic shows it."""
    for attribute, symbol in _BOUNDS.items():
        value = getattr(item, attribute, None)
        if value is not None:
            return f"{symbol} {value}"
    return str(item)


def options(model: Any, prefix: str = "") -> list[dict[str, Any]]:
    """Every option of a pydantic config model: dotted key, type, default, constraints, description.

    Nested models (the core's ``env``/``train``/``eval``) are listed field by field."""
    from pydantic import BaseModel  # noqa: PLC0415 - lazy: start-up time: pydantic; Ctrl-C at start-up, see cli/common.NativeImportGuard
    from pydantic_core import PydanticUndefined  # noqa: PLC0415 - lazy: start-up time: pydantic; Ctrl-C at start-up, see cli/common.NativeImportGuard

    rows: list[dict[str, Any]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += options(annotation, f"{prefix}{name}.")
            continue
        if info.default is not PydanticUndefined:
            default = info.default
        elif info.default_factory is not None:
            default = info.default_factory()
        else:
            default = None
        constraints = [_constraint(item) for item in info.metadata]
        rows.append(
            {
                "key": f"{prefix}{name}",
                "type": _type_name(annotation),
                "default": default if isinstance(default, (str, int, float, bool, list, type(None))) else str(default),
                "constraints": constraints,
                "description": info.description or "",
                "required": info.is_required(),
            }
        )
    return rows


def show(registry: PluginRegistry, name: str) -> list[dict[str, Any]]:
    """What ``--show NAME`` prints: every component called NAME (any kind), or ``core`` (the
    experiment's own env/train/eval options and the core's budgets per preset)."""
    from reml_core.settings import CORE_PRESETS, EnvConfig, EvalConfig, TrainConfig  # noqa: PLC0415 - lazy: start-up time: reml_core.settings imports torch; Ctrl-C at start-up, see cli/common.NativeImportGuard

    if name == "core":
        rows = []
        for section, model in (("env", EnvConfig), ("train", TrainConfig), ("eval", EvalConfig)):
            rows += options(model, f"{section}.")
        return [
            {
                "kind": "core",
                "name": "core",
                "description": "the experiment's own sections (every family)",
                "options": rows,
                "presets": CORE_PRESETS,
            }
        ]
    found = []
    for kind in KINDS:
        for entry in registry.components(kind):
            if entry.name != name:
                continue
            spec = entry.spec
            item: dict[str, Any] = {
                "kind": kind,
                "name": entry.name,
                "plugin": entry.distribution,
                "entry_point": entry.plugin,
                "description": spec.description,
                "options": options(spec.config_model),
                "presets": dict(spec.presets),
            }
            if isinstance(spec, TaskSamplerSpec):
                item["recommended"] = {k: v for k, v in vars(spec.recommended).items()}
                item["experiment_presets"] = dict(spec.experiment_presets)
            found.append(item)
    if not found:
        names = sorted({entry.name for entry in registry.components()} | {"core"})
        raise UserError(f"--show: no component is named {name!r} (available: {', '.join(names)})")
    return found


def _print_shown(items: list[dict[str, Any]]) -> None:
    for item in items:
        origin = f" [plugin {item['entry_point']} from {item['plugin']}]" if "plugin" in item else ""
        title = "core" if item["kind"] == "core" else f"{KIND_LABELS[item['kind']]} {item['name']}"
        print(f"{title}: {item['description']}{origin}")
        section = SECTIONS.get(item["kind"])
        section = f"{section}.{item['name']}" if item["kind"] in TABLE_EACH_KINDS else section
        where = f" (config section [{section}], or --set {section}.KEY=VALUE)" if section else " (--set KEY=VALUE)"
        print(f"options{where}:")
        if not item["options"]:
            print("  (none)")
        for row in item["options"]:
            default = "required" if row["required"] else f"default {json.dumps(row['default'])}"
            limits = f", {', '.join(row['constraints'])}" if row["constraints"] else ""
            print(f"  {row['key']}: {row['type']} ({default}{limits})")
            if row["description"]:
                print(f"      {row['description']}")
        if item.get("recommended"):
            print("recommended: " + ", ".join(f"{k} {v}" for k, v in item["recommended"].items() if v is not None))
        for label, presets in (
            ("presets", item.get("presets")),
            ("experiment presets", item.get("experiment_presets")),
        ):
            if presets:
                print(f"{label}: " + "; ".join(f"{preset} {json.dumps(values)}" for preset, values in presets.items()))
        print()


def _body(argv: Sequence[str] | None) -> int:
    parser = ArgumentParser(
        prog=PROG,
        description=f"List the components REML's installed plugins provide. Plugins named in ${DISABLE_ENV_VAR} "
        "(comma-separated plugin or distribution names, as shown in brackets) are not loaded.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON: {kind: [{name, plugin, description}]}")
    parser.add_argument(
        "--show",
        metavar="NAME",
        help="print the options of the component(s) called NAME (types, defaults, "
        "limits, descriptions) and their presets; 'core' shows the experiment's own env/train/eval options",
    )
    args = parser.parse_args(argv)

    if args.show is not None:
        shown = show(discover_plugins(), args.show)
        if args.json:
            print(json.dumps(shown, indent=2, default=str))
        else:
            _print_shown(shown)
        return 0
    data = listing(discover_plugins())
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for kind in KINDS:
        print(f"{KIND_LABELS[kind]}s ({kind}):")
        if not data[kind]:
            print("  (none)")
        width = max((len(item["name"]) for item in data[kind]), default=0)
        for item in data[kind]:
            print(
                f"  {item['name']:<{width}}  {item['description']}  [plugin {item['entry_point']} from "
                f"{item['plugin']}]"
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
