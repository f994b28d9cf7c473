"""Errors caused by what the user gave us (paths, files, settings), not by a bug.

The CLI prints these as one clear message and exits with status 2 instead of a traceback.
"""


class UserInputError(ValueError):
    """Something the user supplied is wrong; the message says what and what to do."""


class DataSourceError(UserInputError):
    """The data folder is missing, incomplete or holds files that are not usable images."""


class CheckpointError(UserInputError):
    """A checkpoint path is missing, not a checkpoint, or from another model."""


class ConfigError(UserInputError):
    """A setting is out of its valid range (a learning rate of zero, a dropout of 1, ...)."""
