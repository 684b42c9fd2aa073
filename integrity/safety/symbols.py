"""The values the symbolic pickle machine works with: symbols, never real objects.

A global is a name (never imported), a call is the name and its arguments
(never made), containers hold symbols. The machine (`pickle_vm`), joblib's
array data (`arrays`) and the state validators (`states`) share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Global:
    module: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass
class Obj:
    """The result of calling an allowed global (REDUCE, NEWOBJ, INST, OBJ)."""

    callable: Global
    args: tuple[Any, ...]
    state: Any = None


@dataclass
class Opaque:
    """A value the scanner does not keep (large bytes, an array read from raw data)."""

    kind: str
    size: int = 0


@dataclass
class SList:
    items: list[Any] = field(default_factory=list)


@dataclass
class SDict:
    items: dict[Any, Any] = field(default_factory=dict)
    # Keys that are not hashable symbols are kept here.
    other: list[tuple[Any, Any]] = field(default_factory=list)

    def get(self, key: str) -> Any:
        return self.items.get(key)


@dataclass
class SSet:
    items: list[Any] = field(default_factory=list)
