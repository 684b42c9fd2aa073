"""The allow-list: exact (module, name) pairs a model may name, and nothing else.

A module prefix is never trusted (allowed packages hold dangerous helpers too);
a dotted name or a dunder name is never allowed, whatever the list says,
because the unpickler resolves dotted names attribute by attribute (protocol
4+) and dunders reach interpreter internals. Users extend the list in the
manifest, one exact pair with a reason each; the report shows those entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from integrity.safety.allowlist_data import ALLOWED_GLOBALS, DANGEROUS_GLOBALS, DANGEROUS_MODULES


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    code: str = ""
    description: str = ""
    extended_reason: str | None = None  # set when a user's entry allowed it


def is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _names_dunder(module: str, name: str) -> bool:
    return is_dunder(name) or any(is_dunder(part) for part in module.split("."))


def _dangerous_module(module: str) -> str | None:
    """What the module (or its top-level package) is known to do, if it is known-dangerous."""
    for candidate in (module, module.split(".")[0]):
        if candidate in DANGEROUS_MODULES:
            return DANGEROUS_MODULES[candidate]
    return None


def describe(module: str, name: str) -> str:
    """What a global would do, in plain words, for a finding."""
    known = DANGEROUS_GLOBALS.get((module, name))
    if known:
        return known
    in_module = _dangerous_module(module)
    if in_module:
        return f"{in_module}; not on the allow-list"
    return "not on the allow-list: loading would import it and may call it with any arguments"


def refusal_to_extend(module: str, name: str) -> str | None:
    """Why a manifest may not allow (module, name), or None. Known-dangerous
    callables and modules are never allowed, whatever reason is given."""
    if "." in name or _names_dunder(module, name):
        return "is a dotted or dunder name; never allowed"
    if (module, name) in DANGEROUS_GLOBALS:
        return f"is never allowed: {DANGEROUS_GLOBALS[(module, name)]}"
    in_module = _dangerous_module(module)
    if in_module:
        return f"is in a module that is never allowed ({in_module})"
    return None


class AllowList:
    def __init__(self, extra: Mapping[tuple[str, str], str] | None = None) -> None:
        """`extra`: the manifest's own entries, (module, name) to the reason given."""
        self._extra = dict(extra or {})

    def verdict(self, module: str, name: str) -> Verdict:
        qualified = f"{module}.{name}"
        if "." in name:
            return Verdict(
                False,
                "dotted-name",
                f"dotted name {name!r}: the unpickler would walk attributes from "
                f"{module!r} to reach any object; never allowed",
            )
        if _names_dunder(module, name):
            return Verdict(
                False,
                "dunder-name",
                f"{qualified} reaches interpreter internals; never allowed",
            )
        if (module, name) in ALLOWED_GLOBALS:
            return Verdict(True)
        if (module, name) in self._extra:
            return Verdict(True, extended_reason=self._extra[(module, name)])
        return Verdict(False, "disallowed-global", describe(module, name))
