"""Errors a user can act on. Each message is one line naming the file, line or key and the fix.

The CLI prints ``str(err)`` alone (no traceback unless ``--debug``) and exits with code 2.
"""


class RaydistillError(ValueError):
    """Base class for input problems the user can fix."""


class ConfigError(RaydistillError):
    """A config key, value or file is wrong."""


class DataError(RaydistillError):
    """A data folder or file is missing or malformed."""


class ModelError(RaydistillError):
    """A teacher/student path or architecture cannot be used as asked."""


class TrainingError(RaydistillError):
    """Training cannot go on (for example a loss became NaN)."""
