"""The exceptions paintsweep raises for problems a user must fix, each message saying what is wrong,
where, and what to do. This module imports nothing, so any module can raise them without importing
the module that defines the rules (config.py, space.py and the model families all raise ConfigError)."""


class ConfigError(ValueError):
    """A problem with a configuration file or override, phrased for the user."""


class ClusterError(ConfigError):
    """The cluster or the storage cannot be used as asked; the message says why and what to do."""


class ConfirmError(ConfigError):
    """The experiment cannot be confirmed as asked; the message says why and what to do."""


class DataError(RuntimeError):
    """A data problem, phrased for the user: what is wrong, where, and how to fix it."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which, why, and what to do."""
