"""Exception types raised by ichlib.

Every error about a user's file names the file and says what is wrong with it, so a
batch job can report the bad item and carry on with the good ones.
"""

from __future__ import annotations

from os import PathLike


class IchlibError(Exception):
    """Base class of every error that ichlib raises on purpose."""


class DataError(IchlibError):
    """A data file (scan, mask, label table) is missing, unreadable or inconsistent.

    Args:
        path: The file or folder at fault.
        problem: What is wrong, in a short sentence.
    """

    def __init__(self, path: str | PathLike | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class WriteError(DataError):
    """A file ichlib writes could not be written (full disk, no inodes, read-only, permission).

    Not a problem of the input data: a run stops on it rather than skipping a patient.
    """


class CheckpointError(DataError):
    """A checkpoint cannot be loaded safely or does not match this version of ichlib."""


class ConfigError(IchlibError):
    """A setting (window name, size, sequence length, ...) is invalid."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C; the message says what was saved and how to go on.

    A ``KeyboardInterrupt``, so Jupyter and ``except Exception`` treat it as an interrupt.
    """


class DataWarning(UserWarning):
    """Data that is accepted but suspicious (geometry that cannot be trusted, for example);
    the message names the file and says what was found."""


class LearningWarning(UserWarning):
    """A trained model that shows signs of having learned nothing: a validation AUC whose
    interval lies wholly below 0.5, or one class predicted for every scan."""
