"""RNODE's multi-scale MNIST model, ours beside the official code: seconds, NFE and memory per training step.

The official setting (cfinlay/ffjord-rnode: train.py's defaults with example-scripts/mnist.sh's
flags; its ``create_model``, ``create_regularization_fns`` and ``set_cnf_options`` are rebuilt
here from those arguments, since train.py parses the command line and needs torchvision, a GPU
and its data loaders at import): 1x28x28 inputs in [0, 1], lib/odenvp.py's ODENVP (3 scales of
2 + 2 CNF blocks, 3x3 concat-conv ODE-nets 64-64-64, softplus, last layer's weights zeroed,
one Gaussian Hutchinson probe, its logit layer with alpha 1e-5), T = 1 fixed, kinetic energy and
Jacobian-norm weights 0.01 on the bits/dim loss, adjoint backpropagation (lib/layers/cnf.py
always imports ``odeint_adjoint``). Solver: train.py's default, dopri5 atol = rtol = 1e-5 with
``first_step`` 0.166667 (``--solver dopri5``), or mnist.sh's rk4 with step 0.25 (``--solver rk4``,
the MNIST suite's training solver). Ours: ``baselines.rnode.build`` with the MNIST suite's RNODE
options and the same solver, adjoint on. Adam lr 1e-3 on both (no warm-up, no clipping beyond
train.py's ``clip_grad_norm_`` with max norm inf). Both see the same batches (8-bit images from a
fixed generator, or an MNIST IDX file, dequantised with the same noise) and train interleaved step
by step, the order alternating, so machine load hits both alike; the first ``--warmup`` steps are
left out of the figures. Where the parameter layouts map one to one (they do: every CNF block, in
flow order, has the same conv shapes with the time channel first), the official model starts from
our weights, and the initial loss on one batch is compared with the same fixed Gaussian probes,
once at the initial weights (last layers zero, so the Jacobian term is 0 on both sides) and once
on copies whose last layers are perturbed (then the Jacobian term differs by estimator: ours
``|J e|^2``, the official ``|e^T J|^2``).

    python benchmarks/bench_rnode_official.py --official DIR [--solver dopri5|rk4] [--steps 3]
        [--warmup 1] [--batch 16] [--mnist FILE] [--nats-loss] [--no-check] [--no-memory] [--threads 1]

``--official DIR`` is a folder holding the official code (``lib/`` and ``train_misc.py``); its
model is imported from there through ``sys.path`` and nothing of it is copied here. Without it,
ours is measured alone. The official code runs under torchdiffeq 0.2.5 and torch 2.x with one
patch, in DIR only: lib/layers/cnf.py's training ``odeint`` call passes
``adjoint_atol=self.atol, adjoint_rtol=self.rtol``. Unpatched, its per-state tolerance lists
(``[atol, atol, 1e20, 1e20]`` for z, log p and the two regularisers) become the adjoint's
tolerances by default, and torchdiffeq >= 0.1 asserts that a tolerance list is as long as the
adjoint's longer state tuple ("If using tupled rtol it must have the same length as the tuple
y0"), so every dopri5 backward fails; rk4 passes scalars and needs no patch. The scalars are what
ours passes to its adjoint. Files of the official tree the index does not hold were written as
minimal stand-ins: ``lib/__init__.py``, ``lib/layers/__init__.py`` (star-imports elemwise,
container, cnf, odefunc, squeeze and ``diffeq_layers``), ``lib/layers/wrappers/__init__.py``,
and empty ``lib/layers/diffeq_layers/container.py`` / ``wrappers.py`` (imported by
``diffeq_layers/__init__.py``, nothing of them used by this model).

Losses: the official step minimises bits/dim + 0.01 K + 0.01 B; ours ``training_loss``, mean NLL
/ D ln 2 + 0.01 K + 0.01 B for images, the same up to a constant (the logit layer's log-determinant
and 8 bits). ``--nats-loss`` multiplies ours by D ln 2 (543.4): the scale the harness trained images
on before, which scales the adjoint state and so the adaptive backward solve's error control.

Peak memory: each model again in a fresh subprocess, one training step, the growth of the peak
resident set over what the built model and batch hold (the peak reset by Linux ``clear_refs``
after building: the lifetime maximum would include the parent's size, which a child inherits
across ``exec``); on CUDA the allocator's peak, ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch

from baselines.rnode import build
from bench.data.base import DataInfo
from bench.errors import FlowbenchError

__all__ = ["SHAPE", "ALPHA", "official_args", "official_model", "official_loss", "build_ours", "block_pairs",
           "copy_weights", "fixed_probes", "logit", "mnist_like", "step_ours", "step_official", "main"]

SHAPE = (1, 28, 28)
ALPHA = 1e-5  # example-scripts/mnist.sh's --alpha (train.py's default is 1e-6)
WEIGHT = 0.01  # mnist.sh's --kinetic-energy and --jacobian-norm2
D_LN2 = math.prod(SHAPE) * math.log(2)


# -- data -------------------------------------------------------------------------------------------
def mnist_like(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` 8-bit 28x28 stroke images (uint8 [n, 1, 28, 28]): three thick random segments each on
    black, softened at the edges; MNIST's mostly-zero statistics without the data files."""
    img = torch.zeros(n, 28, 28)
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    for _ in range(3):
        a = 4 + 20 * torch.rand(n, 2, generator=gen)
        d = 4 + 20 * torch.rand(n, 2, generator=gen) - a
        ay, ax, dy, dx = (v[:, None, None] for v in (a[:, 0], a[:, 1], d[:, 0], d[:, 1]))
        # position along the segment of each pixel's nearest point, then the distance to it
        s = (((ys - ay) * dy + (xs - ax) * dx) / (dy * dy + dx * dx).clamp_min(1e-6)).clamp(0, 1)
        img = torch.maximum(img, (2.0 - torch.hypot(ys - ay - s * dy, xs - ax - s * dx)).clamp(0, 1))
    return (img * 255).round().to(torch.uint8)[:, None]


def read_mnist(path: str) -> torch.Tensor:
    """The images of an MNIST IDX file (``.gz`` or raw) as uint8 [n, 1, 28, 28]."""
    from bench.data.images import read_idx

    images = read_idx(Path(path))
    if images.ndim != 3 or images.shape[1:] != SHAPE[1:]:
        raise FlowbenchError(f"--mnist {path}: holds an array of shape {images.shape}, not 28x28 images; "
                             "pass an MNIST images file (e.g. t10k-images-idx3-ubyte.gz)")
    return torch.from_numpy(images.copy()).view(-1, *SHAPE)


def dequantize(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """train.py's ``add_noise`` (8 bits): (x + U(0, 1)) / 256 in [0, 1)."""
    return (x.to(torch.float32) + torch.rand(x.shape, generator=gen)) / 256


def logit(u: torch.Tensor, alpha: float = ALPHA) -> tuple[torch.Tensor, torch.Tensor]:
    """The harness's image preprocessing on a dequantised batch: logit(alpha + (1 - 2 alpha) u) and
    its log-determinant per example (``bench.data.images.make_preprocess``)."""
    s = alpha + (1 - 2 * alpha) * u
    return torch.log(s) - torch.log1p(-s), (math.log1p(-2 * alpha) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)


# -- the official model -----------------------------------------------------------------------------
def official_args(solver: str, batch: int) -> SimpleNamespace:
    """train.py's parsed arguments for ``--data mnist`` with mnist.sh's flags, ``solver`` either
    train.py's default (dopri5) or mnist.sh's (rk4)."""
    return SimpleNamespace(
        data="mnist", dims="64,64,64", strides="1,1,1,1", num_blocks=2, layer_type="concat",
        divergence_fn="approximate", nonlinearity="softplus", solver=solver, atol=1e-5, rtol=1e-5, step_size=0.25,
        first_step=0.166667, test_solver="dopri5", test_atol=1e-5, test_rtol=1e-5, test_step_size=None,
        test_first_step=None, alpha=ALPHA, time_length=1.0, train_T=False, batch_size=batch, lr=1e-3,
        div_samples=1, squeeze_first=False, zero_last=True, kinetic_energy=WEIGHT, jacobian_norm2=WEIGHT,
        total_deriv=None, directional_penalty=None, max_grad_norm=math.inf)


def official_model(path: str, solver: str, batch: int
                   ) -> tuple[torch.nn.Module, tuple[float, ...], Callable[[torch.nn.Module], float], ModuleType]:
    """train.py's model (``create_model`` + ``create_regularization_fns`` + ``set_cnf_options``), its
    regulariser weights, its NFE counter and the imported ``lib.layers.odefunc`` module."""
    sys.path.insert(0, str(Path(path).resolve()))
    # its solver options carry step_size and first_step to every solver (torchdiffeq warns), and
    # its dynamics call requires_grad_ on non-leaf tensors
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(lib\.|torchdiffeq|train_misc)")
    import lib.layers.odefunc as odefunc  # noqa: E402  (from the official folder)
    import lib.odenvp as odenvp  # noqa: E402
    import train_misc  # noqa: E402

    args = official_args(solver, batch)
    regularization_fns, coeffs = train_misc.create_regularization_fns(args)
    model = odenvp.ODENVP(
        (args.batch_size, *SHAPE), n_blocks=args.num_blocks, intermediate_dims=tuple(map(int, args.dims.split(","))),
        div_samples=args.div_samples, strides=tuple(map(int, args.strides.split(","))),
        squeeze_first=args.squeeze_first, nonlinearity=args.nonlinearity, layer_type=args.layer_type,
        zero_last=args.zero_last, alpha=args.alpha,
        cnf_kwargs={"T": args.time_length, "train_T": args.train_T, "regularization_fns": regularization_fns})
    train_misc.set_cnf_options(args, model)
    return model, coeffs, train_misc.count_nfe, odefunc


def official_loss(model: torch.nn.Module, u: torch.Tensor, coeffs: tuple[float, ...]
                  ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """train.py's training loss on a dequantised batch: (bits/dim + sum of weight x mean regulariser,
    bits/dim, the regularisers' batch means)."""
    z, delta_logp, reg_states = model(u, torch.zeros(u.shape[0], 1, dtype=u.dtype, device=u.device))
    regs = [r.mean() for r in reg_states]
    logpz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).view(z.shape[0], -1).sum(1, keepdim=True)
    bpd = -((logpz - delta_logp).sum() / u.nelement() - math.log(256)) / math.log(2)
    return bpd + sum(r * c for r, c in zip(regs, coeffs) if c != 0), bpd, regs


# -- ours -------------------------------------------------------------------------------------------
def build_ours(solver: str) -> torch.nn.Module:
    """Ours with the MNIST suite's RNODE options (800,636 trainable parameters, as the official) and
    the official training solver."""
    return build(DataInfo("mnist", "image", SHAPE, levels=256), n_blocks=2, hidden=[64, 64, 64],
                 layer_type="concat", activation="softplus", noise="gaussian", end_time=1.0, train_end_time=False,
                 zero_last=True, solver=solver, atol=1e-5, rtol=1e-5, step_size=0.25,
                 first_step=0.166667 if solver == "dopri5" else None, kinetic=WEIGHT, jacobian=WEIGHT,
                 eval_solver="dopri5", eval_atol=1e-5, eval_rtol=1e-5, adjoint=True)


def block_pairs(ours: torch.nn.Module, official: torch.nn.Module) -> list[tuple[Any, Any]] | str:
    """Our CNF blocks paired with the official ones in flow order, or why they do not map one to one."""
    from baselines.cnf import CNF

    mine = [m for m in ours.modules() if isinstance(m, CNF)]
    theirs = [m for m in official.modules() if type(m).__name__ == "CNF"]
    if len(mine) != len(theirs):
        return f"{len(mine)} CNF blocks (ours) vs {len(theirs)} (official)"
    for i, (a, b) in enumerate(zip(mine, theirs)):
        ours_shapes = [tuple(layer.weight.shape) for layer in a.func.net.layers]
        their_shapes = [tuple(layer._layer.weight.shape) for layer in _diffeq(b).layers]
        if ours_shapes != their_shapes:
            return f"block {i}: conv weights {ours_shapes} (ours) vs {their_shapes} (official)"
    return list(zip(mine, theirs))


def _diffeq(block: Any) -> Any:
    """The official block's ODEnet (under the regularising wrapper when there is one)."""
    return getattr(block.odefunc, "odefunc", block.odefunc).diffeq


def copy_weights(pairs: list[tuple[Any, Any]]) -> None:
    """Our blocks' weights into the official ones: each concat conv (time channel first in both) and sqrt(T)."""
    with torch.no_grad():
        for a, b in pairs:
            for mine, theirs in zip(a.func.net.layers, _diffeq(b).layers):
                theirs._layer.weight.copy_(mine.weight)
                theirs._layer.bias.copy_(mine.bias)
            b.sqrt_end_time.copy_(a.func.sqrt_end_time)


@contextlib.contextmanager
def fixed_probes(odefunc_module: ModuleType, seed: int = 3) -> Iterator[None]:
    """Both models draw the same Gaussian probe for a block of a given shape (ours through
    ``baselines.cnf.sample_probe``, the official through ``sample_gaussian_like``), so their
    Hutchinson estimates of the same flow agree; restored on exit."""
    import baselines.cnf as cnf

    cache: dict[tuple[int, ...], torch.Tensor] = {}

    def probe(like: torch.Tensor, noise: str = "gaussian") -> torch.Tensor:
        key = tuple(like.shape)
        if key not in cache:
            cache[key] = torch.randn(key, generator=torch.Generator().manual_seed(seed + len(cache)))
        return cache[key].to(like)

    saved = cnf.sample_probe, odefunc_module.sample_gaussian_like
    cnf.sample_probe, odefunc_module.sample_gaussian_like = probe, probe
    try:
        yield
    finally:
        cnf.sample_probe, odefunc_module.sample_gaussian_like = saved


def compare_losses(ours: torch.nn.Module, official: torch.nn.Module, coeffs: tuple[float, ...],
                   odefunc_module: ModuleType, u: torch.Tensor) -> dict[str, float]:
    """Both training losses on batch ``u`` (train mode, no gradient, the same probes), ours put on
    the official scale from its parts: (mean NLL - mean logit log-det) / (D ln 2) + 8 bits, plus the
    weighted regularisers."""
    with torch.no_grad(), fixed_probes(odefunc_module):
        y, logdet = logit(u)
        _, stats = ours.training_loss(y)
        theirs, bpd, regs = official_loss(official, u, coeffs)
    ours.read_nfe()
    mine_bpd = (stats["nll"] - float(logdet.mean())) / D_LN2 + 8
    mine = mine_bpd + WEIGHT * (stats["kinetic"] + stats["jacobian"])
    return {"ours": mine, "official": float(theirs), "ours_bpd": mine_bpd, "official_bpd": float(bpd),
            "ours_K": stats["kinetic"], "official_K": float(regs[0]), "ours_B": stats["jacobian"],
            "official_B": float(regs[1])}


def print_comparison(title: str, c: dict[str, float]) -> None:
    gap = abs(c["ours"] - c["official"])
    print(f"{title}: loss ours {c['ours']:.6f}, official {c['official']:.6f} (gap {gap:.1e}); "
          f"bits/dim gap {abs(c['ours_bpd'] - c['official_bpd']):.1e}; kinetic {c['ours_K']:.4e} vs "
          f"{c['official_K']:.4e}; Jacobian {c['ours_B']:.4e} vs {c['official_B']:.4e}")


# -- one step of each -------------------------------------------------------------------------------
def step_ours(model: torch.nn.Module, opt: torch.optim.Optimizer, u: torch.Tensor,
              nats_loss: bool = False) -> tuple[float, int, int]:
    """One harness-style step of ours (logit preprocessing, ``training_loss``, adjoint backward, Adam);
    ``nats_loss`` multiplies the loss by the model's ``loss_scale`` (D ln 2: mean NLL in nats)."""
    y, _ = logit(u)
    loss, _ = model.training_loss(y)
    if nats_loss:
        loss = loss * model.loss_scale
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    forward, backward = model.read_nfe()
    return float(loss.detach()), int(forward), int(backward)


def step_official(model: torch.nn.Module, opt: torch.optim.Optimizer, u: torch.Tensor, coeffs: tuple[float, ...],
                  count_nfe: Callable[[torch.nn.Module], float]) -> tuple[float, int, int]:
    """One train.py step (bits/dim + weighted regularisers, adjoint backward, clip_grad_norm_ with
    max norm inf as train.py's default, Adam; no learning-rate warm-up here)."""
    opt.zero_grad()
    loss, _, _ = official_loss(model, u, coeffs)
    forward = count_nfe(model)
    loss.backward()
    backward = count_nfe(model) - forward
    torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
    opt.step()
    return float(loss.detach()), int(forward), int(backward)


def batches(args: argparse.Namespace, n: int) -> torch.Tensor:
    """``n`` batches' worth of 8-bit images from the fixed generator (or the MNIST file)."""
    gen = torch.Generator().manual_seed(1)
    if args.mnist:
        images = read_mnist(args.mnist)
        if len(images) < n * args.batch:
            raise FlowbenchError(f"--mnist {args.mnist}: {len(images)} images, fewer than the {n * args.batch} "
                                 "the steps need; lower --steps or --batch")
        return images[torch.randperm(len(images), generator=gen)[: n * args.batch]]
    return mnist_like(n * args.batch, gen)


def _status_mb(field: str) -> float:
    """A memory field of ``/proc/self/status`` (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise FlowbenchError(f"/proc/self/status has no {field} line: the CPU peak memory needs Linux; use --no-memory")


def _reset_peak_rss() -> float:
    """Set the peak resident set (VmHWM) back to the current one (Linux ``clear_refs`` 5); returns it (MB)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as err:
        raise FlowbenchError(f"cannot reset the peak resident set ({err}); use --no-memory") from None
    return _status_mb("VmRSS")


def measure_memory(args: argparse.Namespace) -> dict[str, float]:
    """In this fresh process: one training step of ``args.memory_of``; the peak memory it adds (MB)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    u = dequantize(batches(args, 1), torch.Generator().manual_seed(2)).to(device)
    if args.memory_of == "official":
        model, coeffs, count_nfe, _ = official_model(args.official, args.solver, args.batch)
    else:
        model = build_ours(args.solver)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _reset_peak_rss()
    if args.memory_of == "official":
        step_official(model, opt, u, coeffs, count_nfe)
    else:
        step_ours(model, opt, u, args.nats_loss)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _status_mb("VmHWM") - base
    return {"peak_mb": peak}


def memory_in_subprocess(which: str, args: argparse.Namespace) -> float:
    """Peak MB of one step of ``which`` in a fresh interpreter (this script with ``--memory-of``)."""
    here = Path(__file__).resolve()
    cmd = [sys.executable, str(here), "--memory-of", which, "--batch", str(args.batch), "--device", args.device,
           "--threads", str(args.threads), "--solver", args.solver]
    if args.official:
        cmd += ["--official", args.official]
    if args.mnist:
        cmd += ["--mnist", args.mnist]
    if args.nats_loss:
        cmd.append("--nats-loss")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise FlowbenchError(f"the peak-memory measurement of {which} failed (rerun with --no-memory to skip it):\n"
                             f"{proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])


def check_args(args: argparse.Namespace) -> None:
    """One clear message per bad option."""
    if args.official and not ((Path(args.official) / "lib" / "odenvp.py").is_file()
                              and (Path(args.official) / "train_misc.py").is_file()):
        raise FlowbenchError(f"--official {args.official}: no lib/odenvp.py and train_misc.py there; pass a folder "
                             "holding cfinlay/ffjord-rnode's code")
    if args.mnist and not Path(args.mnist).is_file():
        raise FlowbenchError(f"--mnist {args.mnist}: no such file; pass an MNIST IDX images file or leave it out")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise FlowbenchError("--device cuda: torch sees no CUDA device here; use --device cpu")
    for name in ("steps", "batch", "threads"):
        if getattr(args, name) < 1:
            raise FlowbenchError(f"--{name} {getattr(args, name)}: must be at least 1")
    if args.warmup < 0:
        raise FlowbenchError(f"--warmup {args.warmup}: must be 0 or more")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", metavar="DIR", help="folder with cfinlay/ffjord-rnode's lib/ and train_misc.py")
    ap.add_argument("--solver", choices=["dopri5", "rk4"], default="dopri5",
                    help="dopri5 1e-5, first step 0.166667 (train.py's default) or rk4 step 0.25 (mnist.sh)")
    ap.add_argument("--steps", type=int, default=3, help="measured steps")
    ap.add_argument("--warmup", type=int, default=1, help="steps before them, left out of the figures")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--mnist", metavar="FILE", help="MNIST IDX images (e.g. t10k-images-idx3-ubyte.gz)")
    ap.add_argument("--nats-loss", action="store_true",
                    help="train ours on mean NLL in nats (its loss times D ln 2; the official trains on bits/dim)")
    ap.add_argument("--no-check", action="store_true", help="skip the initial-loss comparison")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-of", choices=["ours", "official"], help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    """The comparison (or, with ``--memory-of``, one memory measurement)."""
    check_args(args)
    torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(measure_memory(args)))
        return
    device = torch.device(args.device)

    torch.manual_seed(0)
    ours = build_ours(args.solver).to(device)
    models: dict[str, torch.nn.Module] = {"flowbench": ours}
    images = batches(args, args.warmup + args.steps + 1)
    noise = torch.Generator().manual_seed(2)
    count_nfe, coeffs = None, ()
    u = dequantize(images[: args.batch], noise).to(device)  # the check's batch (drawn either way: same noise after)
    print(f"parameters: flowbench {sum(p.numel() for p in ours.parameters() if p.requires_grad):,}", end="")
    if args.official:
        official, coeffs, count_nfe, odefunc_module = official_model(args.official, args.solver, args.batch)
        official = official.to(device)
        models["official"] = official
        print(f", official {sum(p.numel() for p in official.parameters() if p.requires_grad):,}")
        pairs = block_pairs(ours, official)
        if isinstance(pairs, str):
            print(f"layouts differ ({pairs}): each model keeps its own seeded initialisation")
        else:
            copy_weights(pairs)
            print(f"our weights copied into the official model ({len(pairs)} CNF blocks, conv shapes equal)")
            if not args.no_check:
                print_comparison(f"initial loss, {args.batch} images, same probes",
                                 compare_losses(ours, official, coeffs, odefunc_module, u))
                # then non-zero last layers (a non-trivial flow and Jacobian), restored afterwards
                lasts = [a.func.net.layers[-1].weight for a, _ in pairs]
                saved = [w.detach().clone() for w in lasts]
                gen = torch.Generator().manual_seed(4)
                with torch.no_grad():
                    for w in lasts:
                        w.copy_(1e-3 * torch.randn(w.shape, generator=gen))
                copy_weights(pairs)
                print_comparison("  last layers' weights drawn from N(0, 1e-3^2)",
                                 compare_losses(ours, official, coeffs, odefunc_module, u))
                with torch.no_grad():
                    for w, w0 in zip(lasts, saved):
                        w.copy_(w0)
                copy_weights(pairs)
            count_nfe(official)
    else:
        print()
    images = images[args.batch:]

    optimizers = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    rows: dict[str, list[tuple[float, float, int, int, float]]] = {k: [] for k in models}
    for step in range(args.warmup + args.steps):
        u = dequantize(images[step * args.batch:(step + 1) * args.batch], noise).to(device)
        order = list(models) if step % 2 == 0 else list(reversed(models))
        for name in order:
            model, opt = models[name], optimizers[name]
            if device.type == "cuda":
                torch.cuda.synchronize()
            cpu, wall = time.process_time(), time.perf_counter()
            if name == "official":
                loss, forward, backward = step_official(model, opt, u, coeffs, count_nfe)
            else:
                loss, forward, backward = step_ours(model, opt, u, args.nats_loss)
            if device.type == "cuda":
                torch.cuda.synchronize()
            row = (time.process_time() - cpu, time.perf_counter() - wall, forward, backward, loss)
            kept = step >= args.warmup
            if kept:
                rows[name].append(row)
            print(f"  step {step + 1}{'' if kept else ' (warm-up)'} {name:9s} {row[1]:7.2f} s wall, "
                  f"{row[0]:7.2f} s CPU, NFE {forward}+{backward}, loss {loss:.4f}", flush=True)

    peaks = ({name: memory_in_subprocess("ours" if name == "flowbench" else name, args) for name in models}
             if not args.no_memory else {})
    what = "MNIST file" if args.mnist else "synthetic strokes"
    solver = "dopri5 1e-5, first step 0.166667" if args.solver == "dopri5" else "rk4, step 0.25"
    print(f"\n{args.steps} interleaved steps after {args.warmup} warm-up, batch {args.batch} of 1x28x28 ({what}), "
          f"adjoint, {solver}, weights {WEIGHT}/{WEIGHT}, loss {'nats' if args.nats_loss else 'bits/dim'} (ours), "
          f"{args.device}, {args.threads} thread(s)")
    mem_head = "peak MB (RSS growth)" if device.type == "cpu" else "peak MB (allocator)"
    print(f"{'':10s} {'CPU s/step':>10s} {'wall s/step':>11s} {'NFE fwd':>8s} {'NFE bwd':>8s} {'ms/eval':>8s} "
          f"{mem_head:>21s}")
    summary = {}
    for name, r in rows.items():
        cpu, wall, fwd, bwd = (statistics.mean(x[i] for x in r) for i in range(4))
        summary[name] = (cpu, wall, fwd, bwd, peaks.get(name))
        mem = f"{peaks[name]:.0f}" if name in peaks else "-"
        print(f"{name:10s} {cpu:10.2f} {wall:11.2f} {fwd:8.1f} {bwd:8.1f} {1000 * cpu / (fwd + bwd):8.1f} {mem:>21s}")
    if "official" in summary:
        o, f = summary["official"], summary["flowbench"]
        ratios = [f"CPU {o[0] / f[0]:.2f}x", f"wall {o[1] / f[1]:.2f}x", f"NFE {(o[2] + o[3]) / (f[2] + f[3]):.2f}x",
                  f"CPU per evaluation {(o[0] / (o[2] + o[3])) / (f[0] / (f[2] + f[3])):.2f}x"]
        if o[4] is not None and f[4]:
            ratios.append(f"peak memory {o[4] / f[4]:.2f}x")
        print("official / ours: " + ", ".join(ratios))


def main(argv: list[str] | None = None) -> None:
    """Entry point: a bad option or input ends with one message, not a traceback."""
    try:
        run(parse_args(argv))
    except FlowbenchError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
