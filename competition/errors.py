"""The project's own error: a user-facing, one-sentence message."""


class CompetitionError(Exception):
    """Bad input or an impossible request; the CLI prints the message and exits non-zero."""
