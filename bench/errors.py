"""The one exception type a user sees as a message rather than a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["did_you_mean", "FlowbenchError"]


class FlowbenchError(Exception):
    """A problem the user can fix: the message names the file, field or run and what to do."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the closest choice, or a list of the choices when none is close."""
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f' (did you mean "{close[0]}"?)'
    return f" (choose from: {', '.join(choices)})" if choices else ""
