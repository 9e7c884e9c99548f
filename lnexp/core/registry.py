"""One registry type for every vocabulary a plugin may extend: layouts and norms, probes, init recipes,
data sources (lnexp.core) and suites (lnexp.experiments.reproduce)."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    """Name -> declaration, in registration order. Once lnexp's own are in, `seal()` protects them: a
    plugin may add names, and replace its own (a plugin file loaded again, or from another path),
    but never a built-in's, which would silently change what existing runs mean."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.built_in: frozenset[str] = frozenset()

    def add(self, name: str, item: T) -> T:
        if name in self.built_in:
            raise ValueError(f"{self.kind} {name!r} is built in; give yours another name")
        self[name] = item
        return item

    def seal(self) -> None:
        self.built_in = frozenset(self)
