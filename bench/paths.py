"""Paths stay where they are put: what a command writes under a root (records under --results,
reports under --out, pinned files under --pinned) is named from a suite, and must lie under it."""

from __future__ import annotations

import os
from pathlib import Path

from bench.errors import FlowbenchError

__all__ = ["inside"]


def inside(root: str | os.PathLike, *parts: str) -> Path:
    """``root/parts...``, refused with a FlowbenchError when it does not lie strictly under ``root``
    (a ".." or an absolute part). The check is on the normalised path, not through symbolic links:
    a results folder linked to scratch space on purpose stays allowed."""
    child = Path(root, *parts)
    base, full = os.path.abspath(root), os.path.abspath(child)
    if full == base or os.path.commonpath([base, full]) != base:
        raise FlowbenchError(f"{child}: would be written outside {root} (resolves to {full}); "
                             "suite names are identifiers: letters, digits, '-', '_' and '.'")
    return child
