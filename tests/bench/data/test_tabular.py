"""MAF's five UCI sets on small files written here in the exact on-disk formats, the real MINIBOONE head
when present, the scikit-learn sets, the prepared-array cache and every error message."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from bench.data import files, load_dataset, tabular
from bench.data.sklearn_sets import raw
from bench.errors import FlowbenchError
from shared_data import SHARED_DATA

SHARED = SHARED_DATA  # the shared real data (tests/shared_data.py), optional


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWBENCH_CACHE", str(tmp_path / "user-cache"))


def load(name, root, cache=False):
    return tabular.load(name, root, cache=cache)


def arrays(data):
    return [s.x.numpy() for s in (data.train, data.val, data.test)]


# -- POWER -----------------------------------------------------------------------------------------
def write_power(root: Path, n: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(n, 8)) * np.arange(1, 9)
    data[:, 1] = 1e6  # global reactive power and global intensity: MAF deletes them
    data[:, 3] = -1e6
    data[:, 7] = np.arange(n)  # the time column: noise-free, identifies the row
    (root / "power").mkdir(parents=True, exist_ok=True)
    np.save(root / "power" / "data.npy", data)
    return data


def test_power_matches_maf_procedure(tmp_path):
    data = write_power(tmp_path)
    train, val, test = arrays(load("power", tmp_path))
    assert (train.shape, val.shape, test.shape) == ((810, 6), (90, 6), (100, 6))  # 10% rules
    # independent replica: permutation == shuffle of the rows; voltage noise drawn before the gap noise
    rng = np.random.RandomState(42)
    rows = rng.permutation(len(data))
    voltage, gap, sub = 0.01 * rng.rand(len(data), 1), 0.001 * rng.rand(len(data), 1), rng.rand(len(data), 3)
    kept = data[rows][:, [0, 2, 4, 5, 6, 7]] + np.hstack([gap, voltage, sub, np.zeros((len(data), 1))])
    mu, sd = kept[:900].mean(0), kept[:900].std(0)
    expected = (kept - mu) / sd
    np.testing.assert_allclose(np.vstack([train, val, test]), expected, rtol=1e-5, atol=1e-5)
    both = np.vstack([train, val]).astype(np.float64)
    np.testing.assert_allclose(both.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(both.std(0), 1, atol=1e-5)


def test_power_is_deterministic_and_reports_unpublished_sizes(tmp_path):
    write_power(tmp_path)
    a, b = load("power", tmp_path), load("power", tmp_path)
    for x, y in zip(arrays(a), arrays(b)):
        assert np.array_equal(x, y) and x.dtype == np.float32
    assert a.info.shape == (6,) and a.info.kind == "tabular" and a.info.metric == "nll"
    assert "NOT the published sizes 1,659,917/184,435/204,928" in a.info.notes


def test_power_with_wrong_columns_is_corrupt(tmp_path):
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", np.zeros((50, 7)))
    with pytest.raises(FlowbenchError, match=r"power/data\.npy: expected a 2-D float array with 8 columns, "
                                             r"found float64 array of shape \(50, 7\)"):
        load("power", tmp_path)


# -- GAS -------------------------------------------------------------------------------------------
def write_gas(root: Path, n: int = 500) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(n, 8))
    cols = {"Time": np.arange(n, dtype=float), "Meth": rng.random(n), "Eth": rng.random(n)}
    sensors = [base[:, 0], base[:, 1], 3 * base[:, 0] + 1e-3 * rng.normal(size=n), base[:, 2], -base[:, 1],
               base[:, 3], base[:, 4], base[:, 2] + 1e-3 * rng.normal(size=n), base[:, 5], base[:, 6]]
    cols.update({f"S{i}": s for i, s in enumerate(sensors)})
    frame = pd.DataFrame(cols)
    (root / "gas").mkdir(parents=True, exist_ok=True)
    frame.to_pickle(root / "gas" / "ethylene_CO.pickle")
    return frame


def test_gas_drops_columns_and_standardises_by_the_whole_file(tmp_path):
    frame = write_gas(tmp_path)
    train, val, test = arrays(load("gas", tmp_path))
    assert (len(train), len(val), len(test)) == (405, 45, 50)
    # S0 (first of the pair S0/S2) and S3 (pair S3/S7) go; S4 = -S1 is anti-correlated and stays
    kept = frame[["S1", "S2", "S4", "S5", "S6", "S7", "S8", "S9"]].to_numpy()
    expected = (kept - kept.mean(0)) / kept.std(0, ddof=1)  # whole file, before the split (REFERENCES)
    np.testing.assert_allclose(np.vstack([train, val, test]), expected, rtol=1e-5, atol=1e-5)


def test_gas_without_the_dropped_columns_is_corrupt(tmp_path):
    (tmp_path / "gas").mkdir()
    pd.DataFrame({"Time": [1.0], "S0": [2.0]}).to_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    with pytest.raises(FlowbenchError, match=r"ethylene_CO\.pickle: expected a DataFrame with columns Meth, Eth and "
                                             r"Time, found no column Meth, Eth"):
        load("gas", tmp_path)


def test_a_planted_gas_pickle_never_runs(tmp_path, planted_pickle):
    """No checksum of MAF's file is published; its unpickler resolves pandas' and numpy's data
    classes and nothing else, so a planted pickle is one line naming the file, and never runs."""
    (tmp_path / "gas").mkdir()
    marker = planted_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    with pytest.raises(FlowbenchError) as err:
        load("gas", tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'gas' / 'ethylene_CO.pickle'}: expected a pickled pandas "
                                     "DataFrame") and "posix.system" in str(err.value)
    assert "\n" not in str(err.value) and not marker.exists()


# -- HEPMASS ---------------------------------------------------------------------------------------
def hepmass_rows(rng, n: int) -> np.ndarray:
    label = (np.arange(n) % 3 != 0).astype(float)  # two thirds signal
    features = rng.normal(size=(n, 27))
    features[:, :6] = rng.integers(0, 3, size=(n, 6))  # smallest value repeats: dropped
    features[1:12, 6] = 0.5  # a repeated value that is not the smallest: kept
    features[0, 6] = -50.0
    mass = rng.choice([500.0, 750.0, 1000.0, 1250.0, 1500.0], size=n)  # discrete: dropped
    return np.column_stack([label, features, mass])


def write_hepmass(root: Path, n_train: int = 600, n_test: int = 300):
    rng = np.random.default_rng(2)
    header = ["# label"] + [f"f{i}" for i in range(27)] + ["mass"]
    folder = root / "hepmass"
    folder.mkdir(parents=True, exist_ok=True)
    train, test = hepmass_rows(rng, n_train), hepmass_rows(rng, n_test)
    np.savetxt(folder / "1000_train.csv", train, delimiter=",", header=",".join(header), comments="", fmt="%.9g")
    # the quirk: the test file's header has one name more than its rows have fields
    np.savetxt(folder / "1000_test.csv", test, delimiter=",", header=",".join(header + ["extra"]), comments="",
               fmt="%.9g")
    return train, test


def test_hepmass_signal_rows_dropped_features_and_train_statistics(tmp_path):
    train_raw, test_raw = write_hepmass(tmp_path)
    train, val, test = arrays(load("hepmass", tmp_path))
    n_signal = int((train_raw[:, 0] == 1).sum())
    assert (len(train) + len(val), len(val), len(test)) == (n_signal, int(0.1 * n_signal), (test_raw[:, 0] == 1).sum())
    assert train.shape[1] == 21  # f0..f5 and mass dropped, f6 kept
    sig = np.loadtxt(tmp_path / "hepmass" / "1000_train.csv", delimiter=",", skiprows=1)
    sig = sig[sig[:, 0] == 1][:, 1:]
    mu, sd = sig.mean(0), sig.std(0, ddof=1)
    keep = list(range(6, 27))
    np.testing.assert_allclose(np.vstack([train, val]), ((sig - mu) / sd)[:, keep], rtol=1e-5, atol=1e-5)
    test_sig = test_raw[test_raw[:, 0] == 1][:, 1:]
    np.testing.assert_allclose(test, ((test_sig - mu) / sd)[:, keep], rtol=1e-5, atol=1e-5)


def test_hepmass_missing_test_file_names_it(tmp_path):
    write_hepmass(tmp_path)
    (tmp_path / "hepmass" / "1000_test.csv").unlink()
    with pytest.raises(FlowbenchError) as err:
        load("hepmass", tmp_path)
    message = str(err.value)
    assert f"missing {tmp_path / 'hepmass' / '1000_test.csv'}" in message
    assert "zenodo.org/record/1161203" in message and "data.tar.gz" in message


# -- MINIBOONE -------------------------------------------------------------------------------------
def check_miniboone(raw_data: np.ndarray, data) -> None:
    n = len(raw_data)
    n_test = int(0.1 * n)
    n_val = int(0.1 * (n - n_test))
    train, val, test = arrays(data)
    assert (len(train), len(val), len(test)) == (n - n_test - n_val, n_val, n_test)
    stats = raw_data[: n - n_test]
    mu, sd = stats.mean(0), stats.std(0)
    np.testing.assert_allclose(test, (raw_data[-n_test:] - mu) / sd, rtol=1e-4, atol=1e-4)
    both = np.vstack([train, val]).astype(np.float64)
    np.testing.assert_allclose(both.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(both.std(0), 1, atol=1e-4)


def test_miniboone_on_written_file(tmp_path):
    rng = np.random.default_rng(3)
    raw_data = rng.normal(size=(400, 43)) * 5 + 2
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", raw_data)
    check_miniboone(raw_data, load("miniboone", tmp_path))


def test_miniboone_on_the_real_head(tmp_path):
    source = SHARED / "miniboone_head" / "data.npy"
    if not source.is_file():
        pytest.skip(f"real MINIBOONE head not found at {source} (the shared data folder is optional)")
    (tmp_path / "miniboone").mkdir()
    (tmp_path / "miniboone" / "data.npy").symlink_to(source.resolve())
    data = load("miniboone", tmp_path)
    assert [len(s) for s in (data.train, data.val, data.test)] == [1234, 137, 152]  # README's figures
    check_miniboone(np.load(source), data)


# -- BSDS300 ---------------------------------------------------------------------------------------
def test_bsds300_reads_the_three_datasets(tmp_path):
    rng = np.random.default_rng(4)
    parts = {"train": rng.normal(size=(100, 63)), "validation": rng.normal(size=(20, 63)), "test": rng.normal(size=(30, 63))}
    (tmp_path / "BSDS300").mkdir()
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as f:
        for k, v in parts.items():
            f.create_dataset(k, data=v)
    train, val, test = arrays(load("bsds300", tmp_path))
    for got, want in zip((train, val, test), parts.values()):
        np.testing.assert_allclose(got, want.astype(np.float32))  # no normalisation


def test_bsds300_without_validation_is_corrupt(tmp_path):
    (tmp_path / "BSDS300").mkdir()
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as f:
        f.create_dataset("train", data=np.zeros((5, 63)))
        f.create_dataset("test", data=np.zeros((5, 63)))
    with pytest.raises(FlowbenchError, match=r"BSDS300\.hdf5: expected HDF5 datasets train, validation and test, "
                                             r"found no dataset 'validation'"):
        load("bsds300", tmp_path)


# -- errors and the cache ----------------------------------------------------------------------------
def test_no_data_root_says_how_to_get_the_files():
    with pytest.raises(FlowbenchError, match=r'dataset "power" needs its data files but no data root is set: '
                                             r"expected DATA_ROOT/power/data\.npy; pass --data-root DIR"):
        tabular.load("power", None)


def test_missing_file_names_the_exact_path_and_the_archive(tmp_path):
    with pytest.raises(FlowbenchError) as err:
        load("miniboone", tmp_path)
    assert str(err.value).startswith(f'dataset "miniboone": missing {tmp_path / "miniboone" / "data.npy"}; '
                                     "to get it: download data.tar.gz of MAF's data on Zenodo")


def test_cache_is_used_on_the_second_load_and_keyed_by_the_file(tmp_path, monkeypatch):
    write_power(tmp_path)
    first = arrays(load("power", tmp_path, cache=True))
    entries = list((tmp_path / "power" / files.CACHE_FOLDER).iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("power-v1-")

    def fail(*_):
        raise AssertionError("prepared again despite the cache")

    monkeypatch.setitem(tabular.PREPARE, "power", fail)
    for x, y in zip(first, arrays(load("power", tmp_path, cache=True))):
        assert np.array_equal(x, y)
    write_power(tmp_path, seed=9)  # a changed source file is a new key: prepared again
    with pytest.raises(AssertionError, match="prepared again"):
        load("power", tmp_path, cache=True)


def test_cache_falls_back_to_the_user_cache_when_the_data_is_read_only(tmp_path, monkeypatch):
    write_power(tmp_path)
    real = files._writable
    monkeypatch.setattr(files, "_writable", lambda folder: False if tmp_path / "power" in folder.parents or
                        folder == tmp_path / "power" / files.CACHE_FOLDER else real(folder))
    load("power", tmp_path, cache=True)
    assert not (tmp_path / "power" / files.CACHE_FOLDER).exists() or \
        not any((tmp_path / "power" / files.CACHE_FOLDER).iterdir())
    assert len(list((tmp_path / "user-cache" / "prepared").glob("power-v1-*"))) == 1


def test_registry_options_reach_the_loader(tmp_path):
    write_power(tmp_path)
    data = load_dataset("power", {"cache": False}, root=tmp_path)
    assert isinstance(data.train.x, torch.Tensor) and data.train.x.shape == (810, 6)


# -- scikit-learn sets ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,dim,classes", [("wine", 13, 3), ("breast_cancer", 30, 2), ("iris", 4, 3),
                                              ("digits64", 64, 10)])
def test_sklearn_sets_split_and_standardise_by_train(name, dim, classes):
    data = load_dataset(name, {"seed": 1})
    x, y = raw(name)
    n = len(x)
    assert (len(data.val), len(data.test)) == (round(0.1 * n), round(0.2 * n))
    assert len(data.train) + len(data.val) + len(data.test) == n
    assert data.info.shape == (dim,) and data.info.num_classes == classes and data.train.y.dtype == torch.int64
    train = data.train.x.double().numpy()
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)
    sd = train.std(0)
    np.testing.assert_allclose(sd[sd > 1e-8], 1, atol=1e-4)  # digits64 has pixels constant in train
    again = load_dataset(name, {"seed": 1, "val_fraction": 0.1})
    assert torch.equal(data.test.x, again.test.x)
    other = load_dataset(name, {"seed": 2})
    assert not torch.equal(data.test.y, other.test.y) or not torch.equal(data.test.x, other.test.x)
