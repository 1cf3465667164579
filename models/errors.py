"""Errors an entry point reports in one line instead of a traceback.

Raise :class:`UserError` where the user's input is at fault (an option, a path, the data, a
checkpoint, the disk it writes to); the entry points print ``<script>: error: <message>``
and exit with its ``exit_code``. Every other exception is a bug and keeps its traceback.
Both are ``ValueError`` subclasses (``MissingInput`` a ``FileNotFoundError`` too), so code
that catches those types keeps working.
"""


class ReportedError(Exception):
    """The run cannot go on, and the message says why and what to do: printed as one line."""

    exit_code = 1


class UserError(ReportedError, ValueError):
    """The user's input is at fault. Exit code 2, as argparse's usage errors."""

    exit_code = 2


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the input names, or one it needs (say, pretrained weights), is absent."""
