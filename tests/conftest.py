"""Shared test helpers: temporary suites and results folders, the shared real data."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest



@pytest.fixture
def write_suite(tmp_path):
    """write_suite(text, name="t") -> path of a suite file with that YAML (dedented)."""

    def write(text: str, name: str = "t") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def stop_at_step(monkeypatch):
    """stop_at_step(n, stop=request_stop) -> calls ``stop()`` once the training loop is in its n-th step
    (a SLURM signal, a scancel: the run checkpoints after that step and returns preempted);
    stop_at_step(None) takes the hook off again."""
    from bench.train import Trainer, request_stop

    original = Trainer._step

    def arm(step: int | None, stop=request_stop) -> None:
        if step is None:
            monkeypatch.setattr(Trainer, "_step", original)
            return

        def stopping_step(self, *args):
            value = original(self, *args)
            if self.state.step + 1 == step:
                stop()
            return value

        monkeypatch.setattr(Trainer, "_step", stopping_step)

    return arm


@pytest.fixture
def results(tmp_path) -> Path:
    return tmp_path / "results"


class _Planted:
    """An object whose unpickling runs a shell command (``touch MARKER``): what a hostile file holds."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def planted_pickle(tmp_path):
    """planted_pickle(path, torch_zip=False) -> marker: write at ``path`` a pickle (or a torch.save file)
    that would create ``marker`` if it were ever unpickled; the test asserts the marker never appears."""
    import pickle

    def plant(path: Path, torch_zip: bool = False) -> Path:
        marker = tmp_path / f"ran-{Path(path).name}"
        payload = {"model": _Planted(marker), "run_id": "x"}
        if torch_zip:
            import torch

            torch.save(payload, path)
        else:
            Path(path).write_bytes(pickle.dumps(payload))
        return marker

    return plant
