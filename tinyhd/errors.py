"""Errors that the command line reports as one clear line (see ``tinyhd.cli``)."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user — a file, a folder, an argument. The message names the culprit and the problem."""


class DataError(UserError):
    """A dataset file or folder that is missing, unreadable or inconsistent. The message names the path."""


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded into the requested architecture. The message names the file."""
