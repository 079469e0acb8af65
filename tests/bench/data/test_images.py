"""Image loaders on IDX files and CIFAR batches written here in the real formats, the real MNIST test set
when present, digits, and the dequantisation / flip / logit preprocessing with its log-determinant."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import images, load_dataset
from bench.data.sklearn_sets import raw
from bench.errors import FlowbenchError
from shared_data import SHARED_DATA

SHARED = SHARED_DATA  # the shared real data (tests/shared_data.py), optional
REAL_MNIST = SHARED / "mnist"


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist(root: Path, n_train: int = 60, n_test: int = 20, gz: bool = True, folder: str = "mnist"):
    rng = np.random.default_rng(0)
    sets = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(root / folder / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(root / folder / f"{prefix}-labels-idx1-ubyte", y, gz)
        sets[prefix] = (x, y)
    return sets


@pytest.mark.parametrize("gz,folder", [(True, "mnist"), (False, "MNIST/raw")])
def test_mnist_reads_idx_files(tmp_path, gz, folder):
    sets = write_mnist(tmp_path, gz=gz, folder=folder)
    data = images.load_mnist("mnist", tmp_path, n_val=10, verify=False)
    assert [len(s) for s in (data.train, data.val, data.test)] == [50, 10, 20]
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape == (50, 1, 28, 28)
    assert data.val.y.dtype == torch.int64
    assert np.array_equal(data.val.x[:, 0].numpy(), sets["train"][0][50:])
    assert np.array_equal(data.test.y.numpy(), sets["t10k"][1].astype(np.int64))
    info = data.info
    assert (info.kind, info.shape, info.num_classes, info.metric, info.levels) == ("image", (1, 28, 28), 10, "bpd", 256)
    assert "validation = last 10 training images" in info.notes


def test_mnist_n_val_zero_validates_on_the_test_set(tmp_path):
    write_mnist(tmp_path)
    data = images.load_mnist("mnist", tmp_path, n_val=0, verify=False)
    assert len(data.train) == 60 and torch.equal(data.val.x, data.test.x)
    assert "validation = the test set" in data.info.notes


def test_mnist_gz_checked_by_torchvision_md5(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    found = hashlib.md5(path.read_bytes()).hexdigest()
    with pytest.raises(FlowbenchError) as err:
        images.load_mnist("mnist", tmp_path)
    assert str(err.value) == (f"{path}: expected md5 f68b3c2dcbeaceaa15a7a1a7d5ac1c8e, found md5 {found}; the file is "
                              "corrupt or not the published one: replace it with a fresh copy")


def test_raw_mnist_checked_by_shape(tmp_path):
    write_mnist(tmp_path, gz=False)
    with pytest.raises(FlowbenchError, match=r"train-images-idx3-ubyte: expected shape \(60000, 28, 28\), "
                                             r"found shape \(60, 28, 28\)"):
        images.load_mnist("mnist", tmp_path)


def test_bad_idx_header_and_truncated_file(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)
    with pytest.raises(FlowbenchError, match=r"expected an IDX file of unsigned bytes .* found header bytes 00000d03"):
        images.read_idx(path)
    path.write_bytes(idx_bytes(np.zeros((3, 2, 2)))[:-1])
    with pytest.raises(FlowbenchError, match=r"expected 12 bytes of data for the declared shape \(3, 2, 2\), found 11"):
        images.read_idx(path)


def test_missing_mnist_names_the_path_and_torchvision(tmp_path):
    with pytest.raises(FlowbenchError) as err:
        images.load_mnist("mnist", tmp_path)
    message = str(err.value)
    assert message.startswith(f'dataset "mnist": missing {tmp_path / "mnist" / "train-images-idx3-ubyte.gz"} (also '
                              f'looked for {tmp_path / "mnist" / "train-images-idx3-ubyte"}')
    assert "torchvision.datasets.MNIST(root, download=True)" in message and "cluster's shared copy" in message
    with pytest.raises(FlowbenchError, match=r'dataset "mnist10k" needs its data files but no data root is set'):
        images.load_mnist10k("mnist10k", None)


# -- the real MNIST test set --------------------------------------------------------------------
needs_real_mnist = pytest.mark.skipif(not (REAL_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                                      reason=f"real MNIST test files not found in {REAL_MNIST} (the shared data folder is optional)")


@needs_real_mnist
def test_real_mnist_test_set_counts_and_md5s():
    x, y = images.mnist_arrays(SHARED, train=False, verify=True)  # verify: torchvision's MD5s
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    train_labels = images.read_mnist(SHARED, "train-labels-idx1-ubyte")
    assert train_labels.shape == (60_000,)


@needs_real_mnist
def test_mnist10k_is_a_reported_split_of_the_real_test_set():
    data = load_dataset("mnist10k", {}, root=SHARED)
    assert [len(s) for s in (data.train, data.val, data.test)] == [8000, 1000, 1000]
    assert "split of the MNIST TEST set only" in data.info.notes and "not the MNIST benchmark" in data.info.notes
    everything = torch.cat([data.train.x, data.val.x, data.test.x]).flatten(1)
    x, _ = images.mnist_arrays(SHARED, train=False)
    assert sorted(map(bytes, everything.numpy())) == sorted(map(bytes, x.reshape(10_000, -1)))
    again = images.load_mnist10k("mnist10k", SHARED, seed=0)
    assert torch.equal(again.test.x, data.test.x)
    other = images.load_mnist10k("mnist10k", SHARED, seed=1)
    assert not torch.equal(other.test.x, data.test.x)


# -- CIFAR10 --------------------------------------------------------------------------------------
def cifar_batch(rng, n: int) -> bytes:
    return pickle.dumps({b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, size=n).tolist(), b"batch_label": b"x"})


def write_cifar(folder: Path, n: int = 20) -> dict[str, bytes]:
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    blobs = {name: cifar_batch(rng, n) for name in images.CIFAR_BATCHES}
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
    return blobs


def test_cifar10_from_the_batches_folder(tmp_path):
    blobs = write_cifar(tmp_path / "cifar-10-batches-py")
    data = images.load_cifar10("cifar10", tmp_path, n_val=10, verify=False)
    assert [len(s) for s in (data.train, data.val, data.test)] == [90, 10, 20]
    assert data.train.x.shape == (90, 3, 32, 32) and data.train.x.dtype == torch.uint8
    first = pickle.loads(blobs["data_batch_1"])
    assert np.array_equal(data.train.x[0].numpy(), first[b"data"][0].reshape(3, 32, 32))  # channel-major rows
    assert data.train.y[:20].tolist() == first[b"labels"]
    assert data.info.shape == (3, 32, 32) and data.info.levels == 256 and "flips" in data.info.notes


def test_cifar10_from_the_tar_gz(tmp_path):
    write_cifar(tmp_path / "src" / "cifar-10-batches-py")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    data = images.load_cifar10("cifar10", tmp_path, n_val=10, verify=False)
    folder = images.load_cifar10("cifar10", tmp_path / "src", n_val=10, verify=False)
    assert torch.equal(data.train.x, folder.train.x) and torch.equal(data.test.y, folder.test.y)
    with pytest.raises(FlowbenchError, match=r"cifar-10-python\.tar\.gz: expected md5 c58f30108f718f92721af3b95e74349a"):
        images.load_cifar10("cifar10", tmp_path)


def test_cifar10_batch_checked_by_md5_and_missing_batch_named(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    with pytest.raises(FlowbenchError, match=r"data_batch_1: expected md5 c99cafc152244af753f735de768cd75f"):
        images.load_cifar10("cifar10", tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FlowbenchError, match=rf'dataset "cifar10": missing {tmp_path / "cifar-10-batches-py" / "test_batch"}'):
        images.load_cifar10("cifar10", tmp_path, verify=False)
    with pytest.raises(FlowbenchError, match=r"cifar-10-python\.tar\.gz \(md5 c58f30108f718f92721af3b95e74349a\)"):
        images.load_cifar10("cifar10", tmp_path / "nothing")


def test_a_planted_cifar_batch_never_runs(tmp_path, planted_pickle):
    """Checked by its MD5 before it is opened; with ``verify: false`` (stand-in files) the unpickler
    resolves numpy's arrays and nothing else, so the planted batch is one line, and never runs."""
    write_cifar(tmp_path / "cifar-10-batches-py")
    marker = planted_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_1")
    with pytest.raises(FlowbenchError, match=r"data_batch_1: expected md5 c99cafc152244af753f735de768cd75f"):
        images.load_cifar10("cifar10", tmp_path)
    with pytest.raises(FlowbenchError) as err:
        images.load_cifar10("cifar10", tmp_path, verify=False)
    assert str(err.value).startswith(f"{tmp_path / 'cifar-10-batches-py' / 'data_batch_1'}: expected a pickled "
                                     "CIFAR-10 batch") and "posix.system" in str(err.value)
    assert "\n" not in str(err.value) and not marker.exists()


# -- digits ---------------------------------------------------------------------------------------
def test_digits_images_have_17_levels_and_the_digits64_rows():
    data = load_dataset("digits", {})
    assert data.info.shape == (1, 8, 8) and data.info.levels == 17 and data.info.metric == "bpd"
    assert data.train.x.dtype == torch.uint8 and int(data.train.x.max()) == 16
    x, _ = raw("digits64")
    flat = load_dataset("digits64", {})
    assert len(flat.test) == len(data.test)
    # same rows: standardising the images' test split by the images' train statistics gives digits64's test
    train = data.train.x.flatten(1).double().numpy()
    mu, sd = train.mean(0), np.where(train.std(0) > 0, train.std(0), 1.0)
    np.testing.assert_allclose((data.test.x.flatten(1).double().numpy() - mu) / sd, flat.test.x.numpy(), atol=1e-5)


# -- preprocessing --------------------------------------------------------------------------------
def test_logit_logdet_is_the_exact_jacobian():
    alpha, levels = 0.05, 256
    pre = images.make_preprocess(levels, logit=True, alpha=alpha, dequantize="center")
    x = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    y, logdet = pre(x, False)
    u = ((x.double() + 0.5) / levels).requires_grad_()
    s = alpha + (1 - 2 * alpha) * u
    yy = torch.log(s / (1 - s))
    (grad,) = torch.autograd.grad(yy.sum(), u)  # the map is elementwise: the Jacobian is diagonal
    np.testing.assert_allclose(y.double(), yy.detach(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logdet.double(), grad.log().flatten(1).sum(1), rtol=1e-5)


def test_dequantisation_conventions_and_no_logit():
    x = torch.randint(0, 17, (50, 1, 8, 8), dtype=torch.uint8)
    pre = images.make_preprocess(17, logit=False)
    torch.manual_seed(0)
    a, logdet = pre(x, False)
    b, _ = pre(x, False)
    u = a + 0.5
    assert torch.all(u >= x / 17) and torch.all(u < (x.float() + 1) / 17) and not torch.equal(a, b)
    assert torch.equal(logdet, torch.zeros(50))
    centre = images.make_preprocess(17, logit=False, dequantize="center")
    c1, _ = centre(x, False)
    c2, _ = centre(x, True)  # training always uses noise
    torch.testing.assert_close(c1 + 0.5, (x.float() + 0.5) / 17)
    assert not torch.equal(c1, c2)


def test_flips_only_in_training_and_only_left_right():
    x = torch.randint(0, 256, (200, 3, 4, 4), dtype=torch.uint8)
    pre = images.make_preprocess(256, logit=False, dequantize="center", flip=True)
    torch.manual_seed(1)
    y, _ = pre(x, True)
    bins = torch.floor((y + 0.5) * 256)
    same = (bins == x.float()).flatten(1).all(1)
    mirrored = (bins == x.flip(-1).float()).flatten(1).all(1)
    assert torch.all(same | mirrored) and 60 < int(mirrored.sum()) < 140
    test, _ = pre(x, False)
    assert torch.equal(torch.floor((test + 0.5) * 256), x.float())


def test_bad_image_options_are_refused():
    with pytest.raises(FlowbenchError, match=r"alpha 0\.5: expected 0 <= alpha < 0\.5"):
        images.make_preprocess(256, alpha=0.5)
    with pytest.raises(FlowbenchError, match=r'load_dataset\("digits"\)\.dequantize: expected one of uniform, center'):
        load_dataset("digits", {"dequantize": "middle"})


# -- the official Glow / i-ResNet MNIST and the augmentations -----------------------------------
def test_mnist_pad_and_channels_give_the_official_3x32x32(tmp_path):
    sets = write_mnist(tmp_path)
    data = images.load_mnist("mnist", tmp_path, n_val=0, pad=2, channels=3, verify=False)
    assert data.info.shape == (3, 32, 32) and data.train.x.shape == (60, 3, 32, 32)
    x = data.train.x.numpy()
    assert np.array_equal(x[:, 0], x[:, 1]) and np.array_equal(x[:, 0], x[:, 2])  # replicated channels
    assert np.array_equal(x[:, 0, 2:30, 2:30], sets["train"][0]) and x[:, :, :2].max() == 0 == x[:, :, :, 30:].max()
    assert "zero-padded to 32x32, replicated to 3 channels" in data.info.notes
    with pytest.raises(FlowbenchError, match=r'load_dataset\("mnist"\)\.channels: expected one of 1, 3'):
        load_dataset("mnist", {"channels": 2})
    with pytest.raises(FlowbenchError, match=r'load_dataset\("mnist"\)\.pad: expected an integer in \[0, 16\], got -1'):
        load_dataset("mnist", {"pad": -1})


@pytest.mark.parametrize("mode,numpy_mode", [("symmetric", "symmetric"), ("reflect", "reflect"), ("zero", "constant")])
def test_random_crop_is_a_window_of_the_padded_image(mode, numpy_mode):
    """torchvision's Pad(4, mode) + RandomCrop(32), per example, training only."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    pre = images.make_preprocess(256, logit=False, dequantize="center", crop=2, crop_padding=mode)
    y, _ = pre(x, True)
    bins = torch.floor((y + 0.5) * 256).numpy()
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode=numpy_mode)
    offsets = []
    for i in range(len(x)):
        hits = [(a, b) for a in range(5) for b in range(5) if np.array_equal(bins[i], padded[i, :, a:a + 8, b:b + 8])]
        assert hits, i
        offsets.append(hits[0])
    assert len(set(offsets)) > 5  # random offsets, not one fixed window
    test, _ = pre(x, False)
    assert torch.equal(torch.floor((test + 0.5) * 256), x.float())


def test_random_shift_moves_content_by_at_most_the_fraction_and_fills_with_the_edge():
    """openai/glow's Keras shift (range 0.1 of the size): bilinear, nearest edge outside, integer output."""
    torch.manual_seed(0)
    impulse = torch.zeros(200, 1, 32, 32, dtype=torch.uint8)
    impulse[:, 0, 16, 16] = 255
    pre = images.make_preprocess(256, logit=False, dequantize="center", shift=0.1)
    y, _ = pre(impulse, True)
    bins = torch.floor((y + 0.5) * 256)
    assert torch.all(bins >= 0) and torch.all(bins <= 255)
    where = bins[:, 0].flatten(1).argmax(1)
    rows, cols = where // 32 - 16, where % 32 - 16
    assert rows.abs().max() <= 4 and cols.abs().max() <= 4  # 0.1 x 32 = 3.2 pixels, plus the interpolation
    assert (rows != 0).float().mean() > 0.5 and (cols != 0).float().mean() > 0.5
    flat = torch.full((5, 3, 32, 32), 77, dtype=torch.uint8)
    flat_out, _ = pre(flat, True)
    assert torch.equal(torch.floor((flat_out + 0.5) * 256), flat.float())  # nearest-edge fill, no zeros
    ramp = torch.arange(32, dtype=torch.uint8).repeat(4, 1, 32, 1)
    shifted = torch.floor((pre(ramp, True)[0] + 0.5) * 256)
    offset = shifted - ramp.float()  # a column ramp shifted by t columns reads floor(c + t), clamped at the edges
    assert offset.abs().max() <= 4 and not torch.equal(shifted, ramp.float())
    assert torch.equal(offset[:, :, :, 8:24], offset[:, :, :1, 8:9].expand(-1, -1, 32, 16))  # one shift per image


def test_bad_augmentation_options_are_refused():
    with pytest.raises(FlowbenchError, match=r'load_dataset\("cifar10"\)\.crop_padding: expected one of symmetric, reflect, zero'):
        load_dataset("cifar10", {"crop": 4, "crop_padding": "wrap"})
    with pytest.raises(FlowbenchError, match=r"crop 32: expected a padding of 0 \(off\) up to 31 pixels"):
        load_dataset("cifar10", {"crop": 32})
    with pytest.raises(FlowbenchError, match=r'load_dataset\("mnist"\)\.shift: expected a number in \[0, 0\.5\), got 0\.5'):
        load_dataset("mnist", {"shift": 0.5})


def test_cifar10_notes_and_extra_say_which_augmentation(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    data = images.load_cifar10("cifar10", tmp_path, n_val=0, crop=4, verify=False)
    assert "random crops after 4-pixel symmetric padding, random horizontal flips in training" in data.info.notes
    assert data.info.extra["crop"] == 4 and data.info.extra["crop_padding"] == "symmetric"
    glow = images.load_cifar10("cifar10", tmp_path, n_val=0, flip=False, shift=0.1, verify=False)
    assert "random shifts up to 0.1 of the size in training" in glow.info.notes and "flips" not in glow.info.notes
