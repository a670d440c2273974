"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class PosectlError(Exception):
    """A problem with the user's input, data or cluster; its message is shown as is."""


class ConfigError(PosectlError):
    """An unknown, mistyped or invalid configuration value."""


class DataError(PosectlError):
    """A malformed, missing or inconsistent dataset or input file."""


class ResourceError(PosectlError):
    """The cluster cannot provide what was asked for."""
