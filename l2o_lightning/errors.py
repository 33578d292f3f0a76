"""Errors the CLI turns into one clean paragraph instead of a traceback."""


class ConfigError(ValueError):
    """A setting is invalid; the message names the setting and what is allowed."""


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or update; the message names the step and optimizer."""
