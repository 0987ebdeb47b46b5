"""Plugin discovery and the component registry.

Plugins are found through the entry-point group ``reml.plugins`` (the built-in ones too).
Each plugin's hooks are called one plugin at a time, so a plugin that fails to import, raises in
a hook or returns malformed records is reported by name (a :class:`PluginWarning`) and skipped,
while the others keep working. Two plugins claiming the same (kind, name) is an error naming both.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pluggy

from reml_core import hookspecs
from reml_core.errors import PluginConflictError, UnknownComponentError, describe_error
from reml_core.specs import KIND_LABELS, SPEC_TYPES, ComponentSpec

DISABLE_ENV_VAR = "REML_DISABLE_PLUGINS"


class PluginWarning(UserWarning):
    """A plugin could not be used; the message names it and says why."""


@dataclass(frozen=True)
class RegisteredComponent:
    """A component record together with the plugin and distribution that provided it."""

    spec: ComponentSpec
    plugin: str
    distribution: str

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def name(self) -> str:
        return self.spec.name


def disabled_plugins(environ: dict[str, str] | None = None) -> frozenset[str]:
    """Names listed in ``REML_DISABLE_PLUGINS`` (comma-separated): plugin (entry-point) names, or
    distribution names, which disable every plugin that distribution installs."""
    value = (environ if environ is not None else os.environ).get(DISABLE_ENV_VAR, "")
    return frozenset(part.strip() for part in value.split(",") if part.strip())


class PluginRegistry:
    """Indexes every component by (kind, name) and remembers which plugin provided it."""

    def __init__(self, *, disabled: Iterable[str] = ()) -> None:
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.plugin_manager.add_hookspecs(hookspecs)
        self.disabled = frozenset(disabled)
        self._components: dict[tuple[str, str], RegisteredComponent] = {}
        self._distributions: dict[str, str] = {}

    # -- discovery ---------------------------------------------------------------------------

    @classmethod
    def discover(cls, *, disabled: Iterable[str] | None = None) -> PluginRegistry:
        """A registry holding every plugin installed in the entry-point group ``reml.plugins``."""
        registry = cls(disabled=disabled_plugins() if disabled is None else disabled)
        registry.load_entry_points()
        return registry

    def load_entry_points(self, group: str = hookspecs.ENTRY_POINT_GROUP) -> None:
        entry_points = sorted(importlib.metadata.entry_points(group=group), key=lambda ep: ep.name)
        known = {ep.name for ep in entry_points} | {ep.dist.name for ep in entry_points if ep.dist is not None}
        for name in sorted(self.disabled - known):
            _warn(
                f"{DISABLE_ENV_VAR} names {name!r}, which is no installed plugin or distribution "
                f"(installed plugins: {', '.join(sorted(ep.name for ep in entry_points)) or 'none'})"
            )
        for entry_point in entry_points:
            distribution = entry_point.dist.name if entry_point.dist is not None else "unknown"
            if entry_point.name in self.disabled or distribution in self.disabled:
                continue
            try:
                plugin = entry_point.load()
            except Exception as error:  # a broken third-party plugin must not take REML down
                _warn(
                    f"plugin {entry_point.name!r} ({distribution}) failed to import and is skipped: {_describe(error)}"
                )
                continue
            self.register(plugin, name=entry_point.name, distribution=distribution)

    def register(self, plugin: Any, *, name: str, distribution: str = "unknown") -> bool:
        """Register one plugin object or module and index its components. False if it was skipped."""
        if name in self.disabled:
            return False
        if self.plugin_manager.has_plugin(name):
            raise PluginConflictError(
                f"two plugins are named {name!r}: {self._distributions[name]!r} and {distribution!r}"
            )
        try:
            self.plugin_manager.register(plugin, name=name)
        except Exception as error:  # pluggy rejects hookimpls whose signature does not match the spec
            _warn(f"plugin {name!r} ({distribution}) could not be registered and is skipped: {_describe(error)}")
            return False
        try:
            self.plugin_manager.check_pending()
        except pluggy.PluginValidationError as error:
            self.plugin_manager.unregister(name=name)
            _warn(
                f"plugin {name!r} ({distribution}) has a hook REML does not define (misspelled?) and is skipped: "
                f"{error}"
            )
            return False
        self._distributions[name] = distribution
        self._collect(plugin, name, distribution)
        return True

    def unregister(self, name: str) -> None:
        """Remove a plugin and every component it provided."""
        self.plugin_manager.unregister(name=name)
        self._distributions.pop(name, None)
        self._components = {key: entry for key, entry in self._components.items() if entry.plugin != name}

    def _collect(self, plugin: Any, name: str, distribution: str) -> None:
        kinds_by_hook = {hook: kind for kind, hook in hookspecs.HOOKS_BY_KIND.items()}
        for caller in self.plugin_manager.get_hookcallers(plugin) or []:
            kind = kinds_by_hook[caller.name]
            for implementation in caller.get_hookimpls():
                if implementation.plugin_name != name:
                    continue
                try:
                    records = list(_records(implementation.function(), kind))
                except Exception as error:
                    _warn(
                        f"plugin {name!r} ({distribution}) failed in {caller.name}() and its {kind} components are "
                        f"skipped: {_describe(error)}"
                    )
                    continue
                for record in records:
                    self._add(record, name, distribution)

    def _add(self, record: ComponentSpec, plugin: str, distribution: str) -> None:
        key = (record.kind, record.name)
        if key in self._components:
            other = self._components[key]
            raise PluginConflictError(
                f"{KIND_LABELS[record.kind]} {record.name!r} is provided by two plugins: "
                f"{other.plugin!r} ({other.distribution}) and {plugin!r} ({distribution}); "
                f"uninstall one or set {DISABLE_ENV_VAR}={plugin}"
            )
        self._components[key] = RegisteredComponent(record, plugin, distribution)

    # -- lookup ------------------------------------------------------------------------------

    def get(self, kind: str, name: str) -> RegisteredComponent:
        """The component (kind, name), or an :class:`UnknownComponentError` listing what exists."""
        try:
            return self._components[(kind, name)]
        except KeyError:
            raise UnknownComponentError(KIND_LABELS[kind], name, self.names(kind)) from None

    def names(self, kind: str) -> list[str]:
        return sorted(name for (component_kind, name) in self._components if component_kind == kind)

    def components(self, kind: str | None = None) -> Iterator[RegisteredComponent]:
        for (component_kind, _), entry in sorted(self._components.items()):
            if kind is None or component_kind == kind:
                yield entry

    def plugins(self) -> dict[str, str]:
        """Registered plugin names and their distributions."""
        return dict(self._distributions)


def _records(result: Any, kind: str) -> Iterator[ComponentSpec]:
    expected = SPEC_TYPES[kind]
    if result is None or isinstance(result, (str, bytes)) or not isinstance(result, Iterable):
        raise TypeError(f"expected an iterable of {expected.__name__}, got {type(result).__name__}")
    for record in result:
        if not isinstance(record, expected):
            raise TypeError(f"expected {expected.__name__} records, got {type(record).__name__}")
        yield record


def _describe(error: BaseException) -> str:
    return describe_error(error)


def _warn(message: str) -> None:
    warnings.warn(message, PluginWarning, stacklevel=3)
