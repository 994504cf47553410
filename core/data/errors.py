"""The one exception the data layer raises for problems the user must fix (its own module so that
every data module can raise it without importing the others)."""


class DataError(RuntimeError):
    """A data problem, phrased for the user: what is wrong, where, and how to fix it."""
