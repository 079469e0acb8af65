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
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace

import torch

from baselines.rnode import build
from bench.data.base import DataInfo
from bench.errors import FlowbenchError
from official_mnist import (SHAPE, Row, add_run_arguments, batches, block_pairs, check_common_args, cli,
                            compiled_if_asked, copy_weights, count_convolutions,
                            dequantize, fixed_probes, import_official, interleaved_steps, logit, mean_row,
                            memory_in_subprocess, official_bits_per_dim, official_over_ours, peak_memory_mb, start,
                            step_ours, trainable)

__all__ = ["ALPHA", "WEIGHT", "official_args", "official_model", "official_loss", "build_ours", "compare_losses",
           "step_official", "measure_memory", "check_args", "parse_args", "run", "main"]

ALPHA = 1e-5  # example-scripts/mnist.sh's --alpha (train.py's default is 1e-6)
WEIGHT = 0.01  # mnist.sh's --kinetic-energy and --jacobian-norm2
D_LN2 = math.prod(SHAPE) * math.log(2)


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
    # its solver options carry step_size and first_step to every solver (torchdiffeq warns), and
    # its dynamics call requires_grad_ on non-leaf tensors
    odefunc, odenvp, train_misc = import_official(path, quiet=r"(lib\.|torchdiffeq|train_misc)")
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
    bpd = official_bits_per_dim(z, delta_logp, u)
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


def compare_losses(ours: torch.nn.Module, official: torch.nn.Module, coeffs: tuple[float, ...],
                   odefunc_module: ModuleType, u: torch.Tensor) -> dict[str, float]:
    """Both training losses on batch ``u`` (train mode, no gradient, the same probes), ours put on
    the official scale from its parts: (mean NLL - mean logit log-det) / (D ln 2) + 8 bits, plus the
    weighted regularisers."""
    with torch.no_grad(), fixed_probes(odefunc_module, "gaussian"):
        y, logdet = logit(u, ALPHA)
        _, stats = ours.training_loss(y)
        stats = {k: float(v) for k, v in stats.items()}  # 0-dim tensors
        theirs, bpd, regs = official_loss(official, u, coeffs)
    ours.read_nfe()
    mine_bpd = (stats["nll"] - float(logdet.mean())) / D_LN2 + 8
    mine = mine_bpd + WEIGHT * (stats["kinetic"] + stats["jacobian"])
    return {"ours": mine, "official": float(theirs), "ours_bpd": mine_bpd, "official_bpd": float(bpd),
            "ours_K": stats["kinetic"], "official_K": float(regs[0]), "ours_B": stats["jacobian"],
            "official_B": float(regs[1])}


def print_comparison(title: str, c: dict[str, float]) -> None:
    """One line of ``compare_losses``'s figures: total loss, bits/dim, kinetic and Jacobian terms."""
    gap = abs(c["ours"] - c["official"])
    print(f"{title}: loss ours {c['ours']:.6f}, official {c['official']:.6f} (gap {gap:.1e}); "
          f"bits/dim gap {abs(c['ours_bpd'] - c['official_bpd']):.1e}; kinetic {c['ours_K']:.4e} vs "
          f"{c['official_K']:.4e}; Jacobian {c['ours_B']:.4e} vs {c['official_B']:.4e}")


# -- one step of the official (ours: official_mnist.step_ours) --------------------------------------
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


def measure_memory(args: argparse.Namespace) -> dict[str, float]:
    """In this fresh process: one training step of ``args.memory_of``; the peak memory it adds (MB)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    u = dequantize(batches(1, args.batch, args.mnist), torch.Generator().manual_seed(2)).to(device)
    if args.memory_of == "official":
        model, coeffs, count_nfe, _ = official_model(args.official, args.solver, args.batch)
    else:
        model = build_ours(args.solver)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if args.memory_of == "official":
        return {"peak_mb": peak_memory_mb(device, lambda: step_official(model, opt, u, coeffs, count_nfe))}
    return {"peak_mb": peak_memory_mb(device, lambda: step_ours(model, opt, u, ALPHA, args.nats_loss))}


def check_args(args: argparse.Namespace) -> None:
    """One clear message per bad option."""
    if args.official and not ((Path(args.official) / "lib" / "odenvp.py").is_file()
                              and (Path(args.official) / "train_misc.py").is_file()):
        raise FlowbenchError(f"--official {args.official}: no lib/odenvp.py and train_misc.py there; pass a folder "
                             "holding cfinlay/ffjord-rnode's code")
    check_common_args(args)
    if args.warmup < 0:
        raise FlowbenchError(f"--warmup {args.warmup}: must be 0 or more")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``, default ``sys.argv[1:]``)."""
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
    add_run_arguments(ap, ["ours", "official"])
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    """The comparison (or, with ``--memory-of``, one memory measurement)."""
    check_args(args)
    if start(args, measure_memory):
        return
    device = torch.device(args.device)

    torch.manual_seed(0)
    ours = compiled_if_asked(build_ours(args.solver).to(device), args)
    models: dict[str, torch.nn.Module] = {"flowbench": ours}
    images = batches(args.warmup + args.steps + 1, args.batch, args.mnist)
    noise = torch.Generator().manual_seed(2)
    count_nfe, coeffs = None, ()
    u = dequantize(images[: args.batch], noise).to(device)  # the check's batch (drawn either way: same noise after)
    print(f"parameters: flowbench {trainable(ours):,}", end="")
    if args.official:
        official, coeffs, count_nfe, odefunc_module = official_model(args.official, args.solver, args.batch)
        official = official.to(device)
        models["official"] = official
        print(f", official {trainable(official):,}")
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
    steps: dict[str, Callable[[torch.Tensor], tuple[float, int, int]]] = {
        "flowbench": lambda u: step_ours(ours, optimizers["flowbench"], u, ALPHA, args.nats_loss)}
    if args.official:
        steps["official"] = lambda u: step_official(official, optimizers["official"], u, coeffs, count_nfe)
    rows: dict[str, list[Row]] = {k: [] for k in models}
    for step, name, row in interleaved_steps(steps, images, args.batch, args.warmup + args.steps, noise, device):
        kept = step >= args.warmup
        if kept:
            rows[name].append(row)
        print(f"  step {step + 1}{'' if kept else ' (warm-up)'} {name:9s} {row[1]:7.2f} s wall, "
              f"{row[0]:7.2f} s CPU, NFE {row[2]}+{row[3]}, loss {row[4]:.4f}", flush=True)

    if args.count_convolutions:
        print("convolutions in one more step of each (torch.profiler):", flush=True)
        count_convolutions(steps, dequantize(images[:args.batch], noise).to(device))
    extra = ["--solver", args.solver]
    peaks = ({name: memory_in_subprocess(__file__, "ours" if name == "flowbench" else name, args, extra)
              for name in models} if not args.no_memory else {})
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
        cpu, wall, fwd, bwd = mean_row(r)
        summary[name] = (cpu, wall, fwd, bwd, peaks.get(name))
        mem = f"{peaks[name]:.0f}" if name in peaks else "-"
        print(f"{name:10s} {cpu:10.2f} {wall:11.2f} {fwd:8.1f} {bwd:8.1f} {1000 * cpu / (fwd + bwd):8.1f} {mem:>21s}")
    if "official" in summary:
        print(official_over_ours(summary["official"], summary["flowbench"], per_evaluation=True))


def main(argv: list[str] | None = None) -> None:
    """Entry point: a bad option or input ends with one message, not a traceback."""
    cli(run, parse_args, argv)


if __name__ == "__main__":
    main()
