"""Image datasets: MNIST, CIFAR10, scikit-learn's 8x8 digits, and mnist10k (a split of the real MNIST test set).

Splits hold the raw integer images (uint8, N x C x H x W) and int64 labels; ``Dataset.preprocess``
optionally augments (training only: random crops, Glow's random shifts, flips), dequantises and
applies the logit transform (or centres, ``u - 0.5``), returning
the exact log-determinant so the harness reports bits/dim of the integer data
(``bench.metrics.bits_per_dim``). MNIST's gz files and CIFAR10's batches are verified by the MD5s
torchvision uses; nothing downloads.
"""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

from typing import Annotated

import numpy as np

from baselines.constraints import Choice, Count, NonNegInt, Range, Seed
from bench.data.base import CROP_PADDING, DEQUANTIZE, SKLEARN, DataInfo, Dataset, Split, Status
from bench.data.files import check_md5, corrupt, file_digest, find, missing, no_root, no_root_status, unpickle_data
from bench.data.registry import register_dataset
from bench.data.sklearn_sets import Fraction
from bench.errors import FlowbenchError

__all__ = ["MNIST_HOW", "CIFAR_HOW", "MNIST_FILES", "CIFAR_BATCHES", "read_idx", "mnist_path", "read_mnist",
           "mnist_arrays", "cifar_batches", "check_image_options", "random_crop", "random_shift", "make_preprocess",
           "pad_and_replicate", "verify_mnist", "verify_cifar10", "load_mnist", "load_cifar10", "load_mnist10k",
           "load_digits"]

MNIST_HOW = ("get the four IDX files (gz or not) from torchvision's download "
             "(torchvision.datasets.MNIST(root, download=True) puts them in ROOT/MNIST/raw) or the cluster's "
             "shared copy, and point --data-root (or $FLOWBENCH_DATA) at ROOT")
CIFAR_HOW = ("get cifar-10-python.tar.gz (md5 c58f30108f718f92721af3b95e74349a) from torchvision's download "
             "(torchvision.datasets.CIFAR10(root, download=True)) or the cluster's shared copy, put it or its "
             "unpacked cifar-10-batches-py folder in ROOT and point --data-root (or $FLOWBENCH_DATA) at ROOT")

# declared types and ranges of the image options (the loaders' signatures; bench.spec checks suites against them)
BelowHalf = Annotated[float, Range(0, 0.5, max_open=True)]  # alpha, shift
Dequantize = Annotated[str, Choice(*DEQUANTIZE)]
CropPadding = Annotated[str, Choice(*CROP_PADDING)]

# -- MNIST (IDX files) --------------------------------------------------------------------------
MNIST_DIRS = ("mnist", "MNIST/raw", "MNIST", ".")  # where under the data root the IDX files may be
MNIST_FILES = {  # stem -> (md5 of the .gz as torchvision checks it, expected IDX shape)
    "train-images-idx3-ubyte": ("f68b3c2dcbeaceaa15a7a1a7d5ac1c8e", (60_000, 28, 28)),
    "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432", (60_000,)),
    "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3", (10_000, 28, 28)),
    "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c", (10_000,)),
}
_IDX_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (``.gz`` or raw) of unsigned bytes as a uint8 array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise corrupt(path, "an IDX file" + (" compressed with gzip" if path.suffix == ".gz" else ""),
                      f"an unreadable file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] == 0:
        raise corrupt(path, "an IDX file of unsigned bytes (magic 0x0000 08 nd)", f"header bytes {raw[:4].hex()}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    if len(raw) - header != int(np.prod(shape)):
        raise corrupt(path, f"{int(np.prod(shape))} bytes of data for the declared shape {shape}",
                      f"{len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def mnist_path(root: Path | None, stem: str, dataset: str = "mnist") -> Path:
    """Where the IDX file ``stem`` (``.gz`` or raw) is under the data root; a clear error when absent."""
    if root is None:
        raise no_root(dataset, f"mnist/{stem}.gz", MNIST_HOW)
    candidates = [f"{d}/{stem}{ext}" for d in MNIST_DIRS for ext in (".gz", "")]
    path = find(root, candidates)
    if path is None:
        raise missing(dataset, root / candidates[0], MNIST_HOW, [root / c for c in candidates[1:4]])
    return path


def read_mnist(root: Path | None, stem: str, verify: bool = True, dataset: str = "mnist") -> np.ndarray:
    """One MNIST file, checked by torchvision's MD5 (gz) or by its published shape (raw) when ``verify``."""
    path = mnist_path(root, stem, dataset)
    md5, shape = MNIST_FILES[stem]
    if verify and path.suffix == ".gz":
        check_md5(path, md5)
    array = read_idx(path)
    if verify and array.shape != shape:
        raise corrupt(path, f"shape {shape}", f"shape {array.shape}")
    return array


def mnist_arrays(root: Path | None, train: bool, verify: bool = True, dataset: str = "mnist"):
    """(images N x 1 x 28 x 28 uint8, labels int64) of MNIST's train or test files."""
    prefix = "train" if train else "t10k"
    images = read_mnist(root, f"{prefix}-images-idx3-ubyte", verify, dataset)
    labels = read_mnist(root, f"{prefix}-labels-idx1-ubyte", verify, dataset)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise corrupt(mnist_path(root, f"{prefix}-labels-idx1-ubyte", dataset),
                      f"one label per image ({len(images)})", f"labels of shape {labels.shape}")
    return images[:, None].copy(), labels.astype(np.int64)


# -- CIFAR10 (pickled batches) -------------------------------------------------------------------
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TAR = ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
CIFAR_BATCHES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR_PLACES = (".", "cifar10", "CIFAR10")


def _unpickle_batch(raw: bytes, where: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch's images and labels. Callers check its MD5 first (unless ``verify: false``); the
    unpickler resolves nothing beyond numpy's arrays either way, so a planted pickle never runs."""
    expected = "a pickled CIFAR-10 batch (dict with b'data' and b'labels')"
    batch = unpickle_data(raw, where, expected, encoding="bytes")
    try:
        data, labels = batch[b"data"], batch[b"labels"]
    except Exception as err:  # noqa: BLE001 - any failure means a bad batch
        raise corrupt(where, expected, f"{type(err).__name__}: {err}") from None
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise corrupt(where, "data of shape (N, 3072) and N labels", f"data {data.shape}, {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def cifar_batches(root: Path | None, verify: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every CIFAR10 batch from ``cifar-10-batches-py`` or, failing that, from ``cifar-10-python.tar.gz``."""
    if root is None:
        raise no_root("cifar10", f"{CIFAR_FOLDER}/data_batch_1", CIFAR_HOW)
    folder = find(root, [f"{p}/{CIFAR_FOLDER}" for p in CIFAR_PLACES])
    if folder is not None:
        out = {}
        for name, md5 in CIFAR_BATCHES.items():
            path = folder / name
            if not path.is_file():
                raise missing("cifar10", path, CIFAR_HOW)
            if verify:
                check_md5(path, md5)
            out[name] = _unpickle_batch(path.read_bytes(), path)
        return out
    tar = find(root, [f"{p}/{CIFAR_TAR[0]}" for p in CIFAR_PLACES])
    if tar is None:
        raise missing("cifar10", root / CIFAR_FOLDER, CIFAR_HOW, [root / CIFAR_TAR[0]])
    if verify:
        check_md5(tar, CIFAR_TAR[1])
    out = {}
    try:
        with tarfile.open(tar, "r:gz") as archive:
            for name in CIFAR_BATCHES:
                member = archive.extractfile(f"{CIFAR_FOLDER}/{name}")
                if member is None:
                    raise KeyError(f"{CIFAR_FOLDER}/{name} is not a file")
                out[name] = _unpickle_batch(member.read(), tar / name)
    except (tarfile.TarError, KeyError, OSError, EOFError) as err:
        raise corrupt(tar, f"a gzipped tar with {CIFAR_FOLDER}/ and its six batches", f"{type(err).__name__}: {err}") \
            from None
    return out


# -- `flowbench data verify`: cheap checks (MD5s, IDX headers), no full read --------------------------


def _check_idx(path: Path, shape: tuple[int, ...], md5: str) -> str:
    """'' when an IDX file looks right (a .gz by torchvision's MD5, a raw file by its header), else why not."""
    if path.suffix == ".gz":
        found = file_digest(path, "md5")
        return "" if found == md5 else f"{path}: expected md5 {md5}, found {found}"
    try:
        with open(path, "rb") as f:
            head = f.read(4 + 4 * len(shape))
    except OSError as err:
        return f"{path}: unreadable ({err})"
    if len(head) < 4 + 4 * len(shape) or head[:3] != b"\x00\x00\x08" or head[3] != len(shape):
        return f"{path}: expected an IDX header for shape {shape}"
    found_shape = tuple(int(d) for d in np.frombuffer(head[4:], dtype=">u4"))
    return "" if found_shape == shape else f"{path}: expected shape {shape}, found {found_shape}"


def verify_mnist(name: str, root: Path | None) -> Status:
    """MNIST's IDX files (mnist10k: the two t10k files only), each by MD5 (gz) or header (raw)."""
    if root is None:
        return no_root_status(name, "mnist", MNIST_HOW)
    prefixes = ["t10k"] if name == "mnist10k" else ["train", "t10k"]
    paths, problems = [], []
    for stem in (f"{p}-{k}-idx{d}-ubyte" for p in prefixes for k, d in (("images", 3), ("labels", 1))):
        try:
            path = mnist_path(root, stem, name)
        except FlowbenchError:
            return Status(name, "missing", str(root / "mnist" / f"{stem}.gz"),
                          "also looked in MNIST/raw, MNIST and the root, gz or not", MNIST_HOW)
        paths.append(path)
        problem = _check_idx(path, MNIST_FILES[stem][1], MNIST_FILES[stem][0])
        if problem:
            problems.append(problem)
    where = str(paths[0].parent)
    return Status(name, "corrupt", where, "; ".join(problems), MNIST_HOW) if problems else Status(name, "found", where)


def verify_cifar10(name: str, root: Path | None) -> Status:
    """CIFAR10's six batches by torchvision's MD5s, or else its tar.gz by its MD5."""
    if root is None:
        return no_root_status(name, CIFAR_FOLDER, CIFAR_HOW)
    folder = find(root, [f"{p}/{CIFAR_FOLDER}" for p in CIFAR_PLACES])
    if folder is not None:
        problems = []
        for batch, md5 in CIFAR_BATCHES.items():
            path = folder / batch
            if not path.is_file():
                return Status(name, "missing", str(path), how=CIFAR_HOW)
            found = file_digest(path, "md5")
            if found != md5:
                problems.append(f"{path}: expected md5 {md5}, found {found}")
        return Status(name, "corrupt" if problems else "found", str(folder), "; ".join(problems),
                      CIFAR_HOW if problems else "")
    tar = find(root, [f"{p}/{CIFAR_TAR[0]}" for p in CIFAR_PLACES])
    if tar is None:
        return Status(name, "missing", str(root / CIFAR_FOLDER), f"or {root / CIFAR_TAR[0]}", CIFAR_HOW)
    found = file_digest(tar, "md5")
    if found != CIFAR_TAR[1]:
        return Status(name, "corrupt", str(tar), f"expected md5 {CIFAR_TAR[1]}, found {found}", CIFAR_HOW)
    return Status(name, "found", str(tar))


# -- preprocessing -------------------------------------------------------------------------------


def check_image_options(logit: bool, alpha: float, dequantize: str, crop: int = 0, crop_padding: str = "symmetric",
                        shift: float = 0.0, size: int | None = None) -> None:
    """Reject an alpha outside [0, 0.5), an unknown test-time dequantisation or an impossible augmentation."""
    if not 0.0 <= alpha < 0.5:
        raise FlowbenchError(f"alpha {alpha}: expected 0 <= alpha < 0.5 (logit(alpha + (1 - 2 alpha) x))")
    if dequantize not in DEQUANTIZE:
        raise FlowbenchError(f'dequantize "{dequantize}": expected one of {", ".join(DEQUANTIZE)} '
                             "(uniform: FFJORD's x + U(0,1) on the test set too; center: RNODE's x + 0.5 at test)")
    if crop_padding not in CROP_PADDING:
        raise FlowbenchError(f'crop_padding "{crop_padding}": expected one of {", ".join(CROP_PADDING)}')
    if crop < 0 or (size is not None and crop >= size):
        raise FlowbenchError(f"crop {crop}: expected a padding of 0 (off) up to {size - 1 if size else 'the size - 1'} "
                             "pixels (pad, then crop back to the image size at a random offset)")
    if not 0.0 <= shift < 0.5:
        raise FlowbenchError(f"shift {shift}: expected 0 <= shift < 0.5 (a fraction of the image size; 0 is off)")


def _source_index(index, size: int, mode: str):
    """Map positions in [-size, 2 size) back into [0, size): symmetric repeats the edge pixel
    (-1 -> 0), reflect does not (-1 -> 1); zero clamps and also returns which were inside."""
    if mode == "symmetric":
        index = index.where(index >= 0, -index - 1)
        return index.where(index < size, 2 * size - 1 - index), None
    if mode == "reflect":
        index = index.abs()
        return index.where(index < size, 2 * size - 2 - index), None
    return index.clamp(0, size - 1), (index >= 0) & (index < size)


def random_crop(x, pad: int, mode: str):
    """Pad every image by ``pad`` pixels (``mode``) and crop it back to its size at a random offset
    (torchvision's Pad + RandomCrop), per example; x is N x C x H x W."""
    import torch

    from baselines.shards import draw_like

    n, _, h, w = x.shape
    offsets = x.new_empty((n, 1), dtype=torch.long)
    dy = draw_like(offsets, lambda t: torch.randint_like(t, 0, 2 * pad + 1))
    dx = draw_like(offsets, lambda t: torch.randint_like(t, 0, 2 * pad + 1))
    rows, row_ok = _source_index(dy + torch.arange(h, device=x.device) - pad, h, mode)
    cols, col_ok = _source_index(dx + torch.arange(w, device=x.device) - pad, w, mode)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = x[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if row_ok is not None:
        out = out * (row_ok[:, :, None] & col_ok[:, None, :])[:, None].to(out.dtype)
    return out


def random_shift(x, fraction: float):
    """openai/glow's augmentation (Keras' width/height_shift_range): translate every image by a
    uniform offset in (-fraction, fraction) of its height and width, with bilinear interpolation
    and the nearest edge pixel outside, then floor back to integers."""
    import torch

    from baselines.shards import draw_like

    n, _, h, w = x.shape

    def along(x, size: int, dim: int):
        offset = (draw_like(x.new_empty((n, 1), dtype=torch.float32), torch.rand_like) * 2 - 1) * fraction * size
        src = torch.arange(size, device=x.device, dtype=x.dtype) + offset.to(x.dtype)  # N x size
        lo = src.floor()
        shape = [n, 1, 1, 1]
        shape[dim] = size
        frac = (src - lo).view(shape)
        lo = lo.long()

        def take(index):
            return x.gather(dim, index.clamp(0, size - 1).view(shape).expand_as(x))

        a = take(lo)
        return a + frac * (take(lo + 1) - a)  # exactly a where both neighbours are equal

    return along(along(x, h, 2), w, 3).floor()


def make_preprocess(levels: int, logit: bool = True, alpha: float = 1e-6, dequantize: str = "uniform",
                    flip: bool = False, crop: int = 0, crop_padding: str = "symmetric", shift: float = 0.0):
    """``preprocess(x, train) -> (model input, log|det d input / d u|)`` with u = (x + U(0,1)) / levels.

    At test time ``dequantize="center"`` uses u = (x + 0.5) / levels (RNODE) instead of noise (FFJORD).
    Training only, on the integer images and in this order: ``crop`` pads by that many pixels
    (``crop_padding``) and crops back at a random offset, ``shift`` translates by up to that fraction
    of the size (Glow's), ``flip`` mirrors half the images left-right. With ``logit`` the input is
    logit(alpha + (1 - 2 alpha) u), else u - 0.5 (log-determinant 0). The log-determinant is per
    example, relative to the [0, 1)-scaled data; ``bits_per_dim`` adds the ``levels`` scaling.
    """
    import torch

    from baselines.shards import draw_like

    check_image_options(logit, alpha, dequantize, crop, crop_padding, shift)
    log_scale = float(np.log1p(-2 * alpha))

    def preprocess(x: torch.Tensor, train: bool, test_dequantize: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``test_dequantize`` overrides the test-time convention for one evaluation (``center``)."""
        x = x.to(torch.float32)
        if train and crop:
            x = random_crop(x, crop, crop_padding)
        if train and shift:
            x = random_shift(x, shift)
        if train and flip:
            mirror = draw_like(x.new_empty(x.shape[0]), torch.rand_like) < 0.5
            x = torch.where(mirror.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)
        mode = dequantize if train or test_dequantize is None else test_dequantize
        noise = draw_like(x, torch.rand_like) if train or mode == "uniform" else torch.full_like(x, 0.5)
        u = (x + noise) / levels
        if not logit:
            return u - 0.5, torch.zeros(x.shape[0], device=x.device)
        s = alpha + (1 - 2 * alpha) * u
        y = torch.log(s) - torch.log1p(-s)
        logdet = (log_scale - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
        return y, logdet

    return preprocess


def _conventions(logit: bool, alpha: float, dequantize: str, levels: int) -> str:
    test = "x + U(0,1)" if dequantize == "uniform" else "x + 0.5 (bin centre)"
    space = f"logit alpha {alpha:g}" if logit else "u - 0.5, no logit"
    return f"dequantised (x + U(0,1))/{levels} in training, ({test})/{levels} at test; {space}"


def _augmentation(flip: bool, crop: int, crop_padding: str, shift: float) -> str:
    parts = []
    if crop:
        parts.append(f"random crops after {crop}-pixel {crop_padding} padding")
    if shift:
        parts.append(f"random shifts up to {shift:g} of the size")
    if flip:
        parts.append("random horizontal flips")
    return "; " + ", ".join(parts) + " in training" if parts else ""


def _dataset(name: str, splits, levels: int, shape, logit, alpha, dequantize, flip, notes, crop: int = 0,
             crop_padding: str = "symmetric", shift: float = 0.0):
    import torch

    made = [Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)) for x, y in splits]
    sizes = "/".join(f"{len(s):,}" for s in made)
    augment = {"flip": flip} if not (crop or shift) else {"flip": flip, "crop": crop, "crop_padding": crop_padding,
                                                          "shift": shift}
    info = DataInfo(name=name, kind="image", shape=tuple(shape), num_classes=10, metric="bpd", levels=levels,
                    notes=f"{notes}; {sizes}; {_conventions(logit, alpha, dequantize, levels)}"
                          + _augmentation(flip, crop, crop_padding, shift),
                    extra={"dequantize": dequantize, "logit": logit, "alpha": alpha, **augment})
    return Dataset(info, *made, preprocess=make_preprocess(levels, logit, alpha, dequantize, flip, crop, crop_padding,
                                                           shift))


def pad_and_replicate(x: np.ndarray, pad: int, channels: int) -> np.ndarray:
    """N x C x H x W images zero-padded by ``pad`` pixels on every side and, for ``channels`` 3, a
    one-channel image replicated three times (how the official Glow and i-ResNet code feed MNIST:
    28x28 -> 3x32x32 with ``pad`` 2)."""
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    if channels != x.shape[1]:
        x = np.repeat(x, channels, axis=1)
    return x


def _hold_out(x: np.ndarray, y: np.ndarray, n_val: int, test, what: str):
    if n_val < 0 or n_val >= len(x):
        raise FlowbenchError(f"n_val {n_val}: expected 0 <= n_val < {len(x)} (the training images)")
    if n_val == 0:
        return [(x, y), test, test], f"{what}; validation = the test set (n_val 0)"
    return [(x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:]), test], f"{what}; validation = last {n_val:,} training images"


@register_dataset("mnist", kind="image", metric="bpd", shape=(1, 28, 28), files=verify_mnist,
                  description="MNIST 1x28x28 from the IDX files (pad 2, channels 3: Glow/i-ResNet's 3x32x32), "
                              "10 classes")
def load_mnist(name: str, root: Path | None = None, *, n_val: NonNegInt = 5000, pad: Annotated[int, Range(0, 16)] = 0,
               channels: Annotated[int, Choice(1, 3)] = 1, logit: bool = True, alpha: BelowHalf = 1e-6,
               dequantize: Dequantize = "uniform", flip: bool = False, crop: NonNegInt = 0,
               crop_padding: CropPadding = "symmetric", shift: BelowHalf = 0.0, verify: bool = True):
    """MNIST from its four IDX files: 60,000 training (the last ``n_val`` held out) and 10,000 test
    images; ``pad``/``channels`` give the official Glow / i-ResNet 3x32x32 version (pad 2, channels 3)."""
    size = 28 + 2 * pad
    check_image_options(logit, alpha, dequantize, crop, crop_padding, shift, size)
    train_x, train_y = mnist_arrays(root, True, verify, name)
    test_x, test_y = mnist_arrays(root, False, verify, name)
    train_x, test_x = (pad_and_replicate(a, pad, channels) for a in (train_x, test_x))
    what = "MNIST" + (f", zero-padded to {size}x{size}" if pad else "") + (", replicated to 3 channels"
                                                                          if channels == 3 else "")
    splits, notes = _hold_out(train_x, train_y, n_val, (test_x, test_y), what)
    return _dataset(name, splits, 256, (channels, size, size), logit, alpha, dequantize, flip, notes, crop,
                    crop_padding, shift)


@register_dataset("cifar10", kind="image", metric="bpd", shape=(3, 32, 32), files=verify_cifar10,
                  description="CIFAR10 3x32x32 from the pickled batches")
def load_cifar10(name: str, root: Path | None = None, *, n_val: NonNegInt = 5000, flip: bool = True,
                 logit: bool = True, alpha: BelowHalf = 1e-6, dequantize: Dequantize = "uniform", crop: NonNegInt = 0,
                 crop_padding: CropPadding = "symmetric", shift: BelowHalf = 0.0, verify: bool = True):
    """CIFAR10 from its pickled batches: 50,000 training (the last ``n_val`` held out) and 10,000 test images."""
    check_image_options(logit, alpha, dequantize, crop, crop_padding, shift, 32)
    batches = cifar_batches(root, verify)
    x = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    y = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    splits, notes = _hold_out(x, y, n_val, batches["test_batch"], "CIFAR10")
    return _dataset(name, splits, 256, (3, 32, 32), logit, alpha, dequantize, flip, notes, crop, crop_padding, shift)


@register_dataset("mnist10k", kind="image", metric="bpd", shape=(1, 28, 28), files=verify_mnist,
                  description="8,000/1,000/1,000 split of the real MNIST TEST set (small runs, not the benchmark)")
def load_mnist10k(name: str, root: Path | None = None, *, n_train: Count = 8000, n_val: Count = 1000, seed: Seed = 0,
                  logit: bool = True, alpha: BelowHalf = 1e-6, dequantize: Dequantize = "uniform",
                  verify: bool = True):
    """A seeded split of the real 10,000-image MNIST test set (t10k files only), for small real runs.

    Reported as such (DataInfo.notes): never the MNIST benchmark.
    """
    check_image_options(logit, alpha, dequantize)
    x, y = mnist_arrays(root, False, verify, name)
    if n_train < 1 or n_val < 1 or n_train + n_val >= len(x):
        raise FlowbenchError(f"n_train {n_train} and n_val {n_val}: expected both >= 1 and a sum below {len(x)}")
    order = np.random.default_rng(seed).permutation(len(x))
    parts = (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])
    notes = f"split of the MNIST TEST set only (t10k, {len(x):,} images), seed {seed}; not the MNIST benchmark"
    return _dataset(name, [(x[p], y[p]) for p in parts], 256, (1, 28, 28), logit, alpha, dequantize, False, notes)


@register_dataset("digits", kind="image", metric="bpd", shape=(1, 8, 8), files=SKLEARN,
                  description="scikit-learn 8x8 digits as 1x8x8 images, 17 levels, 10 classes")
def load_digits(name: str, root: Path | None = None, *, val_fraction: Fraction = 0.1, test_fraction: Fraction = 0.2,
                seed: Seed = 0, logit: bool = True, alpha: BelowHalf = 1e-6, dequantize: Dequantize = "uniform"):
    """scikit-learn's 1,797 real 8x8 digits as 1x8x8 images with 17 grey levels (0..16), seeded split
    (the same rows as ``digits64`` for the same seed and fractions)."""
    from bench.data.sklearn_sets import raw, split_indices

    check_image_options(logit, alpha, dequantize)
    x, y = raw("digits64")
    x = x.reshape(-1, 1, 8, 8).astype(np.uint8)
    parts = split_indices(len(x), val_fraction, test_fraction, seed)
    notes = f"scikit-learn load_digits (UCI optdigits), 17 levels, seed {seed}"
    return _dataset(name, [(x[p], y[p]) for p in parts], 17, (1, 8, 8), logit, alpha, dequantize, False, notes)

