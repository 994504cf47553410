"""The registry of model families: `family: <name>` in a config -> its Family class.

A built-in family named X lives in core/models/X.py, which registers it with
`@register_family("X")` (core/models/base.py). Looking a name up imports that one module: validating
a config imports the family it names (and what that module imports, torch among it), never the
others. A family defined elsewhere (a plugin, a test's toy) is a module that registers it the same
way, named in $PAINTSWEEP_FAMILIES (module names, comma-separated, importable: on PYTHONPATH):
a lookup that misses imports them. Every process that looks families up reads the variable: tune.py,
export.py, and Ray's workers, which inherit the driver's environment on a local Ray (on a cluster,
set it, and the module's path, on every node).

This module imports no torch and no family, so core.config can consult it at import time."""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # the class lives with its torch-using mechanics; this module only stores and finds them
    from core.models.base import Family

PACKAGE = "core.models"
PLUGINS_VARIABLE = "PAINTSWEEP_FAMILIES"   # modules outside core/models/ that register families
FAMILIES: dict[str, type[Family]] = {}   # name -> class, filled by @register_family as modules are imported


def get_family(name: str) -> type[Family]:
    """The Family class registered as `name`; if it is not registered yet, this imports
    core/models/<name>.py, or failing that the $PAINTSWEEP_FAMILIES modules."""
    if name not in FAMILIES and name in _module_names():
        importlib.import_module(f"{PACKAGE}.{name}")
    if name not in FAMILIES:
        _import_plugins()
    if name not in FAMILIES:
        raise KeyError(f"Unknown model family {name!r}. Available: {', '.join(sorted(all_families()))}")
    return FAMILIES[name]


def all_families() -> dict[str, type[Family]]:
    """Every family: the built-in ones (importing each module of core/models/) and any registered
    from elsewhere. For listings and tests; a config needs only `get_family`."""
    for module in _module_names():
        importlib.import_module(f"{PACKAGE}.{module}")
    _import_plugins()
    return dict(sorted(FAMILIES.items()))


def _import_plugins() -> None:
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_VARIABLE, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            # A KeyError, as for an unknown name: the config loader reports it as one of its errors.
            raise KeyError(f"{PLUGINS_VARIABLE} names the module {module!r}, which does not import ({e}); "
                           f"put its folder on PYTHONPATH or fix the name") from None


def _module_names() -> list[str]:
    """The modules of core/models/, found without importing them (helpers such as blocks included:
    importing one registers nothing)."""
    return [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])]
