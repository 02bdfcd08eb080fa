"""The one exception type for mistakes a user can fix, and what every entry point (``unclip``, ``python -m
unclip.train``, the scripts) does with it: print it as one line; and their quiet logging."""

from __future__ import annotations

import logging
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


class _WarningLine(logging.Handler):
    """unclip's warnings as ``warning: ...`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"warning: {record.getMessage()}", file=sys.stderr)


def quiet_libraries() -> None:
    log = logging.getLogger("unclip")
    log.setLevel(logging.WARNING)
    if not any(isinstance(h, _WarningLine) for h in log.handlers):
        log.addHandler(_WarningLine())
    import diffusers
    import transformers

    for library in (diffusers, transformers):  # their "Loading weights" bars would bury ours
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
