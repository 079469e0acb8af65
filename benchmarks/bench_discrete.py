"""Speed and memory of the discrete flows (RealNVP, Glow, i-ResNet): one training step.

    python benchmarks/bench_discrete.py            # every case, each in its own process
    python benchmarks/bench_discrete.py --quick    # fewer steps

For each case three numbers: seconds per step of the same architecture built with normflows
alone in a bare loop (Adam, mean NLL), of our model in the same bare loop, and of our model inside
the harness's loop (``bench.train.Trainer``, on a synthetic dataset of the same shape), with the
peak memory of each (max RSS growth of a fresh process on a CPU, the allocator's peak on a GPU).
Ratios: ours / normflows (what our model adds: batch norm, split priors, our series estimator)
and harness / bare (what the harness adds per step).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BATCH = {"tabular": 1024, "image": 64}
SHAPE = {"tabular": (6,), "image": (1, 28, 28)}

# case -> (model name, hparams, kind, normflows twin or None, note)
CASES: dict[str, tuple[str, dict, str, str | None, str]] = {
    "realnvp-tab": ("realnvp", {"n_layers": 8, "hidden": 256, "n_hidden": 2, "batch_norm": False}, "tabular",
                    "nf_realnvp", "8 couplings, MLP 256-256, no batch norm (as normflows)"),
    "realnvp-tab-bn": ("realnvp", {"n_layers": 8, "hidden": 256, "n_hidden": 2, "batch_norm": True}, "tabular",
                       "nf_realnvp", "the same with batch norm between couplings"),
    "glow-tab": ("glow", {"n_steps": 8, "hidden": 256, "n_hidden": 2}, "tabular", "nf_glow_vector",
                 "K = 8 steps, MLP 256-256"),
    "iresnet-tab": ("iresnet", {"n_blocks": 4, "hidden": 128, "n_hidden": 2, "train_series_terms": 5}, "tabular",
                    "nf_residual", "4 blocks, 128-128, 5 series terms, 1 probe"),
    "glow-img": ("glow", {"n_levels": 3, "n_steps": 4, "hidden": 64}, "image", "nf_glow_image",
                 "L = 3, K = 4, hidden 64"),
    "realnvp-img": ("realnvp", {"n_scales": 2, "hidden": 32, "n_blocks": 2}, "image", None,
                    "2 scales, 32 channels, 2 res blocks (no normflows twin: checkerboard masks are ours)"),
    "iresnet-img": ("iresnet", {"n_stages": 2, "n_blocks": 2, "hidden": 32, "train_series_terms": 5}, "image", None,
                    "2 stages of 2 blocks, 32 channels (no normflows twin: see docs/models.md)"),
}


# -- normflows-only twins ---------------------------------------------------------------------------
def nf_realnvp(dim: int, hp: dict) -> torch.nn.Module:
    import normflows as nf

    flows = []
    for _ in range(hp["n_layers"]):
        net = nf.nets.MLP([(dim + 1) // 2] + [hp["hidden"]] * hp["n_hidden"] + [2 * (dim // 2)], init_zeros=True)
        flows += [nf.flows.AffineCouplingBlock(net, scale_map="exp"), nf.flows.Permute(dim, mode="swap")]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)


def nf_glow_vector(dim: int, hp: dict) -> torch.nn.Module:
    import normflows as nf

    flows = []
    for _ in range(hp["n_steps"]):
        net = nf.nets.MLP([(dim + 1) // 2] + [hp["hidden"]] * hp["n_hidden"] + [2 * (dim // 2)], init_zeros=True)
        flows += [nf.flows.AffineCouplingBlock(net, scale_map="sigmoid"), nf.flows.InvertibleAffine(dim, use_lu=True),
                  nf.flows.ActNorm((dim,))]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)


def nf_residual(dim: int, hp: dict) -> torch.nn.Module:
    import normflows as nf

    flows = []
    for _ in range(hp["n_blocks"]):
        net = nf.nets.LipschitzMLP([dim] + [hp["hidden"]] * hp["n_hidden"] + [dim], lipschitz_const=0.9)
        flows += [nf.flows.Residual(net, reduce_memory=False, n_power_series=hp["train_series_terms"]),
                  nf.flows.ActNorm((dim,))]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)


def nf_glow_image(shape: tuple[int, ...], hp: dict) -> torch.nn.Module:
    """normflows' MultiscaleFlow with GlowBlocks and per-level learned diagonal Gaussians (no split priors)."""
    import normflows as nf

    from baselines.layers import squeezable, squeezed

    data_levels, factor_shapes, cur = [], [], tuple(shape)
    for lvl in range(hp["n_levels"]):
        level = []
        if squeezable(cur):
            level.append(nf.flows.Squeeze())
            cur = squeezed(cur)
        level += [nf.flows.GlowBlock(cur[0], hp["hidden"], split_mode="channel", scale=True) for _ in range(hp["n_steps"])]
        data_levels.append(level)
        if lvl < hp["n_levels"] - 1:
            factor_shapes.append((cur[0] - cur[0] // 2, cur[1], cur[2]))
            cur = (cur[0] // 2, cur[1], cur[2])
        else:
            factor_shapes.append(cur)
    n = len(data_levels)
    flows = [list(reversed(data_levels[n - 1 - i])) for i in range(n)]  # index 0 = deepest level
    q0 = [nf.distributions.DiagGaussian(factor_shapes[n - 1 - i]) for i in range(n)]
    merges = [nf.flows.Merge() for _ in range(n - 1)]
    model = nf.MultiscaleFlow(q0, flows, merges, class_cond=False)
    model.log_prob_x = lambda x: model.log_prob(x, None)  # y is positional in normflows 1.7.3
    return model


# -- measurements ---------------------------------------------------------------------------------
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_steps(net: torch.nn.Module, log_prob, batch: torch.Tensor, steps: int, warmup: int = 3) -> list[float]:
    """Fastest seconds of a mean-NLL Adam step on one fixed batch (the minimum filters other
    processes' load on a shared machine; the median is in the JSON of each case)."""
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = -log_prob(batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _synthetic_dataset(name: str, root, kind: str = "tabular", n: int = 8192):
    """A dataset of the case's shape for the harness's loop (random values; speed only)."""
    from bench.data.base import DataInfo, Dataset, Split

    gen = torch.Generator().manual_seed(0)
    shape = SHAPE[kind]
    x = torch.rand(n, *shape, generator=gen) if kind == "image" else torch.randn(n, *shape, generator=gen)
    info = DataInfo(name, kind, shape, levels=256 if kind == "image" else None)
    return Dataset(info, Split(x), Split(x[:256]), Split(x[:256]))


def harness_steps(model: str, hp: dict, kind: str, steps: int, tmp: Path) -> list[float]:
    """Seconds of each of ``bench.train.Trainer``'s training steps on a synthetic dataset of the shape."""
    from bench.data import REGISTRY, DatasetEntry
    from bench.spec import TRAIN_DEFAULTS, RunSpec
    from bench.store import RunRecord
    from bench.train import Trainer

    name = f"bench-{kind}"
    REGISTRY[name] = DatasetEntry("bench_discrete:_synthetic_dataset", kind, "synthetic", {"kind": kind})
    train = {**TRAIN_DEFAULTS, "max_steps": steps + 3, "batch_size": BATCH[kind], "lr": 1e-4,
             "eval_every": 10**9, "checkpoint_every": 10**9, "eval_max_examples": 64, "eval_batch_size": 64}
    spec = RunSpec("bench", model, name, 0, hp, {"kind": kind}, train, "nll")
    record = RunRecord(tmp, "bench", spec.run_id)
    record.create(spec.to_dict())
    trainer = Trainer(spec, record, device="cpu", progress=False)
    times = []
    for i in range(3 + steps):  # the loop's step: batch draw, preprocess, lr, training_loss, backward, Adam
        start = time.perf_counter()
        trainer._step()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return times


def run_case(case: str, which: str, steps: int) -> dict:
    """One measurement in this (fresh) process: which = normflows | bare | harness."""
    from baselines.registry import get_builder
    from bench.data.base import DataInfo

    torch.manual_seed(0)
    model, hp, kind, twin, _ = CASES[case]
    shape = SHAPE[kind]
    batch = torch.rand(BATCH[kind], *shape) if kind == "image" else torch.randn(BATCH[kind], *shape)
    rss0 = _rss_mb()
    if which == "normflows":
        net = globals()[twin](shape[0] if kind == "tabular" else shape, hp)
        fn = getattr(net, "log_prob_x", net.log_prob)
        seconds = bare_steps(net, fn, batch, steps)
    elif which == "bare":
        net = get_builder(model)(DataInfo("bench", kind, shape), **hp)
        net.train()
        seconds = bare_steps(net, net.log_prob, batch, steps)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            seconds = harness_steps(model, hp, kind, steps, Path(tmp))
        net = None
    params = sum(p.numel() for p in net.parameters() if p.requires_grad) if net is not None else None
    return {"seconds": min(seconds), "median_seconds": statistics.median(seconds), "peak_mb": _rss_mb() - rss0,
            "params": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 timed steps instead of 15")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--which", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--only", help="comma-separated cases: " + ", ".join(CASES))
    args = parser.parse_args()
    steps = args.steps or (5 if args.quick else 15)
    if args.case:
        print(json.dumps(run_case(args.case, args.which, steps)))
        return
    torch_threads = torch.get_num_threads()
    print(f"one training step, fastest of {steps} (after 3 warm-up steps), torch {torch.__version__}, "
          f"{torch_threads} threads, CPU; peak = max-RSS growth of a fresh process\n")
    print(f"{'case':<15} {'params':>9} {'normflows':>11} {'ours bare':>11} {'ours harness':>13} "
          f"{'ours/nf':>8} {'harness/bare':>13} {'peak MB nf/ours/harness':>25}")
    here = Path(__file__).resolve()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here.parent.parent),
                                                         os.environ.get("PYTHONPATH", "")])}
    cases = args.only.split(",") if args.only else list(CASES)
    for case in cases:
        twin = CASES[case][3]
        out = {}
        for which in (["normflows"] if twin else []) + ["bare", "harness"]:
            proc = subprocess.run([sys.executable, str(here), "--case", case, "--which", which, "--steps", str(steps)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode:
                raise SystemExit(f"{case}/{which} failed:\n{proc.stderr[-2000:]}")
            out[which] = json.loads(proc.stdout.strip().splitlines()[-1])
        nf_s = out.get("normflows", {}).get("seconds")
        bare, harness = out["bare"]["seconds"], out["harness"]["seconds"]
        ratio = f"{bare / nf_s:8.2f}" if nf_s else f"{'-':>8}"
        mem = "/".join(f"{out[w]['peak_mb']:.0f}" if w in out else "-" for w in ("normflows", "bare", "harness"))
        print(f"{case:<15} {out['bare']['params']:>9,} {(f'{1e3 * nf_s:.1f} ms' if nf_s else '-'):>11} "
              f"{1e3 * bare:>8.1f} ms {1e3 * harness:>10.1f} ms {ratio} {100 * (harness / bare - 1):>+12.1f}% "
              f"{mem:>25}")
        medians = "/".join(f"{1e3 * out[w]['median_seconds']:.0f}" if w in out else "-"
                           for w in ("normflows", "bare", "harness"))
        print(f"{'':<15} {CASES[case][4]}; medians nf/ours/harness {medians} ms")


if __name__ == "__main__":
    main()
