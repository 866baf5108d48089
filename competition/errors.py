"""The project's own error: a user-facing, one-sentence message."""


class CompetitionError(Exception):
    """Bad input or an impossible request; the CLI prints the message and exits non-zero."""


class TrainingInterrupted(CompetitionError):
    """Training stopped by SIGINT, SIGTERM or SIGHUP after its last finished epoch was saved."""

    exit_code = 130


class TrainingFailed(CompetitionError):
    """A rank of a multi-process run failed or died; finished epochs are saved."""

    exit_code = 1
