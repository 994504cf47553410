"""Model families. Importing this package imports every module in it, so each family's
`@register_family` runs and `family: <name>` works in configs without a central list to edit."""

import importlib
import pkgutil

from core.models.base import FAMILIES, Family, get_family, register_family

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["FAMILIES", "Family", "get_family", "register_family"]
