"""The one exception type the command line turns into a one-line message."""


class Image2VecError(ValueError):
    """Bad input or state that a user can fix: the message names the problem and the fix."""
