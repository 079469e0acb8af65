"""What the side-by-side MNIST CNF benchmarks share: ours against FFJORD's official ODENVP
(bench_odenvp_official.py) and against RNODE's (bench_rnode_official.py).

Both put one of our multi-scale image CNFs beside the same official architecture (lib/odenvp.py
of rtqichen/ffjord or of cfinlay/ffjord-rnode, imported from a folder given on the command line,
nothing of it copied here) and train the two interleaved on the same dequantised 8-bit batches.
This module holds the pieces that do not depend on which: the batches (synthetic strokes or an
MNIST IDX file), the harness's logit preprocessing, importing the official modules, pairing our
CNF blocks with the official ones and copying our weights across, fixing the Hutchinson probes on
both sides, our training step, the interleaved timing loop, the bits/dim of the official loss and
the peak-memory measurement in a fresh process. The scripts are run as ``python benchmarks/X.py``,
so ``benchmarks/`` is first on ``sys.path`` and they import this as ``official_mnist``.
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from bench.errors import FlowbenchError

__all__ = ["SHAPE", "Row", "mnist_like", "read_mnist", "dequantize", "logit", "batches", "add_run_arguments", "cli",
           "compiled_if_asked",
           "check_common_args", "import_official", "official_diffeq", "official_logpz", "official_bits_per_dim",
           "block_pairs", "copy_weights", "fixed_probes", "trainable", "step_ours", "interleaved_steps", "count_convolutions", "mean_row",
           "official_over_ours", "status_mb", "reset_peak_rss", "peak_memory_mb", "start", "memory_in_subprocess"]

SHAPE = (1, 28, 28)

Row = tuple[float, float, int, int, float]
"""One model's training step: CPU seconds, wall seconds, forward NFE, backward NFE, loss."""


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
    """The official ``add_noise`` (8 bits): (x + U(0, 1)) / 256 in [0, 1)."""
    return (x.to(torch.float32) + torch.rand(x.shape, generator=gen)) / 256


def logit(u: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The harness's image preprocessing on a dequantised batch: logit(alpha + (1 - 2 alpha) u) and
    its log-determinant per example (``bench.data.images.make_preprocess``); ``alpha`` is the
    official script's ``--alpha``, so both models see the same transform."""
    s = alpha + (1 - 2 * alpha) * u
    return torch.log(s) - torch.log1p(-s), (math.log1p(-2 * alpha) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)


def batches(n: int, batch: int, mnist: str | None = None) -> torch.Tensor:
    """``n`` batches of ``batch`` 8-bit images from the fixed generator (or drawn from the MNIST file)."""
    gen = torch.Generator().manual_seed(1)
    if mnist:
        images = read_mnist(mnist)
        if len(images) < n * batch:
            raise FlowbenchError(f"--mnist {mnist}: {len(images)} images, fewer than the {n * batch} "
                                 "the steps need; lower --steps or --batch")
        return images[torch.randperm(len(images), generator=gen)[: n * batch]]
    return mnist_like(n * batch, gen)


# -- command line -----------------------------------------------------------------------------------
def add_run_arguments(ap: argparse.ArgumentParser, memory_names: Sequence[str]) -> None:
    """The options both scripts end with: ``--no-memory``, ``--device``, ``--threads``, ``--compile`` and the hidden
    ``--memory-of`` (one of ``memory_names``: how the memory child, see ``memory_in_subprocess``, is
    told which model to measure)."""
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true",
                    help="ours with torch.compile'd dynamics (baselines.cnf.compile_dynamics); warm-up steps compile")
    ap.add_argument("--count-convolutions", action="store_true",
                    help="then one more step of each under torch.profiler: convolutions run and their CPU share")
    ap.add_argument("--memory-of", choices=list(memory_names), help=argparse.SUPPRESS)


def compiled_if_asked(model: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    """Our model, its CNF dynamics torch.compile'd when ``--compile`` was given (compiled at its first
    steps, so the warm-up steps carry the cost)."""
    if args.compile:
        from baselines.cnf import compile_dynamics

        compile_dynamics(model)
    return model


def cli(run: Callable[[argparse.Namespace], None], parse_args: Callable[[list[str] | None], argparse.Namespace],
        argv: list[str] | None = None) -> None:
    """Parse ``argv`` and run; a bad option or input ends with one message, not a traceback."""
    try:
        run(parse_args(argv))
    except FlowbenchError as err:
        raise SystemExit(f"error: {err}") from None


def check_common_args(args: argparse.Namespace) -> None:
    """One clear message per bad option the two scripts share (``--mnist``, ``--device``, ``--steps``,
    ``--batch``, ``--threads``)."""
    if args.mnist and not Path(args.mnist).is_file():
        raise FlowbenchError(f"--mnist {args.mnist}: no such file; pass an MNIST IDX images file or leave it out")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise FlowbenchError("--device cuda: torch sees no CUDA device here; use --device cpu")
    for name in ("steps", "batch", "threads"):
        if getattr(args, name) < 1:
            raise FlowbenchError(f"--{name} {getattr(args, name)}: must be at least 1")


# -- the official code ------------------------------------------------------------------------------
def import_official(path: str, quiet: str) -> tuple[ModuleType, ModuleType, ModuleType]:
    """``lib.layers.odefunc``, ``lib.odenvp`` and ``train_misc`` imported from the official folder
    ``path`` (put first on ``sys.path``); UserWarnings from modules matching the regular expression
    ``quiet`` are silenced (the official code's known, harmless ones)."""
    sys.path.insert(0, str(Path(path).resolve()))
    warnings.filterwarnings("ignore", category=UserWarning, module=quiet)
    import lib.layers.odefunc as odefunc  # noqa: E402  (from the official folder)
    import lib.odenvp as odenvp  # noqa: E402
    import train_misc  # noqa: E402

    return odefunc, odenvp, train_misc


def official_diffeq(block: Any) -> Any:
    """An official CNF block's ODEnet (under the regularising wrapper when there is one)."""
    return getattr(block.odefunc, "odefunc", block.odefunc).diffeq


def official_logpz(z: torch.Tensor) -> torch.Tensor:
    """The official scripts' standard-normal log-density of the latents, summed per example ([n, 1])."""
    return (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).view(z.shape[0], -1).sum(1, keepdim=True)


def official_bits_per_dim(z: torch.Tensor, delta_logp: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The official bits/dim of batch ``u`` (in [0, 1)) from the model's output: the mean log-density
    per dimension, moved to the 8-bit scale (- ln 256) and to bits."""
    return -((official_logpz(z) - delta_logp).sum() / u.nelement() - math.log(256)) / math.log(2)


def block_pairs(ours: torch.nn.Module, official: torch.nn.Module) -> list[tuple[Any, Any]] | str:
    """Our CNF blocks paired with the official ones in flow order, or why they do not map one to one."""
    from baselines.cnf import CNF

    mine = [m for m in ours.modules() if isinstance(m, CNF)]
    theirs = [m for m in official.modules() if type(m).__name__ == "CNF"]
    if len(mine) != len(theirs):
        return f"{len(mine)} CNF blocks (ours) vs {len(theirs)} (official)"
    for i, (a, b) in enumerate(zip(mine, theirs)):
        ours_shapes = [tuple(layer.weight.shape) for layer in a.func.net.layers]
        their_shapes = [tuple(layer._layer.weight.shape) for layer in official_diffeq(b).layers]
        if ours_shapes != their_shapes:
            return f"block {i}: conv weights {ours_shapes} (ours) vs {their_shapes} (official)"
    return list(zip(mine, theirs))


def copy_weights(pairs: list[tuple[Any, Any]]) -> None:
    """Our blocks' weights into the official ones: each concat conv (time channel first in both) and sqrt(T)."""
    with torch.no_grad():
        for a, b in pairs:
            for mine, theirs in zip(a.func.net.layers, official_diffeq(b).layers):
                theirs._layer.weight.copy_(mine.weight)
                theirs._layer.bias.copy_(mine.bias)
            b.sqrt_end_time.copy_(a.func.sqrt_end_time)


@contextlib.contextmanager
def fixed_probes(odefunc_module: ModuleType, noise: str, seed: int = 3) -> Iterator[None]:
    """Both models draw the same Hutchinson probe (``noise``: "rademacher" or "gaussian") for a block
    of a given shape, ours through ``baselines.cnf.sample_probe``, the official through
    ``sample_rademacher_like`` / ``sample_gaussian_like``, so their estimates of the same flow
    agree; restored on exit."""
    import baselines.cnf as cnf

    if noise not in ("rademacher", "gaussian"):
        raise ValueError(f"noise must be 'rademacher' or 'gaussian', got {noise!r}")
    official_name = f"sample_{noise}_like"
    cache: dict[tuple[int, ...], torch.Tensor] = {}

    def probe(like: torch.Tensor, kind: str = noise) -> torch.Tensor:
        key = tuple(like.shape)
        if key not in cache:
            gen = torch.Generator().manual_seed(seed + len(cache))
            if noise == "rademacher":
                cache[key] = torch.randint(0, 2, key, generator=gen).mul_(2).sub_(1)
            else:
                cache[key] = torch.randn(key, generator=gen)
        return cache[key].to(like)

    saved = cnf.sample_probe, getattr(odefunc_module, official_name)
    cnf.sample_probe = probe
    setattr(odefunc_module, official_name, probe)
    try:
        yield
    finally:
        cnf.sample_probe = saved[0]
        setattr(odefunc_module, official_name, saved[1])


def trainable(model: torch.nn.Module) -> int:
    """The number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- training steps and timing ----------------------------------------------------------------------
def step_ours(model: torch.nn.Module, opt: torch.optim.Optimizer, u: torch.Tensor, alpha: float,
              nats_loss: bool = False) -> tuple[float, int, int]:
    """One harness-style step of ours (logit preprocessing, ``training_loss``: bits/dim up to a constant
    plus any regularisers, adjoint backward, Adam); ``nats_loss`` multiplies the loss by the model's
    ``loss_scale`` (D ln 2: mean NLL in nats, the scale the harness trained images on before), which
    scales the adjoint state and so the adaptive backward solve's error control. Returns (loss,
    forward NFE, backward NFE)."""
    y, _ = logit(u, alpha)
    loss, _ = model.training_loss(y)
    if nats_loss:
        loss = loss * model.loss_scale
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    forward, backward = model.read_nfe()
    return float(loss.detach()), int(forward), int(backward)


def interleaved_steps(steps: dict[str, Callable[[torch.Tensor], tuple[float, int, int]]], images: torch.Tensor,
                      batch: int, n: int, noise: torch.Generator, device: torch.device
                      ) -> Iterator[tuple[int, str, Row]]:
    """``n`` training steps of every model, each on the next ``batch`` of ``images`` dequantised with
    ``noise`` (the same batch for all), the order alternating from step to step so machine load hits
    all alike; yields (step index, model name, its ``Row``), timed without what the caller does."""
    for step in range(n):
        u = dequantize(images[step * batch:(step + 1) * batch], noise).to(device)
        order = list(steps) if step % 2 == 0 else list(reversed(steps))
        for name in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            cpu, wall = time.process_time(), time.perf_counter()
            loss, forward, backward = steps[name](u)
            if device.type == "cuda":
                torch.cuda.synchronize()
            yield step, name, (time.process_time() - cpu, time.perf_counter() - wall, forward, backward, loss)


def count_convolutions(steps: dict[str, Callable[[torch.Tensor], tuple[float, int, int]]], u: torch.Tensor) -> None:
    """One training step of every model on ``u`` under torch.profiler; prints, per model and per
    function evaluation, the convolutions run (forward kernels and backward ones) and the share of the
    step's CPU time they take: where the step goes, and whether both sides do the same work."""
    from torch.profiler import ProfilerActivity, profile

    for name, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _, forward, backward = step(u)
        ops = {e.key: e for e in prof.key_averages()}
        total = sum(e.self_cpu_time_total for e in ops.values())
        calls = {k: ops[k].count if k in ops else 0 for k in ("aten::convolution", "aten::convolution_backward")}
        conv_us = sum(ops[k].cpu_time_total for k in calls if k in ops)
        evals = max(1, forward + backward)
        print(f"  {name:9s} NFE {forward}+{backward}: {calls['aten::convolution'] / evals:.1f} convolutions and "
              f"{calls['aten::convolution_backward'] / evals:.1f} convolution backwards per evaluation, "
              f"{conv_us / 1e6:.2f} s of {total / 1e6:.2f} s CPU ({conv_us / max(total, 1):.0%})", flush=True)


def mean_row(rows: Sequence[Row]) -> tuple[float, float, float, float]:
    """The means of CPU seconds, wall seconds, forward and backward NFE over a model's steps."""
    cpu, wall, forward, backward = (statistics.mean(r[i] for r in rows) for i in range(4))
    return cpu, wall, forward, backward


def official_over_ours(official: Sequence[Any], ours: Sequence[Any], per_evaluation: bool = False) -> str:
    """The summary line of ratios, official over ours, from (CPU s, wall s, NFE fwd, NFE bwd, peak MB
    or None) each: CPU, wall, NFE, optionally CPU per evaluation, and peak memory where measured."""
    o, f = official, ours
    ratios = [f"CPU {o[0] / f[0]:.2f}x", f"wall {o[1] / f[1]:.2f}x", f"NFE {(o[2] + o[3]) / (f[2] + f[3]):.2f}x"]
    if per_evaluation:
        ratios.append(f"CPU per evaluation {(o[0] / (o[2] + o[3])) / (f[0] / (f[2] + f[3])):.2f}x")
    if o[4] is not None and f[4]:
        ratios.append(f"peak memory {o[4] / f[4]:.2f}x")
    return "official / ours: " + ", ".join(ratios)


# -- peak memory ------------------------------------------------------------------------------------
def status_mb(field: str) -> float:
    """A memory field of ``/proc/self/status`` (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise FlowbenchError(f"/proc/self/status has no {field} line: the CPU peak memory needs Linux; use --no-memory")


def reset_peak_rss() -> float:
    """Set the peak resident set (VmHWM) back to the current one (Linux ``clear_refs`` 5) and return it
    (MB): imports and model building may have peaked higher than the step will, and a child inherits
    the parent's size across ``exec``, so the lifetime maximum would hide the step's own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as err:
        raise FlowbenchError(f"cannot reset the peak resident set ({err}); use --no-memory") from None
    return status_mb("VmRSS")


def peak_memory_mb(device: torch.device, step: Callable[[], object]) -> float:
    """The peak memory ``step()`` adds (MB) over what is held when it starts: on CPU the growth of the
    peak resident set, on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = reset_peak_rss()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return status_mb("VmHWM") - base


def start(args: argparse.Namespace, measure: Callable[[argparse.Namespace], dict[str, float]]) -> bool:
    """Set torch's thread count to ``--threads``; in a ``--memory-of`` child run ``measure`` and print
    its ``{"peak_mb": ...}`` as the JSON line ``memory_in_subprocess`` reads, then return True (the
    child has nothing more to do); otherwise return False."""
    torch.set_num_threads(args.threads)
    if not args.memory_of:
        return False
    print(json.dumps(measure(args)))
    return True


def memory_in_subprocess(script: str, which: str, args: argparse.Namespace, extra: Sequence[str] = ()) -> float:
    """Peak MB of one step of ``which`` in a fresh interpreter: ``script`` run with ``--memory-of which``,
    the shared options of ``args`` (batch, device, threads, official, mnist, nats loss) and the
    script's own ``extra`` ones; the child prints ``{"peak_mb": ...}`` as its last line."""
    here = Path(script).resolve()
    cmd = [sys.executable, str(here), "--memory-of", which, "--batch", str(args.batch), "--device", args.device,
           "--threads", str(args.threads), *extra]
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
    try:
        return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])
    except (IndexError, ValueError, KeyError, TypeError):
        raise FlowbenchError(f"the peak-memory measurement of {which} printed no peak_mb line (rerun with "
                             f"--no-memory to skip it); its output ends:\n{proc.stdout[-2000:]}") from None
