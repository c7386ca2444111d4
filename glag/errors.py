"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class GlagError(Exception):
    """An error caused by user input or on-disk state, reported without a traceback."""
