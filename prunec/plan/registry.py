"""Plug-in registries: each target kind (and each strategy) owns its name and its options.

A registry finds its plug-ins by importing every subpackage of one package (`prunec.backends`
for target kinds) and every entry point of one group (`prunec.targets`, for plug-ins shipped by
other distributions); a plug-in exposes one object under a fixed attribute (`BACKEND`). Nothing
lists the names anywhere else: the front end validates a spec's kinds and options against what
the registry found, so adding a kind is one new package plus its tests.

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
    """

    def __init__(
        self, package: str, attribute: str, group: str, what: str, name_of: Callable[[T], str]
    ):
        self.package = package
        self.attribute = attribute
        self.group = group
        self.what = what
        self._name_of = name_of
        self._found: dict[str, T] | None = None

    def all(self) -> Mapping[str, T]:
        """Every plug-in by name, built-in ones first (sorted), then entry points."""
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
        for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda m: m.name):
            if info.ispkg:
                module = importlib.import_module(f"{self.package}.{info.name}")
                plugin = getattr(module, self.attribute, None)
                if plugin is not None:
                    found.setdefault(self._name_of(plugin), plugin)
        for point in entry_points(group=self.group):  # `name = "pkg.module:OBJECT"`
            plugin = point.load()
            found.setdefault(self._name_of(plugin), plugin)
        return found


def target_kinds() -> Registry[Any]:
    """The target-kind registry (`prunec.backends.*` packages exposing `BACKEND`)."""
    return _TARGETS


_TARGETS: Registry[Any] = Registry(
    "prunec.backends", "BACKEND", "prunec.targets", "target kind", lambda b: str(b.name)
)
