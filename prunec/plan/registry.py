"""Plug-in registries: each target kind (and each strategy) owns its name and its options.

A registry finds its plug-ins by importing every subpackage of one package (`prunec.backends`
for target kinds), or by reading one module's declarations (`prunec.plan.strategies` for
strategies, whose implementations load lazily from `prunec.planning`), and every entry point of
one group (`prunec.targets`, `prunec.strategies`, for plug-ins shipped by other distributions);
a plug-in exposes one object under a fixed attribute (`BACKEND`, `STRATEGIES`). Nothing lists
the names anywhere else: the front end validates a spec's kinds, strategies and options against
what the registry found, so adding one is one new module plus its tests.

Plug-in packages must import light (no torch, transformers or onnx at import time): `prunec
check` walks them to validate specs and must start instantly.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Plug-ins found in `package`'s subpackages and in the `group` entry points.

    attribute: the module attribute holding the plug-in object (modules without it are not
        plug-ins). name_of: the plug-in's name. what: how users call one ("target kind").
    declared: True when `package` is one module whose `attribute` is a sequence of plug-ins
        (kept in its order), instead of a package whose subpackages each expose one.
    """

    def __init__(
        self,
        package: str,
        attribute: str,
        group: str,
        what: str,
        name_of: Callable[[T], str],
        *,
        declared: bool = False,
    ):
        self.package = package
        self.declared = declared
        self.attribute = attribute
        self.group = group
        self.what = what
        self._name_of = name_of
        self._found: dict[str, T] | None = None

    def all(self) -> Mapping[str, T]:
        """Every plug-in by name, built-in ones first (sorted, or in declared order), then
        entry points."""
        if self._found is None:
            self._found = self._discover()
        return self._found

    def get(self, name: str) -> T | None:
        return self.all().get(name)

    def names(self) -> tuple[str, ...]:
        return tuple(self.all())

    def __getitem__(self, name: str) -> T:
        found = self.get(name)
        if found is None:
            known = ", ".join(self.names())
            raise KeyError(f"unknown {self.what} `{name}` (known: {known})")
        return found

    def _discover(self) -> dict[str, T]:
        found: dict[str, T] = {}
        root = importlib.import_module(self.package)
        if self.declared:
            for plugin in getattr(root, self.attribute):
                found.setdefault(self._name_of(plugin), plugin)
        for info in sorted(pkgutil.iter_modules(getattr(root, "__path__", [])), key=_name):
            if info.ispkg:
                module = importlib.import_module(f"{self.package}.{info.name}")
                plugin = getattr(module, self.attribute, None)
                if plugin is not None:
                    found.setdefault(self._name_of(plugin), plugin)
        for point in entry_points(group=self.group):  # `name = "pkg.module:OBJECT"`
            plugin = point.load()
            found.setdefault(self._name_of(plugin), plugin)
        return found


def _name(info: pkgutil.ModuleInfo) -> str:
    return info.name


def target_kinds() -> Registry[Any]:
    """The target-kind registry (`prunec.backends.*` packages exposing `BACKEND`)."""
    return _TARGETS


_TARGETS: Registry[Any] = Registry(
    "prunec.backends", "BACKEND", "prunec.targets", "target kind", lambda b: str(b.name)
)


def strategies() -> Registry[Any]:
    """The strategy registry (`prunec.plan.strategies.STRATEGIES`, then `prunec.strategies`
    entry points): `StrategyInfo` declarations, in the order the docs list them."""
    return _STRATEGIES


_STRATEGIES: Registry[Any] = Registry(
    "prunec.plan.strategies",
    "STRATEGIES",
    "prunec.strategies",
    "strategy",
    lambda s: str(s.name),
    declared=True,
)
