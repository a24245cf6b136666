"""The one exception family lacal raises for bad input, with the CLI exit code of each kind.

click already uses exit code 1 (an error) and 2 (a usage error), so lacal's own failures start at 3.
"""

from __future__ import annotations

import os


STDOUT_CLOSED = 141
"""The exit code when the reader of standard output closed it early: 128 + SIGPIPE, as a shell reports a tool that
SIGPIPE stopped. A standard output that cannot be written otherwise (a full disk) is an output error, code 8."""


class LacalError(Exception):
    """A problem with the user's input or options, reported as one line with a documented exit code. Raise one of
    the subclasses below; each has its own code. A library error names the parameter (`source="tau_range"`, and
    `` `tau_range` `` in the text); the CLI shows the flag (`--tau-range`) instead."""

    exit_code = 1

    def __init__(self, problem: str, source: str | os.PathLike | None = None):
        self.problem = problem
        self.source = None if source is None else str(source)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return self.problem if self.source is None else f"{self.source}: {self.problem}"


class InputFileError(LacalError):
    """A file is missing, unreadable, or in a format lacal does not read."""

    exit_code = 3


class InputDataError(LacalError):
    """A file was read but its content is unusable: shape, dtype, NaN/Inf, sample counts, labels, class names."""

    exit_code = 4


class PriorsError(LacalError):
    """Class counts or priors are unusable: a class with no training samples, values that are neither counts nor
    probabilities."""

    exit_code = 5


class OptionError(LacalError):
    """An option value lacal checks itself: an empty or reversed tau range, a device that is not there."""

    exit_code = 6


class MismatchError(LacalError):
    """Two inputs disagree: a calibration made for another number of classes than the logits have, features of
    another width than the head takes."""

    exit_code = 7


class OutputError(LacalError):
    """An output was refused: it exists and --force was not given, it would overwrite an input, it is a device, FIFO
    or socket (even with --force), or it cannot be written (standard output included)."""

    exit_code = 8


class CheckpointError(LacalError):
    """A checkpoint cannot be patched as asked: no classifier head, several candidates, a head without a bias (or one
    transformers would drop), a known architecture that transforms the head's output further, or a lacal patch
    already in it."""

    exit_code = 9


class VerificationError(LacalError):
    """The patched head did not reproduce the adjusted logits within tolerance (--verify-features)."""

    exit_code = 10


class MissingDependencyError(LacalError):
    """An optional package that this input needs is not installed (onnx and onnxruntime, for ONNX models)."""

    exit_code = 11


EXIT_CODES = {
    0: "success",
    1: "unexpected internal error (please report it with the traceback)",
    2: "usage error from click: unknown option, missing argument, value of the wrong type",
    InputFileError.exit_code: "input file missing, unreadable, or in a format lacal does not read",
    InputDataError.exit_code: "input data unusable: shape, dtype, NaN/Inf, sample counts, labels, class names",
    PriorsError.exit_code: "priors unusable: a class with no training samples, values neither counts nor probabilities",
    OptionError.exit_code: "option value refused: empty or reversed tau range, missing device, conflicting options",
    MismatchError.exit_code: "inputs disagree: a calibration or class list for another number of classes, features "
                             "of another width than the head takes",
    OutputError.exit_code: "output refused: it exists (no --force), it is an input, it is a device, FIFO or socket, "
                           "or it (or standard output) cannot be written",
    CheckpointError.exit_code: "checkpoint refused: no classifier head, an ambiguous head, no bias, a nonlinearity "
                               "after the head, already patched",
    VerificationError.exit_code: "verification failed: the patched head does not give the adjusted logits",
    MissingDependencyError.exit_code: "an optional package is missing: onnx and onnxruntime for ONNX models (the onnx extra)",
    STDOUT_CLOSED: "standard output was closed by its reader (`| head`): nothing more is printed, as for other Unix "
                   "tools stopped by SIGPIPE",
}
