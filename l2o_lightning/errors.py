"""Errors the CLI turns into one clean paragraph instead of a traceback."""


class ConfigError(ValueError):
    """A setting is invalid; the message names the setting and what is allowed."""
