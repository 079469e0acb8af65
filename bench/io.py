"""Files written whole or not at all, and weights read without running code: ``atomic_write_bytes``
(a temporary name in the same folder, fsync, rename; the user's umask decides the mode),
``atomic_write_json``, ``atomic_torch_save``, and ``load_tensors`` (``torch.load(weights_only=True)``,
one-line ``UnreadableFile`` for anything else).

It sits at the bottom of bench/ (only the standard library; torch imported inside the functions that
need it), so the run record (``bench.store``), the trackers and the model rebuilt from a record
(``bench.models``) all write and read through it without importing one another.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["atomic_torch_save", "atomic_write_bytes", "atomic_write_json", "current_umask", "load_tensors",
           "UnreadableFile"]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask now, read without widening it (Linux: /proc/self/status; elsewhere a brief
    swap to 0o077 and back, under a lock)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask



def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync (unless told not to),
    rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # as open() would create it: the user's umask decides
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno is not None and not err.filename:
            raise type(err)(err.errno, err.strerror, str(path)) from None  # name the file (a full disk: EFBIG, ENOSPC)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=str, allow_nan=True) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class UnreadableFile(ValueError):
    """A weights or checkpoint file that cannot be loaded safely; the message is one line."""


def load_tensors(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers only, so a
    file that would run code when unpickled (a planted pickle) is refused, never executed.
    Raises FileNotFoundError when absent, ``UnreadableFile`` (one line) for anything else."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the file holds, the caller gets one line
        text = str(err)
        if "WeightsUnpickler error:" in text:
            detail = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
            reason = f"not a plain weights file ({detail}); refused unread, as unpickling it could run code"
        else:
            first = next((line.strip() for line in text.splitlines() if line.strip()), "")
            reason = f"{type(err).__name__}: {first}"
        raise UnreadableFile(reason[:300]) from None
