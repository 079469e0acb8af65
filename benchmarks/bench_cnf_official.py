"""FFJORD's toy model, ours beside the official code in one process: NFE and CPU seconds per step.

The official setting (rtqichen/ffjord train_toy.py defaults): 8gaussians, batch 100, 3x64
concat-squash tanh, T = 0.5, exact divergence, dopri5 atol = rtol = 1e-5, Adam lr 1e-3. Both models
start from the same weights (ours copied into the official layers), see the same batches, and
train interleaved step by step (the order alternates), so machine load hits both alike.

    python benchmarks/bench_cnf_official.py --official /path/to/ffjord [--steps 100] [--direct]
        [--fixed-end-time] [--seminorm] [--float64] [--compile] [--warmup 3] [--device cuda]

``--official DIR`` is a checkout of rtqichen/ffjord; its model is imported from there (nothing of
it is copied here). Without it, ours is measured alone. The official code cuts T's gradient
(``tensor([0, sqrt_T ** 2])``), so its T never trains; ``--fixed-end-time`` fixes ours too, for
a like-with-like count (ours otherwise spends one evaluation a step on T's gradient).
``--compile`` adds a third model to the interleaved loop: ours with ``torch.compile``'d dynamics
(``flowbench run --compile``), from the same weights. The first ``--warmup`` steps (where
compilation happens) are left out of every model's figures; their wall time is printed.
``--device`` (default cpu) puts both models and the batches there, the device synchronised around
every timed step.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time

import torch

from baselines.ffjord import build
from bench.data.base import DataInfo


def eight_gaussians(n: int, gen: torch.Generator) -> torch.Tensor:
    """FFJORD's 8gaussians: radius-4 centres, std 0.5, divided by 1.414."""
    angle = torch.randint(0, 8, (n,), generator=gen) * (math.pi / 4)
    centres = torch.stack([angle.cos(), angle.sin()], 1) * 4
    return (centres + 0.5 * torch.randn(n, 2, generator=gen)) / 1.414


def official_model(path: str):
    """The official toy model (train_misc.build_model_tabular with train_toy.py's defaults) and its NFE counter."""
    sys.path.insert(0, path)
    import train_misc  # noqa: E402  (from the official checkout)

    class Args:
        layer_type, dims, num_blocks, time_length, train_T = "concatsquash", "64-64-64", 1, 0.5, True
        divergence_fn, nonlinearity, solver, atol, rtol = "brute_force", "tanh", "dopri5", 1e-5, 1e-5
        batch_norm, residual, rademacher, bn_lag, step_size = False, False, False, 0, None
        test_solver = test_atol = test_rtol = None

    return train_misc.build_model_tabular(Args, 2, None), train_misc.count_nfe


def copy_weights(ours, official) -> None:
    """Our toy model's weights into the official layers (concat-squash: layer, hyper gate, hyper bias)."""
    net = ours.blocks[0].func.net
    layers = official.chain[0].odefunc.diffeq.layers
    with torch.no_grad():
        for i, layer in enumerate(layers):
            layer._layer.weight.copy_(net.layers[i].weight)
            layer._layer.bias.copy_(net.layers[i].bias)
            layer._hyper_gate.weight.copy_(net.gate_w[i][:, None])
            layer._hyper_gate.bias.copy_(net.gate_b[i])
            layer._hyper_bias.weight.copy_(net.bias_w[i][:, None])
        official.chain[0].sqrt_end_time.copy_(ours.blocks[0].func.sqrt_end_time)


def official_loss(model, x: torch.Tensor) -> torch.Tensor:
    z, delta_logp = model(x, torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device))
    log_pz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(1, keepdim=True)
    return -(log_pz - delta_logp).mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", metavar="DIR", help="checkout of rtqichen/ffjord to measure beside ours")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--direct", action="store_true", help="our model with direct backpropagation (official: adjoint)")
    ap.add_argument("--fixed-end-time", action="store_true", help="do not train our T (the official T never trains)")
    ap.add_argument("--seminorm", action="store_true", help="our adjoint with the seminorm (Kidger et al. 2021)")
    ap.add_argument("--float64", action="store_true", help="both in double precision (step sequences then agree exactly)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="ours with torch.compile'd dynamics")
    ap.add_argument("--warmup", type=int, default=3, help="steps left out of the figures (compilation, caches)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.float64 else torch.float32
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    torch.manual_seed(0)
    ours = build(DataInfo("8gaussians", "toy", (2,)), adjoint=not args.direct, adjoint_seminorm=args.seminorm,
                 train_end_time=not args.fixed_end_time).to(device, dtype)
    models = {"flowbench": ours}
    if args.compile:
        from baselines.cnf import compile_dynamics
        models["compiled"] = copy.deepcopy(ours)
        compile_dynamics(models["compiled"])
    if args.official:
        official, count_nfe = official_model(args.official)
        official = official.to(device, dtype)
        copy_weights(ours, official)
        models["official"] = official
        x = eight_gaussians(1000, torch.Generator().manual_seed(1)).to(device, dtype)
        ours.eval(), official.eval()
        with torch.no_grad():
            gap = abs(float(ours.log_prob(x).mean()) + float(official_loss(official, x)))
        ours.train(), official.train()
        ours.read_nfe()
        print(f"same weights, 1,000 points: |mean log p (ours) - mean log p (official)| = {gap:.2e}")
    optimizers = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    rows: dict[str, list[tuple[float, int, int]]] = {k: [] for k in models}
    gen = torch.Generator().manual_seed(2)
    warmup_wall: dict[str, float] = {}
    for step in range(args.warmup + args.steps):
        x = eight_gaussians(100, gen).to(device, dtype)
        order = list(models) if step % 2 == 0 else list(reversed(models))
        for name in order:
            model, opt = models[name], optimizers[name]
            sync()
            start, wall_start = time.process_time(), time.perf_counter()
            if name == "official":
                loss = official_loss(model, x)
                forward = count_nfe(model)
                opt.zero_grad()
                loss.backward()
                opt.step()
                backward = count_nfe(model) - forward
            else:
                loss, _ = model.training_loss(x)
                opt.zero_grad()
                loss.backward()
                opt.step()
                forward, backward = model.read_nfe()
            sync()
            if step >= args.warmup:
                rows[name].append((time.process_time() - start, int(forward), int(backward)))
            else:
                warmup_wall[name] = warmup_wall.get(name, 0.0) + time.perf_counter() - wall_start

    method = "direct backprop" if args.direct else ("adjoint, seminorm" if args.seminorm else "adjoint")
    if args.warmup:
        print(f"warm-up ({args.warmup} steps, left out), wall s: "
              + ", ".join(f"{k} {v:.1f}" for k, v in warmup_wall.items()))
    print(f"{args.steps} steps, batch 100, {method} (ours), "
          f"T {'fixed' if args.fixed_end_time else 'trained'} (ours), {dtype}, {args.threads} thread(s), "
          + ("" if device.type == "cpu" else f"on {torch.cuda.get_device_name(device)}, ") + "CPU s:")
    print(f"{'':10s} {'s/step':>8s} {'NFE fwd':>8s} {'NFE bwd':>8s} {'ms/eval':>8s}")
    summary = {}
    for name, r in rows.items():
        sec = statistics.mean(t for t, _, _ in r)
        fwd = statistics.mean(f for _, f, _ in r)
        bwd = statistics.mean(b for _, _, b in r)
        summary[name] = sec
        print(f"{name:10s} {sec:8.4f} {fwd:8.1f} {bwd:8.1f} {1000 * sec / (fwd + bwd):8.2f}")
    if "official" in summary:
        for name in (n for n in summary if n != "official"):
            print(f"speed-up, {name} (official s/step / {name} s/step): {summary['official'] / summary[name]:.2f}x")


if __name__ == "__main__":
    main()
