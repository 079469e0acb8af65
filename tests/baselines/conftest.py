"""Helpers shared by the flow-family tests: brute-force Jacobians, perturbed models, short runs."""

from __future__ import annotations

import math
import types

import pytest
import torch
from torch.autograd.functional import jacobian

from bench.data.base import DataInfo


def info(shape: tuple[int, ...]) -> DataInfo:
    """DataInfo of random test data with this shape (image kind for (C, H, W))."""
    return DataInfo("random", "image" if len(shape) == 3 else "tabular", tuple(shape),
                    levels=256 if len(shape) == 3 else None)


def brute_force_logdet(model, x: torch.Tensor) -> torch.Tensor:
    """log|det| of the full autograd Jacobian of ``model.to_latent`` at each example of x (float64)."""
    out = []
    for xi in x:
        flat = xi.reshape(-1)
        jac = jacobian(lambda a: model.to_latent(a.view(1, *xi.shape))[0].reshape(-1), flat)
        assert jac.shape == (flat.numel(), flat.numel())
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Move every parameter off its (often zero) initial value, so every layer acts non-trivially."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def prepared(builder, shape, seed: int = 0, **hparams):
    """A float64 model after one training-mode pass on a random batch (ActNorm's data-dependent
    initialisation, batch-norm running statistics), with perturbed parameters, in eval mode."""
    torch.manual_seed(seed)
    model = builder(info(shape), **hparams).double()
    x = torch.rand(64, *shape, dtype=torch.float64)
    model.train()
    with torch.no_grad():
        model.log_prob(x)
    perturb(model, seed=seed)
    model.train()
    with torch.no_grad():
        model.log_prob(x)  # running statistics see the perturbed model too
    model.eval()
    return model


def assert_change_of_variables(model, shape) -> None:
    """log_prob(x) = log N(z) + log|det J| with J the full autograd Jacobian (float64, to 1e-9)."""
    x = torch.rand(3, *shape, dtype=torch.float64)
    z, log_det = model.to_latent(x)
    assert z.shape == (3, math.prod(shape))
    brute = brute_force_logdet(model, x)
    assert brute.abs().max() > 1e-3  # the perturbed model is not volume preserving
    torch.testing.assert_close(log_det, brute, rtol=1e-9, atol=1e-9)
    expected = -0.5 * (z.pow(2).sum(1) + z.shape[1] * math.log(2 * math.pi)) + brute
    torch.testing.assert_close(model.log_prob(x), expected, rtol=1e-9, atol=1e-9)


def assert_inverse_and_samples(model, shape) -> None:
    """from_latent(to_latent(x)) = x; samples have the data's shape and are finite."""
    x = torch.rand(8, *shape, dtype=torch.float64)
    z, _ = model.to_latent(x)
    torch.testing.assert_close(model.from_latent(z), x, rtol=1e-10, atol=1e-10)
    samples = model.sample(16)
    assert samples.shape == (16, *shape) and torch.isfinite(samples).all()


def assert_digits_bits_per_dim_below_uniform(levels: int, result: dict) -> None:
    """A completed short run on digits has finite test bits/dim below the uniform model's log2(levels)."""
    assert result["status"] == "completed", result.get("error")
    bpd = result["test"]["bpd"]
    assert math.isfinite(bpd) and bpd < math.log2(levels), (bpd, levels)


@pytest.fixture
def flowcheck():
    return types.SimpleNamespace(info=info, brute_force_logdet=brute_force_logdet, perturb=perturb, prepared=prepared,
                                 change_of_variables=assert_change_of_variables,
                                 inverse_and_samples=assert_inverse_and_samples,
                                 digits_below_uniform=assert_digits_bits_per_dim_below_uniform)


@pytest.fixture
def short_run(tmp_path):
    """short_run(model, hparams, steps=300) -> (test NLL of the untrained model, result of the run):
    a real harness run (RunSpec, RunRecord, run_one) on 8gaussians into a temporary results folder."""
    from baselines.registry import get_builder
    from bench.data import load_dataset
    from bench.fields import TRAIN_DEFAULTS
    from bench.spec import RunSpec
    from bench.store import RunRecord
    from bench.train import evaluate, run_one

    def run(model: str, hparams: dict, steps: int = 300, dataset: str = "8gaussians", batch_size: int = 128,
            lr: float = 5e-3, data_config: dict | None = None, metric: str = "nll"):
        data_config = data_config if data_config is not None else {"n_train": 4000, "n_val": 500, "n_test": 2000}
        train = {**TRAIN_DEFAULTS, "max_steps": steps, "batch_size": batch_size, "lr": lr, "eval_every": 100,
                 "checkpoint_every": 1000, "eval_batch_size": 1000}
        spec = RunSpec("test-discrete", model, dataset, 0, dict(hparams), dict(data_config), train, metric)
        data = load_dataset(dataset, data_config)
        torch.manual_seed(0)
        untrained = get_builder(model)(data.info, **hparams)
        before = evaluate(untrained, data, data.test, torch.device("cpu"), 1000)[metric]
        result = run_one(spec, RunRecord(tmp_path / "results", spec.suite, spec.run_id), device="cpu", progress=False)
        return before, result

    return run


@pytest.fixture
def digits_run(short_run):
    """digits_run(model, hparams) -> (levels, result) of a short harness run on the digits images
    (bits/dim); skipped while the images datasets are not registered."""
    from bench.data import REGISTRY, load_dataset

    def run(model: str, hparams: dict, steps: int = 40):
        if "digits" not in REGISTRY:
            pytest.skip("the digits image dataset is not registered (bench/data/images.py)")
        levels = load_dataset("digits", {}).info.levels
        _, result = short_run(model, hparams, steps=steps, dataset="digits", batch_size=128, lr=2e-3,
                              data_config={}, metric="bpd")
        return levels, result

    return run
