"""Finding, verifying and caching data files: paths under the data root, checksums, clear errors.

Nothing here downloads. A missing file is a ``FlowbenchError`` naming the exact path expected and
how to get it (each loader module's own text); a checksum or shape mismatch names the file and what
was expected. Prepared arrays are cached next to the data (``<dir>/.flowbench-cache``), keyed by a
checksum of the source files, or in the user cache folder when the data folder is read-only. No
torch import here.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.data.base import Status
from bench.errors import FlowbenchError

__all__ = ["CACHE_FOLDER", "cache_folders", "cached_arrays", "check_md5", "corrupt", "file_digest", "find",
           "missing", "no_root", "no_root_status", "npy_shape", "PICKLE_ROOTS", "source_key", "unpickle_data",
           "unpickle_dataframe", "user_cache_dir"]

CACHE_FOLDER = ".flowbench-cache"


def no_root(dataset: str, expected: str, how: str) -> FlowbenchError:
    """The error for a real dataset asked for without any data root."""
    return FlowbenchError(f'dataset "{dataset}" needs its data files but no data root is set: expected '
                          f"DATA_ROOT/{expected}; pass --data-root DIR (or set FLOWBENCH_DATA, or the suite's "
                          f"data_root); to get the files: {how}")


def no_root_status(dataset: str, expected: str, how: str) -> Status:
    """``data verify``'s verdict for a real dataset when no data root is set (``no_root`` is the error)."""
    return Status(dataset, "missing", f"DATA_ROOT/{expected}", "no data root (--data-root or $FLOWBENCH_DATA)", how)


def npy_shape(path: Path) -> tuple[int, ...]:
    """The shape in a ``.npy`` file's header (no data is read); ValueError or OSError when unreadable."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(f)
    return tuple(shape)


def find(root: Path, candidates: Sequence[str]) -> Path | None:
    """The first of ``candidates`` (paths relative to ``root``) that exists, else None."""
    for rel in candidates:
        path = root / rel
        if path.exists():
            return path
    return None


def missing(dataset: str, path: Path, how: str, others: Iterable[Path] = ()) -> FlowbenchError:
    """The error for a missing file: the exact path expected (and any alternatives) and how to get it."""
    alt = [str(p) for p in others if p != path]
    also = f" (also looked for {', '.join(alt)})" if alt else ""
    return FlowbenchError(f'dataset "{dataset}": missing {path}{also}; to get it: {how}')


def corrupt(path: Path, expected: str, found: str) -> FlowbenchError:
    """The error for a file that is there but wrong."""
    return FlowbenchError(f"{path}: expected {expected}, found {found}; the file is corrupt or not the "
                          "published one: replace it with a fresh copy")


def file_digest(path: Path, algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (constant memory)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_md5(path: Path, expected: str) -> None:
    """Raise a ``corrupt`` error when the file's MD5 is not ``expected``."""
    found = file_digest(path, "md5")
    if found != expected:
        raise corrupt(path, f"md5 {expected}", f"md5 {found}")


_digests: dict[tuple[str, int, int], str] = {}


def source_key(paths: Sequence[Path]) -> str:
    """A short SHA-256 over the source files' contents (memoised per file, size and mtime)."""
    h = hashlib.sha256()
    for path in paths:
        st = path.stat()
        memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if memo not in _digests:
            _digests[memo] = file_digest(path, "sha256")
        h.update(_digests[memo].encode())
    return h.hexdigest()[:16]


def user_cache_dir() -> Path:
    """$FLOWBENCH_CACHE, else $XDG_CACHE_HOME/flowbench, else ~/.cache/flowbench."""
    if os.environ.get("FLOWBENCH_CACHE"):
        return Path(os.environ["FLOWBENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flowbench"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        return True
    except OSError:
        return False


def cache_folders(data_dir: Path) -> list[Path]:
    """Where prepared arrays may live, in order of preference: next to the data, then the user cache."""
    return [data_dir / CACHE_FOLDER, user_cache_dir() / "prepared"]


def cached_arrays(data_dir: Path, key: str, names: Sequence[str],
                  build: Callable[[], dict[str, np.ndarray]], use_cache: bool = True) -> dict[str, np.ndarray]:
    """The arrays ``names`` prepared by ``build()``, read from the cache entry ``key`` when present.

    A new entry is written (atomically: a temporary folder renamed into place) next to the data,
    or in the user cache folder when the data folder is read-only; a failure to cache is not an error.
    """
    folders = cache_folders(data_dir)
    if use_cache:
        for folder in folders:
            entry = folder / key
            if all((entry / f"{n}.npy").exists() for n in names):
                try:
                    return {n: np.load(entry / f"{n}.npy") for n in names}
                except (OSError, ValueError):
                    pass  # a damaged entry is rebuilt below
    arrays = build()
    if use_cache:
        for folder in folders:
            if not _writable(folder):
                continue
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder))
            try:
                for n in names:
                    np.save(tmp / f"{n}.npy", arrays[n])
                shutil.rmtree(folder / key, ignore_errors=True)
                os.replace(tmp, folder / key)
                break
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                if (folder / key).is_dir():  # another process cached the same entry first
                    break
    return arrays


# -- pickles: data files that are pickles by their format are read by an allowlisting unpickler --
PICKLE_ROOTS = ("builtins", "__builtin__", "copyreg", "copy_reg", "_codecs", "numpy", "pandas", "pyarrow")


def _numpy_data(obj: Any) -> bool:
    """numpy's array, dtype and scalar types and the functions its pickles rebuild arrays with."""
    import codecs

    core = getattr(np, "_core", None) or np.core
    rebuild = {getattr(core.multiarray, "_reconstruct", None), getattr(core.multiarray, "scalar", None),
               getattr(core.numeric, "_frombuffer", None), codecs.encode}  # encode: bytes in protocol 2
    if obj in rebuild - {None}:
        return True
    return isinstance(obj, type) and (obj is np.ndarray or issubclass(obj, (np.dtype, np.generic)))


def _pandas_data(obj: Any) -> bool:
    """A DataFrame's pieces: pandas' frame, index, block, array and dtype classes and their rebuilders,
    numpy's arrays, pyarrow's array restore (string columns), and the builtins pickles rebuild them with."""
    import copyreg

    if obj in (object, slice, bytearray, complex, frozenset, set, copyreg._reconstructor):
        return True
    if _numpy_data(obj):
        return True
    module, name = getattr(obj, "__module__", "") or "", getattr(obj, "__name__", "")
    if module == "pyarrow.lib" and name in ("_restore_array", "py_buffer", "type_for_alias"):
        return True
    if module == "pandas.core.indexes.base" and name == "_new_Index" or \
            module == "pandas._libs.internals" and name == "_unpickle_block":
        return True
    return isinstance(obj, type) and module.startswith("pandas") and issubclass(obj, _pandas_data_types())


def _pandas_data_types() -> tuple[type, ...]:
    """pandas' data structures: frames, series, indexes, extension arrays and dtypes, blocks, managers."""
    import pandas as pd
    from pandas.api.extensions import ExtensionArray, ExtensionDtype
    from pandas.core.internals.blocks import Block
    from pandas.core.internals.managers import BaseBlockManager

    return (pd.DataFrame, pd.Series, pd.Index, ExtensionArray, ExtensionDtype, Block, BaseBlockManager,
            pd.Timestamp, pd.Timedelta)


def _allowlisting(base: type, allowed: Callable[[Any], bool]) -> type:
    """An Unpickler class (from ``base``) that resolves only globals ``allowed`` accepts: any other
    (os.system, eval, a class that opens files) stops the load before anything is called."""

    class Allowlisting(base):  # type: ignore[misc, valid-type]
        def find_class(self, module: str, name: str) -> Any:
            if module.split(".")[0] not in PICKLE_ROOTS:  # not even imported
                raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a data file never needs")
            obj = super().find_class(module, name)
            if not allowed(obj):
                raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a data file never needs")
            return obj

    return Allowlisting


def unpickle_data(raw: bytes, path: Path, expected: str, allowed: Callable[[Any], bool] = _numpy_data,
                  base: type = pickle.Unpickler, **options: Any) -> Any:
    """Unpickle a data file's bytes allowing only the globals ``allowed`` accepts (numpy arrays by
    default); anything else is a ``corrupt`` error naming the file, and nothing in it runs."""
    try:
        return _allowlisting(base, allowed)(io.BytesIO(raw), **options).load()
    except Exception as err:  # noqa: BLE001 - any failure means a bad file
        raise corrupt(path, expected, f"{type(err).__name__}: {err}") from None


def unpickle_dataframe(path: Path) -> Any:
    """A pickled pandas DataFrame (any pandas version's pickle, as ``pd.read_pickle`` reads them),
    allowing only pandas' and numpy's data classes."""
    from pandas.compat.pickle_compat import Unpickler

    try:
        raw = path.read_bytes()
    except OSError as err:
        raise corrupt(path, "a pickled pandas DataFrame", f"an unreadable file ({err.strerror})") from None
    return unpickle_data(raw, path, "a pickled pandas DataFrame", _pandas_data, Unpickler)

