"""The exception family. Every failure lacal reports is a `LacalError` subclass with an `exit_code` for the CLI, and
its message names the parameter (`tau_range`); the CLI shows the flag (`--tau-range`) instead."""

from .exceptions import (EXIT_CODES, CheckpointError, InputDataError, InputFileError, LacalError, MismatchError,
                         MissingDependencyError, OptionError, OutputError, PriorsError, STDOUT_CLOSED,
                         VerificationError)
from .display import shown, shown_line

__all__ = ["EXIT_CODES", "CheckpointError", "InputDataError", "InputFileError", "LacalError", "MismatchError",
           "MissingDependencyError", "OptionError", "OutputError", "PriorsError", "STDOUT_CLOSED", "VerificationError",
           "shown", "shown_line"]
