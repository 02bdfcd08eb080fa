"""The one exception type for mistakes a user can fix, and the entry-point wrapper that prints it as one line."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UnclipError(ValueError):
    """Bad input, missing files or a layout that is not what it should be. The message names the fix."""


def run_entry_point(body: Callable[[], int], interrupted: str = "interrupted") -> int:
    """``body()``'s exit code; an ``UnclipError`` is printed as ``error: ...`` (exit 2, no traceback) and
    Ctrl-C as ``error: {interrupted}`` (exit 130)."""
    try:
        return body()
    except UnclipError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: {interrupted}", file=sys.stderr)
        return 130
