"""Error types that carry a message meant for the person who wrote the input."""


class MmflError(Exception):
    """Base class for errors mmfl reports to users without a deep traceback."""


class ConfigError(MmflError, ValueError):
    """A configuration value is invalid; the message names the field and the value."""


class ArtifactError(MmflError, ValueError):
    """An artifact is missing, malformed, or its key is not allowed."""


class DataError(MmflError, ValueError):
    """A dataset cannot be found or read."""
