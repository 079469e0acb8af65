"""`flowbench data verify`: found / missing / corrupt per dataset, where it looked, no torch import."""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np

from bench.cli import main
from bench.data.verify import verify_all


def rows(out: str) -> dict[str, list[str]]:
    table = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("found", "missing", "corrupt", "generated", "built-in"):
            table[parts[0]] = parts[1:]
    return table


def test_verify_reports_found_missing_and_corrupt(tmp_path, capsys):
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", np.zeros((20, 43)))
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", np.zeros((20, 5)))
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(mnist / f"{stem}.gz", "wb") as f:
            f.write(b"\x00\x00\x08\x01\x00\x00\x00\x00")
    code = main(["data", "verify", "--data-root", str(tmp_path)])
    out = capsys.readouterr().out
    table = rows(out)
    assert code == 1  # something is corrupt
    assert f"data root: {tmp_path}" in out
    assert table["miniboone"][:2] == ["found", str(tmp_path / "miniboone" / "data.npy")]
    assert table["power"][0] == "corrupt" and "expected an array with 8 columns, found shape (20, 5)" in out
    assert table["gas"] == ["missing", str(tmp_path / "gas" / "ethylene_CO.pickle")]
    assert table["mnist10k"][0] == "corrupt" and "expected md5 9fb629c4189551a2d022fa330f9573f3" in out
    assert table["mnist"][:2] == ["missing", str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz")]
    assert table["cifar10"][:2] == ["missing", str(tmp_path / "cifar-10-batches-py")]
    assert table["moons"][0] == "generated" and table["wine"][0] == "built-in" and table["digits"][0] == "built-in"
    # each loader module's own how-to-get-it text, once per text, naming the datasets it covers
    assert "bsds300, gas, hepmass, power: download data.tar.gz of MAF's data on Zenodo" in out  # miniboone found
    assert "mnist, mnist10k: get the four IDX files" in out and "cifar10: get cifar-10-python.tar.gz" in out


def test_verify_without_a_root_lists_every_dataset_as_missing_or_generated(monkeypatch, capsys):
    monkeypatch.delenv("FLOWBENCH_DATA", raising=False)
    assert main(["data", "verify"]) == 0
    out = capsys.readouterr().out
    assert "data root: (none: pass --data-root DIR or set FLOWBENCH_DATA)" in out
    table = rows(out)
    for name in ("power", "gas", "hepmass", "miniboone", "bsds300", "mnist", "cifar10", "mnist10k"):
        assert table[name][0] == "missing", name
    assert len(verify_all(None)) == len(table)


def test_verify_and_list_do_not_import_torch(tmp_path):
    code = ("import sys; from bench.cli import main; main(['data', 'verify', '--data-root', sys.argv[1]]); "
            "main(['list', 'datasets']); assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "power" in done.stdout and "mnist10k" in done.stdout and "spirals" in done.stdout
