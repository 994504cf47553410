"""Model families: one module per family (core/models/<name>.py), each registering itself with
`@register_family("<name>")` from core.models.base, so `family: <name>` works in configs without a
central list to edit. Importing this package imports no family and no torch: `get_family(name)`
imports the one module it names (core/models/registry.py)."""

from core.models.registry import FAMILIES, all_families, get_family

__all__ = ["FAMILIES", "all_families", "get_family"]
