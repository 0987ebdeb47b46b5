"""``reml-plugins``: every registered component, grouped by kind, with the plugin that provides it."""

from __future__ import annotations

import json
from collections.abc import Sequence

from typing import TYPE_CHECKING

from reml_core.cli.common import ArgumentParser, discover_plugins, run_main

if TYPE_CHECKING:
    from reml_core.registry import PluginRegistry

PROG = "reml-plugins"
DISABLE_ENV_VAR = "REML_DISABLE_PLUGINS"  # the registry's; repeated here to keep start-up light


def listing(registry: PluginRegistry) -> dict[str, list[dict[str, str]]]:
    """``{kind: [{name, plugin, entry_point, description}, ...]}`` with all six kinds present.

    ``plugin`` is the distribution that installed the component, ``entry_point`` the plugin's
    name in the ``reml.plugins`` group; ``REML_DISABLE_PLUGINS`` takes either.
    """
    from reml_core.specs import KINDS

    return {
        kind: [
            {"name": entry.name, "plugin": entry.distribution, "entry_point": entry.plugin, "description": entry.spec.description}
            for entry in registry.components(kind)
        ]
        for kind in KINDS
    }


def _body(argv: Sequence[str] | None) -> int:
    parser = ArgumentParser(
        prog=PROG,
        description=f"List the components REML's installed plugins provide. Plugins named in ${DISABLE_ENV_VAR} "
        "(comma-separated plugin or distribution names, as shown in brackets) are not loaded.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON: {kind: [{name, plugin, description}]}")
    args = parser.parse_args(argv)
    from reml_core.specs import KIND_LABELS, KINDS

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
            print(f"  {item['name']:<{width}}  {item['description']}  [plugin {item['entry_point']} from {item['plugin']}]")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
