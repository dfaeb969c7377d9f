"""The one exception type for a mistake on the command line (reported as one ``error:`` line, exit status 2)."""


class UsageError(Exception):
    """A mistake on the command line, reported as one line without a traceback."""
