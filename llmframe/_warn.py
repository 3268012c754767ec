"""Warnings that point at the user's line, not at llmframe's or asyncio's frames."""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["warn_user"]

# llmframe itself, and the standard library with site-packages (asyncio, pandas, polars).
_SKIP = tuple(
    os.path.dirname(os.path.abspath(f)) + os.sep for f in (__file__, warnings.__file__)
)


def _outside(filename: str) -> bool:
    path = os.path.abspath(filename)
    return not path.startswith(_SKIP) and "nest_asyncio" not in path


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn with the stack level of the first frame outside llmframe, the standard
    library and nest-asyncio: the user's ``apply`` line, wherever the run's event
    loop is. Without such a frame (a worker thread), the warning names this call."""
    frame = sys._getframe(1)
    level = 2
    while frame is not None and not _outside(frame.f_code.co_filename):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)
