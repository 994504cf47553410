"""The registry of model families: `family: <name>` in a config -> its Family class.

A built-in family named X lives in core/models/X.py, which registers it with
`@register_family("X")` (core/models/base.py). Looking a name up imports that one module: validating
a config imports the family it names (and what that module imports, torch among it), never the
others. A family defined elsewhere (a plugin, a test) is registered by importing its module before
the lookup; Ray's workers then need that module importable too, as they need core/.

This module imports no torch and no family, so core.config can consult it at import time."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # the class lives with its torch-using mechanics; this module only stores and finds them
    from core.models.base import Family

PACKAGE = "core.models"
FAMILIES: dict[str, type[Family]] = {}   # name -> class, filled by @register_family as modules are imported


def get_family(name: str) -> type[Family]:
    """The Family class registered as `name`, importing core/models/<name>.py if it is not registered yet."""
    if name not in FAMILIES and name in _module_names():
        importlib.import_module(f"{PACKAGE}.{name}")
    if name not in FAMILIES:
        raise KeyError(f"Unknown model family {name!r}. Available: {', '.join(sorted(all_families()))}")
    return FAMILIES[name]


def all_families() -> dict[str, type[Family]]:
    """Every family: the built-in ones (importing each module of core/models/) and any registered
    from elsewhere. For listings and tests; a config needs only `get_family`."""
    for module in _module_names():
        importlib.import_module(f"{PACKAGE}.{module}")
    return dict(sorted(FAMILIES.items()))


def _module_names() -> list[str]:
    """The modules of core/models/, found without importing them (helpers such as blocks included:
    importing one registers nothing)."""
    return [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])]
