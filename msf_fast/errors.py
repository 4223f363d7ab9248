"""The one exception the commands report as a single line (exit code 2): a mistake in what the user asked for.

Anything else (a torch or CUDA RuntimeError, a bug) keeps its traceback.
"""


class UserError(Exception):
    """A value, path or file the user gave cannot be used; the message names it and says why."""
