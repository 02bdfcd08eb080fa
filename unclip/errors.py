"""The one exception type for mistakes a user can fix: the CLI prints it as one line and exits 2."""


class UnclipError(ValueError):
    """Bad input, missing files or a layout that is not what it should be. The message names the fix."""
