"""Errors a user can cause. The CLI prints ``str(error)`` as one line and exits non-zero."""


class UserError(Exception):
    """A problem with the user's input, files or environment (never a bug in rosetta-rnn)."""

    exit_code = 2


class DataError(UserError):
    """The corpus could not be found, read, downloaded or verified."""


class CheckpointError(UserError):
    """A checkpoint is missing, damaged, of another format or does not fit the request."""


class ConversionError(UserError):
    """A conversion that has no exact answer, or a file that is not the layer it claims."""


class BackendUnavailable(UserError):
    """A backend's framework is not installed, or the asked-for device is not there."""


class ReplicaLost(BackendUnavailable):
    """A data-parallel run lost one of its replicas (a worker process died, a collective or a
    device failed): the run stops, and the command says what it kept."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name where it has none: what a
    one-line report of an error a framework raised (often pages long) keeps."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
