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


def first_line(exc: BaseException, limit: int = 300, *, typed: bool = True) -> str:
    """`Type: the first line of the message` (`typed=False`: the line alone), shortened to `limit` characters: how
    a failure is recorded in a table or a lineage entry.

    Example:
        >>> first_line(ValueError("bad value\\nmore detail"))
        'ValueError: bad value'
    """
    lines = str(exc).strip().splitlines()
    s = (f"{type(exc).__name__}: " if typed else "") + (lines[0] if lines else "")
    s = s.strip()
    return s if len(s) <= limit else s[:limit - 3] + "..."
