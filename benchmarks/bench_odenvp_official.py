"""FFJORD's multi-scale MNIST model, ours beside the official ODENVP: seconds, NFE and memory per step.

The official setting (rtqichen/ffjord train_cnf.py for MNIST, ``create_model`` with
``--multiscale True``): 1x28x28, 3 scales of 2 + 2 CNF blocks, 3x3 concat-conv ODE-nets 64-64-64,
softplus, Rademacher Hutchinson probes, logit alpha 1e-6, T = 1.0 (``train_T``), dopri5
atol = rtol = 1e-5, adjoint backpropagation, no batch norm; Adam lr 1e-3 (no warm-up here). Both
models see the same batches (dequantised 8-bit images in [0, 1], the same noise) and train
interleaved step by step, the order alternating, so machine load hits both alike. Where the
parameter layouts map one to one (they do: every CNF block, in order, has the same conv shapes and
one sqrt(T)), the official model starts from our weights and the initial log-likelihood gap on one
batch is printed (both with the same fixed Rademacher probes, so the estimates are comparable).

    python benchmarks/bench_odenvp_official.py --official /path/to/ffjord [--steps 3] [--batch 16]
        [--mnist t10k-images-idx3-ubyte.gz] [--fixed-end-time] [--no-memory] [--device cuda]

``--official DIR`` is a checkout of rtqichen/ffjord; its model is imported from there (nothing of it
is copied here). Without it, ours is measured alone. ``--mnist FILE`` draws the batches from an
MNIST IDX file (default: synthetic stroke images from a fixed generator). Our model sees the logit
of the batch (the harness's preprocessing, timed inside the step); the official one applies its own
logit layer. The official code cuts T's gradient (``torch.tensor([0, sqrt_T ** 2])``), so its T
never trains; ``--fixed-end-time`` fixes ours too (otherwise ours spends one evaluation per block
and step on T's gradient).

Peak memory: each model again in a fresh subprocess, one training step, the growth of the process's
maximum resident set over what the built model and batch hold (on CUDA the allocator's peak,
``torch.cuda.max_memory_allocated``).
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
from types import SimpleNamespace
from typing import Any

import torch

from baselines.ffjord import build
from bench.data.base import DataInfo

__all__ = ["copy_weights", "logit", "official_loss", "official_model", "mnist_like", "main"]

ALPHA = 1e-6  # train_cnf.py's --alpha
SHAPE = (1, 28, 28)


# -- data -------------------------------------------------------------------------------------------
def mnist_like(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` 8-bit 28x28 stroke images (uint8 [n, 1, 28, 28]): three random thick segments each, on
    black, softened at the edges; MNIST's mostly-zero statistics without the data files."""
    img = torch.zeros(n, 28, 28)
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    for _ in range(3):
        a = 4 + 20 * torch.rand(n, 2, generator=gen)
        b = 4 + 20 * torch.rand(n, 2, generator=gen)
        d = b - a
        # distance of every pixel to the segment a-b
        t = (((ys[None] - a[:, 0, None, None]) * d[:, 0, None, None] + (xs[None] - a[:, 1, None, None])
              * d[:, 1, None, None]) / d.pow(2).sum(1).clamp_min(1e-6)[:, None, None]).clamp(0, 1)
        dist = torch.hypot(ys[None] - a[:, 0, None, None] - t * d[:, 0, None, None],
                           xs[None] - a[:, 1, None, None] - t * d[:, 1, None, None])
        img = torch.maximum(img, (2.0 - dist).clamp(0, 1))
    return (img * 255).round().to(torch.uint8)[:, None]


def read_mnist(path: str) -> torch.Tensor:
    """The images of an MNIST IDX file (``.gz`` or raw) as uint8 [n, 1, 28, 28]."""
    from bench.data.images import read_idx

    return torch.from_numpy(read_idx(Path(path)).copy()).view(-1, *SHAPE)


def dequantize(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """train_cnf.py's ``add_noise``: (x + U(0, 1)) / 256 in [0, 1)."""
    return (x.to(torch.float32) + torch.rand(x.shape, generator=gen)) / 256


def logit(u: torch.Tensor, alpha: float = ALPHA) -> tuple[torch.Tensor, torch.Tensor]:
    """The harness's image preprocessing: logit(alpha + (1 - 2 alpha) u) and its log-determinant per
    example (``bench.data.images.make_preprocess``, here on an already dequantised batch)."""
    s = alpha + (1 - 2 * alpha) * u
    return torch.log(s) - torch.log1p(-s), (math.log1p(-2 * alpha) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)


# -- the official model ---------------------------------------------------------------------------
def official_model(path: str) -> tuple[torch.nn.Module, Callable[[torch.nn.Module], float], Any]:
    """train_cnf.py's MNIST multi-scale model (``create_model`` + ``set_cnf_options`` with its
    arguments), its NFE counter and the imported ``lib.layers.odefunc`` module."""
    sys.path.insert(0, str(Path(path).resolve()))
    warnings.filterwarnings("ignore", category=UserWarning, module=r"lib\.")  # its torch.tensor(tensor) copies
    import lib.layers.odefunc as odefunc  # noqa: E402  (from the official checkout)
    import lib.odenvp as odenvp  # noqa: E402
    import train_misc  # noqa: E402

    args = SimpleNamespace(dims="64,64,64", strides="1,1,1,1", num_blocks=2, layer_type="concat",
                           divergence_fn="approximate", nonlinearity="softplus", solver="dopri5", atol=1e-5,
                           rtol=1e-5, step_size=None, test_solver=None, test_atol=None, test_rtol=None, alpha=ALPHA,
                           time_length=1.0, train_T=True, batch_norm=False, residual=False, rademacher=True,
                           multiscale=True, l1int=None, l2int=None, dl2int=None, JFrobint=None, JdiagFrobint=None,
                           JoffdiagFrobint=None)
    regularization_fns, _ = train_misc.create_regularization_fns(args)  # () as train_cnf.py makes it
    model = odenvp.ODENVP((16, *SHAPE), n_blocks=args.num_blocks,
                          intermediate_dims=tuple(map(int, args.dims.split(","))), nonlinearity=args.nonlinearity,
                          alpha=args.alpha, cnf_kwargs={"T": args.time_length, "train_T": args.train_T,
                                                        "regularization_fns": regularization_fns})
    train_misc.set_cnf_options(args, model)
    return model, train_misc.count_nfe, odefunc


def official_loss(model: torch.nn.Module, u: torch.Tensor) -> torch.Tensor:
    """train_cnf.py's ``compute_bits_per_dim`` on a dequantised batch in [0, 1)."""
    z, delta_logp = model(u, torch.zeros(u.shape[0], 1, dtype=u.dtype, device=u.device))
    logpz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).view(z.shape[0], -1).sum(1, keepdim=True)
    logpx_per_dim = (logpz - delta_logp).sum() / u.nelement()
    return -(logpx_per_dim - math.log(256)) / math.log(2)


def official_log_prob(model: torch.nn.Module, u: torch.Tensor) -> torch.Tensor:
    """log p(u) per example in nats, the logit layer's log-determinant included."""
    z, delta_logp = model(u, torch.zeros(u.shape[0], 1, dtype=u.dtype, device=u.device))
    return (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).view(z.shape[0], -1).sum(1) - delta_logp.view(-1)


def block_pairs(ours: torch.nn.Module, official: torch.nn.Module) -> list[tuple[Any, Any]] | str:
    """Our CNF blocks paired with the official ones in flow order, or why they do not map one to one."""
    from baselines.cnf import CNF

    mine = [m for m in ours.modules() if isinstance(m, CNF)]
    theirs = [m for m in official.modules() if type(m).__name__ == "CNF"]
    if len(mine) != len(theirs):
        return f"{len(mine)} CNF blocks (ours) vs {len(theirs)} (official)"
    for i, (a, b) in enumerate(zip(mine, theirs)):
        diffeq = getattr(b.odefunc, "odefunc", b.odefunc).diffeq
        ours_shapes = [tuple(layer.weight.shape) for layer in a.func.net.layers]
        their_shapes = [tuple(layer._layer.weight.shape) for layer in diffeq.layers]
        if ours_shapes != their_shapes:
            return f"block {i}: conv weights {ours_shapes} (ours) vs {their_shapes} (official)"
    return list(zip(mine, theirs))


def copy_weights(pairs: list[tuple[Any, Any]]) -> None:
    """Our blocks' weights into the official ones: each concat conv (time channel first in both) and sqrt(T)."""
    with torch.no_grad():
        for a, b in pairs:
            diffeq = getattr(b.odefunc, "odefunc", b.odefunc).diffeq
            for mine, theirs in zip(a.func.net.layers, diffeq.layers):
                theirs._layer.weight.copy_(mine.weight)
                theirs._layer.bias.copy_(mine.bias)
            b.sqrt_end_time.copy_(a.func.sqrt_end_time)


@contextlib.contextmanager
def fixed_probes(odefunc_module: Any, seed: int = 3) -> Iterator[None]:
    """Both models draw the same Rademacher probe for a block of a given shape (ours through
    ``baselines.cnf.sample_probe``, the official through ``sample_rademacher_like``), so their
    Hutchinson estimates of the same flow agree; restored on exit."""
    import baselines.cnf as cnf

    cache: dict[tuple[int, ...], torch.Tensor] = {}

    def probe(like: torch.Tensor, noise: str = "rademacher") -> torch.Tensor:
        key = tuple(like.shape)
        if key not in cache:
            gen = torch.Generator().manual_seed(seed + len(cache))
            cache[key] = torch.randint(0, 2, key, generator=gen).mul_(2).sub_(1)
        return cache[key].to(like)

    saved = cnf.sample_probe, odefunc_module.sample_rademacher_like
    cnf.sample_probe, odefunc_module.sample_rademacher_like = probe, probe
    try:
        yield
    finally:
        cnf.sample_probe, odefunc_module.sample_rademacher_like = saved


# -- one step of each ----------------------------------------------------------------------------
def step_ours(model: torch.nn.Module, opt: torch.optim.Optimizer, u: torch.Tensor,
              nats_loss: bool = False) -> tuple[float, int, int]:
    """One harness-style step of ours (logit preprocessing, the model's loss: bits/dim up to a
    constant, adjoint backward, Adam); ``nats_loss`` multiplies the loss by D ln 2 (mean NLL in nats,
    the scale the harness trained images on before), which scales the adjoint state and so the
    backward solve's error control."""
    y, _ = logit(u)
    loss, _ = model.training_loss(y)
    if nats_loss:
        loss = loss * model.loss_scale
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    forward, backward = model.read_nfe()
    return float(loss.detach()), int(forward), int(backward)


def step_official(model: torch.nn.Module, opt: torch.optim.Optimizer, u: torch.Tensor,
                  count_nfe: Callable[[torch.nn.Module], float]) -> tuple[float, int, int]:
    """One train_cnf.py step (bits/dim loss, adjoint backward, Adam; no warm-up or clipping here)."""
    loss = official_loss(model, u)
    forward = count_nfe(model)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach()), int(forward), int(count_nfe(model) - forward)


def build_ours(fixed_end_time: bool) -> torch.nn.Module:
    """Ours with the MNIST suite's FFJORD options (800,646 trainable parameters, as the official)."""
    return build(DataInfo("mnist", "image", SHAPE, levels=256), n_blocks=2, hidden=[64, 64, 64], layer_type="concat",
                 activation="softplus", noise="rademacher", end_time=1.0, train_end_time=not fixed_end_time,
                 atol=1e-5, rtol=1e-5, adjoint=True)


def batches(args: argparse.Namespace, n: int) -> torch.Tensor:
    """``n`` batches' worth of 8-bit images from the fixed generator (or the MNIST file)."""
    gen = torch.Generator().manual_seed(1)
    if args.mnist:
        images = read_mnist(args.mnist)
        return images[torch.randperm(len(images), generator=gen)[: n * args.batch]]
    return mnist_like(n * args.batch, gen)


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/self/status has no {field}: peak memory needs Linux; use --no-memory")


def _reset_peak_rss() -> float:
    """Reset the process's peak resident set (Linux ``clear_refs`` 5) to its current size and return
    it (MB): imports and model building may have peaked higher than the step will, so the lifetime
    maximum (``ru_maxrss``) would hide the step's own peak."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _peak_rss() -> float:
    return _status_mb("VmHWM")


def measure_memory(args: argparse.Namespace) -> dict[str, float]:
    """In this fresh process: one training step of ``args.memory_of``; the peak memory it adds (MB)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = batches(args, 1)
    u = dequantize(images, torch.Generator().manual_seed(2)).to(device)
    if args.memory_of == "official":
        model, count_nfe, _ = official_model(args.official)
        model = model.to(device)
    else:
        model = build_ours(args.fixed_end_time).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _reset_peak_rss()
    if args.memory_of == "official":
        step_official(model, opt, u, count_nfe)
    else:
        step_ours(model, opt, u, args.nats_loss)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _peak_rss() - base
    return {"peak_mb": peak}


def memory_in_subprocess(which: str, args: argparse.Namespace) -> float:
    """Peak MB of one step of ``which`` in a fresh interpreter (this script with ``--memory-of``)."""
    here = Path(__file__).resolve()
    cmd = [sys.executable, str(here), "--memory-of", which, "--batch", str(args.batch), "--device", args.device,
           "--threads", str(args.threads)]
    if args.official:
        cmd += ["--official", args.official]
    if args.mnist:
        cmd += ["--mnist", args.mnist]
    if args.fixed_end_time:
        cmd.append("--fixed-end-time")
    if args.nats_loss:
        cmd.append("--nats-loss")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"memory measurement of {which} failed:\n{proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", metavar="DIR", help="checkout of rtqichen/ffjord to measure beside ours")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--mnist", metavar="FILE", help="MNIST IDX images (e.g. t10k-images-idx3-ubyte.gz)")
    ap.add_argument("--fixed-end-time", action="store_true", help="do not train our T (the official T never trains)")
    ap.add_argument("--nats-loss", action="store_true",
                    help="train ours on mean NLL in nats (D ln 2 times the official bits/dim loss)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-of", choices=["flowbench", "official"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.official and not (Path(args.official) / "lib" / "odenvp.py").is_file():
        raise SystemExit(f"--official {args.official}: no lib/odenvp.py there; pass a checkout of rtqichen/ffjord")
    if args.mnist and not Path(args.mnist).is_file():
        raise SystemExit(f"--mnist {args.mnist}: no such file; pass an MNIST IDX images file or leave it out")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here; use --device cpu")
    torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(measure_memory(args)))
        return
    device = torch.device(args.device)

    torch.manual_seed(0)
    ours = build_ours(args.fixed_end_time).to(device)
    models: dict[str, torch.nn.Module] = {"flowbench": ours}
    images = batches(args, args.steps + 1)
    noise = torch.Generator().manual_seed(2)
    count_nfe = None
    print(f"parameters: flowbench {sum(p.numel() for p in ours.parameters() if p.requires_grad):,}", end="")
    if args.official:
        official, count_nfe, odefunc_module = official_model(args.official)
        official = official.to(device)
        models["official"] = official
        print(f", official {sum(p.numel() for p in official.parameters() if p.requires_grad):,}")
        pairs = block_pairs(ours, official)
        if isinstance(pairs, str):
            torch.manual_seed(0)
            print(f"layouts differ ({pairs}): each model keeps its own seeded initialisation")
        else:
            copy_weights(pairs)
            u = dequantize(images[: args.batch], noise).to(device)
            ours.eval(), official.eval()
            with torch.no_grad(), fixed_probes(odefunc_module):
                y, logdet = logit(u)
                mine = ours.log_prob(y) + logdet
                theirs = official_log_prob(official, u)
            ours.train(), official.train()
            ours.read_nfe(), count_nfe(official)
            gap = float((mine - theirs).abs().max())
            print(f"same weights, same probes, {args.batch} images: mean log p ours {float(mine.mean()):.2f} nats, "
                  f"official {float(theirs.mean()):.2f}; max |difference| {gap:.2e} nats "
                  f"({gap / (math.prod(SHAPE) * math.log(2)):.1e} bits/dim)")
    else:
        print()
    images = images[args.batch:]

    optimizers = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    rows: dict[str, list[tuple[float, float, int, int, float]]] = {k: [] for k in models}
    for step in range(args.steps):
        u = dequantize(images[step * args.batch:(step + 1) * args.batch], noise).to(device)
        order = list(models) if step % 2 == 0 else list(reversed(models))
        for name in order:
            model, opt = models[name], optimizers[name]
            if device.type == "cuda":
                torch.cuda.synchronize()
            cpu, wall = time.process_time(), time.perf_counter()
            if name == "official":
                loss, forward, backward = step_official(model, opt, u, count_nfe)
            else:
                loss, forward, backward = step_ours(model, opt, u, args.nats_loss)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rows[name].append((time.process_time() - cpu, time.perf_counter() - wall, forward, backward, loss))
            print(f"  step {step + 1} {name:9s} {rows[name][-1][0]:6.2f} s CPU {rows[name][-1][1]:7.2f} s wall, NFE {forward}+{backward}, "
                  f"loss {loss:.4f}", flush=True)

    if not args.no_memory:
        print("peak memory: one step of each in a fresh process ...", flush=True)
    peaks = {name: memory_in_subprocess(name, args) for name in models} if not args.no_memory else {}
    what = "MNIST file" if args.mnist else "synthetic strokes"
    print(f"\n{args.steps} interleaved steps, batch {args.batch} of 1x28x28 ({what}), adjoint, dopri5 1e-5, "
          f"T {'fixed' if args.fixed_end_time else 'trained'} (ours), loss {'nats' if args.nats_loss else 'bits/dim'} "
          f"(ours), {args.device}, {args.threads} thread(s)")
    mem_head = "peak MB (RSS growth)" if device.type == "cpu" else "peak MB (allocator)"
    print(f"{'':10s} {'CPU s/step':>10s} {'wall s/step':>11s} {'NFE fwd':>8s} {'NFE bwd':>8s} {mem_head:>21s}")
    summary = {}
    for name, r in rows.items():
        cpu = statistics.mean(x[0] for x in r)
        wall = statistics.mean(x[1] for x in r)
        fwd = statistics.mean(x[2] for x in r)
        bwd = statistics.mean(x[3] for x in r)
        summary[name] = (cpu, wall, fwd, bwd, peaks.get(name))
        mem = f"{peaks[name]:.0f}" if name in peaks else "-"
        print(f"{name:10s} {cpu:10.2f} {wall:11.2f} {fwd:8.1f} {bwd:8.1f} {mem:>21s}")
    if "official" in summary:
        o, f = summary["official"], summary["flowbench"]
        ratios = [f"CPU {o[0] / f[0]:.2f}x", f"wall {o[1] / f[1]:.2f}x", f"NFE {(o[2] + o[3]) / (f[2] + f[3]):.2f}x"]
        if o[4] is not None and f[4]:
            ratios.append(f"peak memory {o[4] / f[4]:.2f}x")
        print("official / ours: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
