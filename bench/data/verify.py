"""`flowbench data verify`: for every registered dataset, found / missing / corrupt, and where it looked.

Each dataset's registration says how: a loader module that reads files registers its own check
(``files=check``: existence, torchvision's MD5s, file headers, and how to get the files), and a
dataset made rather than read says so (``files=GENERATED`` or ``SKLEARN``). Checks are cheap and
torch-free; full preparation (and its shape checks) happens when a dataset is loaded.
"""

from __future__ import annotations

from pathlib import Path

from bench.data.base import Status

__all__ = ["Status", "verify_dataset", "verify_all"]


def verify_dataset(name: str, root: Path | None) -> Status:
    """The verdict for one registered dataset under ``root``, from its own registration."""
    from bench.data import REGISTRY

    return REGISTRY[name].verify(root)


def verify_all(root: Path | None) -> list[Status]:
    """Verdicts for every registered dataset, sorted by name."""
    from bench.data import REGISTRY

    return [verify_dataset(name, root) for name in sorted(REGISTRY)]
