"""User-facing errors.

A `CondenseError` is raised for anything the user can fix (bad input, a missing artifact, an unknown name).
Its message names the fix; the CLI prints it on one line and exits non-zero without a traceback.
"""


class CondenseError(Exception):
    """An error caused by input the user can change; the message says what to change."""


class ConfigError(CondenseError, ValueError):
    """A configuration value is invalid."""


class ArtifactError(CondenseError):
    """A saved artifact is missing, corrupt or does not fit the model it is loaded into."""
