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
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace

import torch

from baselines.ffjord import build
from bench.data.base import DataInfo
from bench.errors import FlowbenchError
from official_mnist import (SHAPE, Row, add_run_arguments, batches, block_pairs, check_common_args, cli,
                            compiled_if_asked, copy_weights, count_convolutions,
                            dequantize, fixed_probes, import_official, interleaved_steps, logit, mean_row,
                            memory_in_subprocess, official_bits_per_dim, official_logpz, official_over_ours,
                            peak_memory_mb, start, step_ours, trainable)

__all__ = ["ALPHA", "official_model", "official_loss", "official_log_prob", "step_official", "build_ours",
           "measure_memory", "check_args", "parse_args", "run", "main"]

ALPHA = 1e-6  # train_cnf.py's --alpha


# -- the official model ---------------------------------------------------------------------------
def official_model(path: str) -> tuple[torch.nn.Module, Callable[[torch.nn.Module], float], ModuleType]:
    """train_cnf.py's MNIST multi-scale model (``create_model`` + ``set_cnf_options`` with its
    arguments), its NFE counter and the imported ``lib.layers.odefunc`` module."""
    # its torch.tensor(tensor) copies warn
    odefunc, odenvp, train_misc = import_official(path, quiet=r"lib\.")
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
    return official_bits_per_dim(z, delta_logp, u)


def official_log_prob(model: torch.nn.Module, u: torch.Tensor) -> torch.Tensor:
    """log p(u) per example in nats, the logit layer's log-determinant included."""
    z, delta_logp = model(u, torch.zeros(u.shape[0], 1, dtype=u.dtype, device=u.device))
    return official_logpz(z).view(-1) - delta_logp.view(-1)


# -- one step of each ----------------------------------------------------------------------------
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


def measure_memory(args: argparse.Namespace) -> dict[str, float]:
    """In this fresh process: one training step of ``args.memory_of``; the peak memory it adds (MB)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = batches(1, args.batch, args.mnist)
    u = dequantize(images, torch.Generator().manual_seed(2)).to(device)
    if args.memory_of == "official":
        model, count_nfe, _ = official_model(args.official)
        model = model.to(device)
    else:
        model = build_ours(args.fixed_end_time).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if args.memory_of == "official":
        return {"peak_mb": peak_memory_mb(device, lambda: step_official(model, opt, u, count_nfe))}
    return {"peak_mb": peak_memory_mb(device, lambda: step_ours(model, opt, u, ALPHA, args.nats_loss))}


def check_args(args: argparse.Namespace) -> None:
    """One clear message per bad option."""
    if args.official and not (Path(args.official) / "lib" / "odenvp.py").is_file():
        raise FlowbenchError(f"--official {args.official}: no lib/odenvp.py there; pass a checkout of rtqichen/ffjord")
    check_common_args(args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", metavar="DIR", help="checkout of rtqichen/ffjord to measure beside ours")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--mnist", metavar="FILE", help="MNIST IDX images (e.g. t10k-images-idx3-ubyte.gz)")
    ap.add_argument("--fixed-end-time", action="store_true", help="do not train our T (the official T never trains)")
    ap.add_argument("--nats-loss", action="store_true",
                    help="train ours on mean NLL in nats (D ln 2 times the official bits/dim loss)")
    add_run_arguments(ap, ["flowbench", "official"])
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    """The comparison (or, with ``--memory-of``, one memory measurement)."""
    check_args(args)
    if start(args, measure_memory):
        return
    device = torch.device(args.device)

    torch.manual_seed(0)
    ours = compiled_if_asked(build_ours(args.fixed_end_time).to(device), args)
    models: dict[str, torch.nn.Module] = {"flowbench": ours}
    images = batches(args.steps + 1, args.batch, args.mnist)
    noise = torch.Generator().manual_seed(2)
    count_nfe = None
    print(f"parameters: flowbench {trainable(ours):,}", end="")
    if args.official:
        official, count_nfe, odefunc_module = official_model(args.official)
        official = official.to(device)
        models["official"] = official
        print(f", official {trainable(official):,}")
        pairs = block_pairs(ours, official)
        if isinstance(pairs, str):
            torch.manual_seed(0)
            print(f"layouts differ ({pairs}): each model keeps its own seeded initialisation")
        else:
            copy_weights(pairs)
            u = dequantize(images[: args.batch], noise).to(device)
            ours.eval(), official.eval()
            with torch.no_grad(), fixed_probes(odefunc_module, "rademacher"):
                y, logdet = logit(u, ALPHA)
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
    steps: dict[str, Callable[[torch.Tensor], tuple[float, int, int]]] = {
        "flowbench": lambda u: step_ours(ours, optimizers["flowbench"], u, ALPHA, args.nats_loss)}
    if args.official:
        steps["official"] = lambda u: step_official(official, optimizers["official"], u, count_nfe)
    rows: dict[str, list[Row]] = {k: [] for k in models}
    for step, name, row in interleaved_steps(steps, images, args.batch, args.steps, noise, device):
        rows[name].append(row)
        print(f"  step {step + 1} {name:9s} {row[0]:6.2f} s CPU {row[1]:7.2f} s wall, NFE {row[2]}+{row[3]}, "
              f"loss {row[4]:.4f}", flush=True)

    if args.count_convolutions:
        print("convolutions in one more step of each (torch.profiler):", flush=True)
        count_convolutions(steps, dequantize(images[:args.batch], noise).to(device))
    if not args.no_memory:
        print("peak memory: one step of each in a fresh process ...", flush=True)
    extra = ["--fixed-end-time"] if args.fixed_end_time else []
    peaks = {name: memory_in_subprocess(__file__, name, args, extra) for name in models} if not args.no_memory else {}
    what = "MNIST file" if args.mnist else "synthetic strokes"
    print(f"\n{args.steps} interleaved steps, batch {args.batch} of 1x28x28 ({what}), adjoint, dopri5 1e-5, "
          f"T {'fixed' if args.fixed_end_time else 'trained'} (ours), loss {'nats' if args.nats_loss else 'bits/dim'} "
          f"(ours), {args.device}, {args.threads} thread(s)")
    mem_head = "peak MB (RSS growth)" if device.type == "cpu" else "peak MB (allocator)"
    print(f"{'':10s} {'CPU s/step':>10s} {'wall s/step':>11s} {'NFE fwd':>8s} {'NFE bwd':>8s} {mem_head:>21s}")
    summary = {}
    for name, r in rows.items():
        cpu, wall, fwd, bwd = mean_row(r)
        summary[name] = (cpu, wall, fwd, bwd, peaks.get(name))
        mem = f"{peaks[name]:.0f}" if name in peaks else "-"
        print(f"{name:10s} {cpu:10.2f} {wall:11.2f} {fwd:8.1f} {bwd:8.1f} {mem:>21s}")
    if "official" in summary:
        print(official_over_ours(summary["official"], summary["flowbench"]))


def main(argv: list[str] | None = None) -> None:
    """Entry point: a bad option or input ends with one message, not a traceback."""
    cli(run, parse_args, argv)


if __name__ == "__main__":
    main()
