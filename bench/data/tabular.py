"""The five UCI sets as MAF (Papamakarios et al. 2017) prepared them: POWER, GAS, HEPMASS, MINIBOONE, BSDS300.

Each ``prepare_*`` function reads the files of MAF's archive and applies exactly the published
cleaning, noise, splits and normalisation (see docs/datasets.md), returning float32 arrays
``train``, ``val``, ``test``. ``load`` finds the files under the data root, checks their structure,
and caches the prepared arrays keyed by a checksum of the source files, so a second load only
reads three ``.npy`` files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bench.data.base import Status
from bench.data.files import (cached_arrays, corrupt, missing, no_root, no_root_status, npy_shape, source_key,
                              unpickle_dataframe)
from bench.data.registry import register_dataset

__all__ = ["MAF_HOW", "SETS", "PREPARE", "PREP_VERSION", "prepared", "source_paths", "verify", "load"]

log = logging.getLogger(__name__)

MAF_HOW = ("download data.tar.gz of MAF's data on Zenodo (Papamakarios et al. 2017, "
           "https://zenodo.org/record/1161203), unpack it and point --data-root (or $FLOWBENCH_DATA) "
           "at the unpacked `data` folder")

PREP_VERSION = 1  # bump when a preparation changes: old cache entries are then ignored

# name -> (files relative to the data root, dimension, published train/val/test sizes)
SETS: dict[str, tuple[tuple[str, ...], int, tuple[int, int, int]]] = {
    "power": (("power/data.npy",), 6, (1_659_917, 184_435, 204_928)),
    "gas": (("gas/ethylene_CO.pickle",), 8, (852_174, 94_685, 105_206)),
    "hepmass": (("hepmass/1000_train.csv", "hepmass/1000_test.csv"), 21, (315_123, 35_013, 174_987)),
    "miniboone": (("miniboone/data.npy",), 43, (29_556, 3_284, 3_648)),
    "bsds300": (("BSDS300/BSDS300.hdf5",), 63, (1_000_000, 50_000, 250_000)),
}

Arrays = dict[str, np.ndarray]


def split_last_tenths(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MAF's splits: test = the last int(0.1 N) rows, validation = the last 10% of the rest."""
    n_test = int(0.1 * data.shape[0])
    rest, test = data[:-n_test], data[-n_test:]
    n_val = int(0.1 * rest.shape[0])
    return rest[:-n_val], rest[-n_val:], test


def _normalise_by(train: np.ndarray, val: np.ndarray, test: np.ndarray, stats: np.ndarray, ddof: int) -> Arrays:
    mu, sd = stats.mean(axis=0), stats.std(axis=0, ddof=ddof)
    return {k: ((v - mu) / sd).astype(np.float32) for k, v in (("train", train), ("val", val), ("test", test))}


def _load_npy(path: Path, columns: int) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise corrupt(path, "a NumPy .npy array", f"an unreadable file ({err})") from None
    if data.ndim != 2 or data.shape[1] != columns or not np.issubdtype(data.dtype, np.floating):
        raise corrupt(path, f"a 2-D float array with {columns} columns", f"{data.dtype} array of shape {data.shape}")
    return data


def prepare_power(path: Path) -> Arrays:
    """POWER: shuffle with RandomState(42), delete columns 3 and 1, add MAF's uniform noise, 10% splits,
    normalise by train+validation mean and std (ddof 0)."""
    rng = np.random.RandomState(42)
    data = _load_npy(path, 8).astype(np.float64, copy=False)
    rng.shuffle(data)
    data = np.delete(data, [1, 3], axis=1)  # global reactive power, global intensity
    n = data.shape[0]
    voltage = 0.01 * rng.rand(n, 1)  # MAF draws the voltage noise first, then the gap noise
    gap = 0.001 * rng.rand(n, 1)
    sub_metering = rng.rand(n, 3)
    data += np.hstack((gap, voltage, sub_metering, np.zeros((n, 1))))  # the time column gets none
    del voltage, gap, sub_metering
    train, val, test = split_last_tenths(data)
    return _normalise_by(train, val, test, data[: train.shape[0] + val.shape[0]], ddof=0)


def _correlated_counts(frame) -> np.ndarray:
    return (frame.corr() > 0.98).to_numpy().sum(axis=1)


def prepare_gas(path: Path) -> Arrays:
    """GAS: drop Meth, Eth and Time; drop the first column of any pair correlated above 0.98 until none is
    left; standardise by the whole file's mean and std (pandas, ddof 1) before the 10% splits."""
    import pandas as pd

    frame = unpickle_dataframe(path)  # pandas' and numpy's data classes only: a planted pickle never runs
    if not isinstance(frame, pd.DataFrame):
        raise corrupt(path, "a pickled pandas DataFrame", type(frame).__name__)
    absent = [c for c in ("Meth", "Eth", "Time") if c not in frame.columns]
    if absent:
        raise corrupt(path, "a DataFrame with columns Meth, Eth and Time", f"no column {', '.join(absent)}")
    frame = frame.drop(columns=["Meth", "Eth", "Time"])
    counts = _correlated_counts(frame)
    while np.any(counts > 1):
        frame = frame.drop(columns=frame.columns[int(np.where(counts > 1)[0][0])])
        counts = _correlated_counts(frame)
    frame = (frame - frame.mean()) / frame.std()
    train, val, test = split_last_tenths(frame.to_numpy(dtype=np.float64))
    return {"train": train.astype(np.float32), "val": val.astype(np.float32), "test": test.astype(np.float32)}


def _read_hepmass_csv(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path, index_col=False)
    except Exception as err:  # noqa: BLE001
        raise corrupt(path, "HEPMASS's comma-separated file with a header line",
                      f"an unreadable file ({type(err).__name__}: {err})") from None


def prepare_hepmass(train_path: Path, test_path: Path) -> Arrays:
    """HEPMASS: signal rows (label 1) without the label; the test file's last column dropped (its header
    is offset); normalise both by the train file's mean and std (ddof 1); drop features whose smallest
    value occurs more than 5 times in train; validation = last 10% of train."""
    train_df, test_df = _read_hepmass_csv(train_path), _read_hepmass_csv(test_path)
    train_df = train_df[train_df[train_df.columns[0]] == 1].drop(columns=train_df.columns[0])
    test_df = test_df[test_df[test_df.columns[0]] == 1].drop(columns=test_df.columns[0])
    test_df = test_df.drop(columns=test_df.columns[-1])
    train = train_df.to_numpy(dtype=np.float64)
    test = test_df.to_numpy(dtype=np.float64)
    del train_df, test_df
    if train.shape[0] == 0 or test.shape[0] == 0:
        empty = train_path if train.shape[0] == 0 else test_path
        raise corrupt(empty, "rows with label 1 (signal) in the first column", "none")
    if test.shape[1] > train.shape[1]:
        raise corrupt(test_path, f"at most {train.shape[1] + 2} columns (label, features, the offset column)",
                      f"{test.shape[1] + 2}")
    mu, sd = train.mean(axis=0), train.std(axis=0, ddof=1)
    train = (train - mu) / sd
    test = (test - mu[: test.shape[1]]) / sd[: test.shape[1]]
    keep = [j for j in range(train.shape[1]) if np.count_nonzero(train[:, j] == np.nanmin(train[:, j])) <= 5]
    if keep and max(keep) >= test.shape[1]:
        raise corrupt(test_path, f"the {train.shape[1]} feature columns of {train_path.name}",
                      f"{test.shape[1]} after dropping its offset last column")
    train, test = train[:, keep], test[:, keep]
    if not (np.isfinite(train).all() and np.isfinite(test).all()):
        raise corrupt(test_path if np.isfinite(train).all() else train_path, "finite numbers in every kept feature",
                      "missing or non-numeric values")
    n_val = int(0.1 * train.shape[0])
    return {"train": train[:-n_val].astype(np.float32), "val": train[-n_val:].astype(np.float32),
            "test": test.astype(np.float32)}


def prepare_miniboone(path: Path) -> Arrays:
    """MINIBOONE (already cleaned by MAF): 10% splits, normalise by train+validation mean and std (ddof 0)."""
    data = _load_npy(path, 43).astype(np.float64, copy=False)
    train, val, test = split_last_tenths(data)
    return _normalise_by(train, val, test, data[: train.shape[0] + val.shape[0]], ddof=0)


def prepare_bsds300(path: Path) -> Arrays:
    """BSDS300: the ``train``, ``validation`` and ``test`` datasets of the HDF5 file, 63 columns, as they are."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise corrupt(path, "an HDF5 file", f"an unreadable file ({err})") from None
    out = {}
    with f:
        for key, name in (("train", "train"), ("val", "validation"), ("test", "test")):
            if name not in f:
                raise corrupt(path, "HDF5 datasets train, validation and test", f"no dataset {name!r} (has {sorted(f)})")
            ds = f[name]
            if ds.ndim != 2 or ds.shape[1] != 63:
                raise corrupt(path, f"dataset {name!r} of shape (N, 63)", f"shape {ds.shape}")
            out[key] = np.empty(ds.shape, np.float32)
            for start in range(0, ds.shape[0], 1 << 17):  # in blocks: no float64 copy of the whole set
                out[key][start:start + (1 << 17)] = ds[start:start + (1 << 17)]
    return out


PREPARE = {"power": prepare_power, "gas": prepare_gas, "hepmass": prepare_hepmass,
           "miniboone": prepare_miniboone, "bsds300": prepare_bsds300}


def source_paths(name: str, root: Path | None) -> list[Path]:
    """The source files of set ``name`` under ``root``; a clear error when a root or a file is missing."""
    files = SETS[name][0]
    if root is None:
        raise no_root(name, files[0], MAF_HOW)
    paths = [root / rel for rel in files]
    for path in paths:
        if not path.is_file():
            raise missing(name, path, MAF_HOW)
    return paths


def prepared(name: str, root: Path | None, cache: bool = True) -> Arrays:
    """The prepared float32 arrays of set ``name`` (from the cache when the sources are unchanged)."""
    paths = source_paths(name, root)
    key = f"{name}-v{PREP_VERSION}-{source_key(paths)}"
    arrays = cached_arrays(paths[0].parent, key, ("train", "val", "test"), lambda: PREPARE[name](*paths), cache)
    dim = SETS[name][1]
    for split, arr in arrays.items():
        if arr.ndim != 2 or arr.shape[1] != dim:
            raise corrupt(paths[0], f"{dim} columns after MAF's preparation", f"{arr.shape[1]} in the {split} split")
    return arrays


def _check_sources(name: str, paths: list[Path]) -> str:
    """'' when the source files look right by their headers, else what is wrong (raises nothing)."""
    path = paths[0]
    try:
        if name in ("power", "miniboone"):
            columns = 8 if name == "power" else 43
            shape = npy_shape(path)
            if len(shape) != 2 or shape[1] != columns:
                return f"{path}: expected an array with {columns} columns, found shape {shape}"
        elif name == "bsds300":
            import h5py

            with h5py.File(path, "r") as f:
                for ds in ("train", "validation", "test"):
                    if ds not in f or f[ds].ndim != 2 or f[ds].shape[1] != 63:
                        return f"{path}: expected dataset {ds!r} of shape (N, 63)"
        elif name == "hepmass":
            for p in paths:
                with open(p, encoding="utf-8", errors="replace") as f:
                    if "," not in f.readline():
                        return f"{p}: expected a comma-separated header line"
        elif name == "gas":
            with open(path, "rb") as f:
                if f.read(1) != b"\x80":
                    return f"{path}: expected a pickle (protocol 2 or later)"
    except (OSError, ValueError) as err:
        return f"{path}: unreadable ({err})"
    return ""


def verify(name: str, root: Path | None) -> Status:
    """`flowbench data verify` for one of MAF's sets: every source file present, and its header
    (columns of a ``.npy``, BSDS300's HDF5 datasets, HEPMASS's header line, GAS's pickle) right."""
    files = SETS[name][0]
    if root is None:
        return no_root_status(name, files[0], MAF_HOW)
    paths = [root / f for f in files]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        return Status(name, "missing", str(absent[0]), how=MAF_HOW)
    problem = _check_sources(name, paths)
    return Status(name, "corrupt", str(paths[0]), problem, MAF_HOW) if problem else Status(name, "found", str(paths[0]))


def load(name: str, root: Path | None = None, *, cache: bool = True):
    """Train/validation/test splits of one of MAF's five UCI sets, prepared exactly as MAF published them."""
    import torch

    from bench.data.base import DataInfo, Dataset, Split

    arrays = prepared(name, root, cache)
    sizes = tuple(len(arrays[k]) for k in ("train", "val", "test"))
    published = SETS[name][2]
    notes = f"MAF's {name.upper()} ({'/'.join(f'{n:,}' for n in sizes)})"
    if sizes != published:
        log.warning("%s: split sizes %s differ from the published %s (a partial or different file?)",
                    name, sizes, published)
        notes += f"; NOT the published sizes {'/'.join(f'{n:,}' for n in published)}"
    info = DataInfo(name=name, kind="tabular", shape=(SETS[name][1],), metric="nll", notes=notes)
    splits = [Split(torch.from_numpy(np.ascontiguousarray(arrays[k]))) for k in ("train", "val", "test")]
    return Dataset(info, *splits)


for _name, _description in {
    "power": "UCI household power, 6-D (MAF's preparation)",
    "gas": "UCI gas sensors (ethylene CO), 8-D (MAF's preparation)",
    "hepmass": "UCI HEPMASS signal, 21-D (MAF's preparation)",
    "miniboone": "UCI MiniBooNE, 43-D (MAF's preparation)",
    "bsds300": "BSDS300 8x8 patches, 63-D (MAF's preparation)",
}.items():
    register_dataset(_name, kind="tabular", description=_description, files=verify)(load)
