"""`flowbench data verify`: for every registered dataset, found / missing / corrupt, and where it looked.

Checks are cheap and torch-free: existence, torchvision's MD5s (MNIST gz, CIFAR10), and file headers
(the shape in a ``.npy`` or IDX header, BSDS300's HDF5 datasets, HEPMASS's header line). Full
preparation (and its shape checks) happens when a dataset is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.errors import FlowbenchError

GENERATED = "generated"


@dataclass
class Status:
    """One dataset's verdict: ``found``, ``missing``, ``corrupt`` or ``generated``, with where and why."""

    name: str
    state: str
    where: str
    detail: str = ""


def _npy_shape(path: Path) -> tuple[int, ...]:
    import numpy as np

    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(f)  # the header only: no data is read
    return tuple(shape)


def _check_tabular(name: str, paths: list[Path]) -> str:
    """'' when the source files look right, else what is wrong (raises nothing)."""
    path = paths[0]
    try:
        if name in ("power", "miniboone"):
            columns = 8 if name == "power" else 43
            shape = _npy_shape(path)
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


def _check_idx(path: Path, shape: tuple[int, ...], md5: str) -> str:
    from bench.data.files import file_digest

    if path.suffix == ".gz":
        found = file_digest(path, "md5")
        return "" if found == md5 else f"{path}: expected md5 {md5}, found {found}"
    try:
        with open(path, "rb") as f:
            head = f.read(4 + 4 * len(shape))
    except OSError as err:
        return f"{path}: unreadable ({err})"
    import numpy as np

    if len(head) < 4 + 4 * len(shape) or head[:3] != b"\x00\x00\x08" or head[3] != len(shape):
        return f"{path}: expected an IDX header for shape {shape}"
    found_shape = tuple(int(d) for d in np.frombuffer(head[4:], dtype=">u4"))
    return "" if found_shape == shape else f"{path}: expected shape {shape}, found {found_shape}"


def _verify_mnist(name: str, root: Path, stems: list[str]) -> Status:
    from bench.data.images import MNIST_FILES, mnist_path

    paths, problems = [], []
    for stem in stems:
        try:
            path = mnist_path(root, stem, name)
        except FlowbenchError:
            return Status(name, "missing", str(root / "mnist" / f"{stem}.gz"),
                          "also looked in MNIST/raw, MNIST and the root, gz or not")
        paths.append(path)
        problem = _check_idx(path, MNIST_FILES[stem][1], MNIST_FILES[stem][0])
        if problem:
            problems.append(problem)
    where = str(paths[0].parent)
    return Status(name, "corrupt", where, "; ".join(problems)) if problems else Status(name, "found", where)


def _verify_cifar(root: Path) -> Status:
    from bench.data.files import file_digest, find
    from bench.data.images import CIFAR_BATCHES, CIFAR_FOLDER, CIFAR_PLACES, CIFAR_TAR

    folder = find(root, [f"{p}/{CIFAR_FOLDER}" for p in CIFAR_PLACES])
    if folder is not None:
        problems = []
        for batch, md5 in CIFAR_BATCHES.items():
            path = folder / batch
            if not path.is_file():
                return Status("cifar10", "missing", str(path))
            found = file_digest(path, "md5")
            if found != md5:
                problems.append(f"{path}: expected md5 {md5}, found {found}")
        return Status("cifar10", "corrupt" if problems else "found", str(folder), "; ".join(problems))
    tar = find(root, [f"{p}/{CIFAR_TAR[0]}" for p in CIFAR_PLACES])
    if tar is None:
        return Status("cifar10", "missing", str(root / CIFAR_FOLDER), f"or {root / CIFAR_TAR[0]}")
    found = file_digest(tar, "md5")
    if found != CIFAR_TAR[1]:
        return Status("cifar10", "corrupt", str(tar), f"expected md5 {CIFAR_TAR[1]}, found {found}")
    return Status("cifar10", "found", str(tar))


def verify_dataset(name: str, root: Path | None) -> Status:
    """The verdict for one registered dataset under ``root``."""
    from bench.data import REGISTRY
    from bench.data.tabular import SETS

    entry = REGISTRY[name]
    module = entry.loader.partition(":")[0]
    if name in SETS:
        files = SETS[name][0]
        if root is None:
            return Status(name, "missing", f"DATA_ROOT/{files[0]}", "no data root (--data-root or $FLOWBENCH_DATA)")
        paths = [root / f for f in files]
        absent = [p for p in paths if not p.is_file()]
        if absent:
            return Status(name, "missing", str(absent[0]))
        problem = _check_tabular(name, paths)
        return Status(name, "corrupt", str(paths[0]), problem) if problem else Status(name, "found", str(paths[0]))
    if name in ("mnist", "mnist10k", "cifar10"):
        if root is None:
            where = "DATA_ROOT/cifar-10-batches-py" if name == "cifar10" else "DATA_ROOT/mnist"
            return Status(name, "missing", where, "no data root (--data-root or $FLOWBENCH_DATA)")
        if name == "cifar10":
            return _verify_cifar(root)
        prefixes = ["t10k"] if name == "mnist10k" else ["train", "t10k"]
        stems = [f"{p}-{k}-idx{d}-ubyte" for p in prefixes for k, d in (("images", 3), ("labels", 1))]
        return _verify_mnist(name, root, stems)
    if "sklearn" in module or name == "digits":
        return Status(name, "built-in", "scikit-learn (ships with the package)")
    return Status(name, GENERATED, "generated from a seed")


def verify_all(root: Path | None) -> list[Status]:
    """Verdicts for every registered dataset, sorted by name."""
    from bench.data import REGISTRY

    return [verify_dataset(name, root) for name in sorted(REGISTRY)]
