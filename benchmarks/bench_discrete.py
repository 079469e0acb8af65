"""Speed and memory of the discrete flows (RealNVP, Glow, i-ResNet): one training step.

    python benchmarks/bench_discrete.py                 # interleaved: the cases with a normflows twin
    python benchmarks/bench_discrete.py --separate      # every case, each measurement in its own process
    python benchmarks/bench_discrete.py --quick         # fewer steps
    python benchmarks/bench_discrete.py --device cuda   # on a GPU (default: cpu)

Interleaved (the default): per case, in one process, normflows' twin in a bare loop, our model in
the same bare loop and our model in the harness's loop (``bench.train.Trainer``: the body of its
``fit`` loop around ``_step``) take their steps in turn, the order reversed every step, so load from
other processes hits all three alike. CPU (process) seconds per step, median over the timed steps,
and the ratios: normflows / harness (speed of ours in the harness relative to normflows; >= 1.0
means no slower) and harness / bare - 1 (what the harness adds to a step). ``--profile`` adds a
cProfile of the harness's steps (the top entries by own time). Cases: realnvp-tab (8 couplings,
6-D, batch 1,024), glow-img (L = 3, K = 4, 1x28x28, batch 64), iresnet-2d (4 blocks, 2-D, batch
1,024; normflows' twin: ``nf.flows.Residual`` over ``nf.nets.LipschitzMLP``).

Separate (``--separate``): for each case three numbers: seconds per step of the same architecture built with normflows
alone in a bare loop (Adam, mean NLL), of our model in the same bare loop, and of our model inside
the harness's loop (``bench.train.Trainer``, on a synthetic dataset of the same shape), with the
peak memory of each (max RSS growth of a fresh process on a CPU, the allocator's peak on a GPU).
Ratios: ours / normflows (what our model adds: batch norm, split priors, our series estimator)
and harness / bare (what the harness adds per step).

``--device cuda``: models and batches on the GPU, the device synchronised before and after every
timed step (the CPU seconds then include the wait for the GPU).
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

BATCH = {"toy": 1024, "tabular": 1024, "image": 64}
SHAPE = {"toy": (2,), "tabular": (6,), "image": (1, 28, 28)}
INTERLEAVED = ("realnvp-tab", "glow-img", "iresnet-2d")  # the default run: cases with a normflows twin

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
    "iresnet-2d": ("iresnet", {"n_blocks": 4, "hidden": 128, "n_hidden": 2, "train_series_terms": 5}, "toy",
                   "nf_residual", "2-D, 4 blocks, 128-128, 5 series terms, 1 probe"),
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


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU), so a clock read times it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def bare_steps(net: torch.nn.Module, log_prob, batch: torch.Tensor, steps: int, warmup: int = 3) -> list[float]:
    """Fastest seconds of a mean-NLL Adam step on one fixed batch (the minimum filters other
    processes' load on a shared machine; the median is in the JSON of each case)."""
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(warmup + steps):
        synchronize(batch.device)
        start = time.perf_counter()
        loss = -log_prob(batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        synchronize(batch.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _synthetic_dataset(name: str, root, *, kind: str = "tabular", n: int = 8192):
    """A dataset of the case's shape for the harness's loop (random values; speed only). Images are
    8-bit values with the image loaders' preprocessing (dequantise, logit), as real runs have it."""
    from bench.data.base import DataInfo, Dataset, Split

    gen = torch.Generator().manual_seed(0)
    shape = SHAPE[kind]
    if kind == "image":
        from bench.data.images import make_preprocess

        x = torch.randint(0, 256, (n, *shape), generator=gen).float()
        info = DataInfo(name, kind, shape, metric="bpd", levels=256)
        return Dataset(info, Split(x), Split(x[:256]), Split(x[:256]), preprocess=make_preprocess(256))
    x = torch.randn(n, *shape, generator=gen)
    return Dataset(DataInfo(name, kind, shape), Split(x), Split(x[:256]), Split(x[:256]))


def make_trainer(model: str, hp: dict, kind: str, steps: int, tmp: Path, device: str = "cpu"):
    """``bench.train.Trainer`` for ``model`` on a synthetic dataset of the kind's shape (registered
    as ``bench-<kind>``), Adam lr 1e-4, no evaluation or checkpoint within ``steps``."""
    from bench.data import REGISTRY
    from bench.data.base import GENERATED
    from bench.data.registry import register_dataset
    from bench.fields import TRAIN_DEFAULTS
    from bench.spec import RunSpec
    from bench.store import RunRecord
    from bench.train import Trainer

    name = f"bench-{kind}"
    if name not in REGISTRY:
        register_dataset(name, kind=kind, description=f"synthetic {kind} data of the benchmark's shape (speed only)",
                         metric="bpd" if kind == "image" else "nll", files=GENERATED)(_synthetic_dataset)
    train = {**TRAIN_DEFAULTS, "max_steps": steps + 10, "batch_size": BATCH[kind], "lr": 1e-4,
             "eval_every": 10**9, "checkpoint_every": 10**9, "eval_max_examples": 64, "eval_batch_size": 64}
    spec = RunSpec("bench", model, name, 0, hp, {"kind": kind}, train, "bpd" if kind == "image" else "nll")
    record = RunRecord(tmp, "bench", spec.run_id)
    record.create(spec.to_dict())
    return Trainer(spec, record, device=device, progress=False)


def harness_step(trainer) -> None:
    """One iteration of ``Trainer.fit``'s loop minus the progress bar: ``timed_step`` (the solve
    limits, the batch draw, preprocessing, learning rate, training loss, backward, Adam, the NFE
    read and the step's bookkeeping) and the budget check."""
    trainer.timed_step(None)
    trainer.state.stop_reason = trainer._budget_reached()


def harness_steps(model: str, hp: dict, kind: str, steps: int, tmp: Path, device: str = "cpu") -> list[float]:
    """Seconds of each of ``bench.train.Trainer``'s training steps on a synthetic dataset of the shape."""
    trainer = make_trainer(model, hp, kind, steps, tmp, device)
    times = []
    for i in range(3 + steps):
        synchronize(trainer.device)
        start = time.perf_counter()
        harness_step(trainer)
        synchronize(trainer.device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return times


def interleaved_case(case: str, steps: int, warmup: int = 3, profile: bool = False,
                     device: str = "cpu") -> dict[str, dict[str, float]]:
    """normflows' twin (bare loop), ours (bare loop) and ours in the harness's loop, in this process,
    one step each in turn, the order reversed every step. Per variant: median and minimum CPU
    (process) seconds and median wall seconds over the ``steps`` timed steps, and the parameter count."""
    import cProfile
    import pstats

    from baselines.registry import get_builder
    from bench.data.base import DataInfo

    model, hp, kind, twin, _ = CASES[case]
    shape = SHAPE[kind]
    torch.manual_seed(0)
    batch = torch.rand(BATCH[kind], *shape) if kind == "image" else torch.randn(BATCH[kind], *shape)
    if kind == "image":  # our bare model sees what the harness feeds it: logit of dequantised pixels
        from bench.data.images import make_preprocess

        batch, _ = make_preprocess(256)((batch * 255).round(), True)
    batch = batch.to(device)
    variants = {}
    if twin:
        nf_net = globals()[twin](shape[0] if len(shape) == 1 else shape, hp).to(device)
        variants["normflows"] = bare_stepper(nf_net, getattr(nf_net, "log_prob_x", nf_net.log_prob), batch)
    ours = get_builder(model)(DataInfo("bench", kind, shape), **hp).to(device)
    ours.train()
    variants["ours bare"] = bare_stepper(ours, ours.log_prob, batch)
    tmp = tempfile.TemporaryDirectory()
    trainer = make_trainer(model, hp, kind, warmup + steps, Path(tmp.name), device)
    variants["ours harness"] = lambda: harness_step(trainer)
    profiler = cProfile.Profile() if profile else None
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for i in range(warmup + steps):
        for name in (names if i % 2 == 0 else names[::-1]):
            if profiler is not None and name == "ours harness" and i >= warmup:
                profiler.enable()
            synchronize(device)
            c, w = time.process_time(), time.perf_counter()
            variants[name]()
            synchronize(device)
            c, w = time.process_time() - c, time.perf_counter() - w
            if profiler is not None:
                profiler.disable()
            if i >= warmup:
                cpu[name].append(c)
                wall[name].append(w)
    tmp.cleanup()
    if profiler is not None:
        print(f"-- {case}: cProfile of the harness's {steps} steps, top 15 by own time")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    params = {"normflows": sum(p.numel() for p in nf_net.parameters() if p.requires_grad) if twin else 0,
              "ours": sum(p.numel() for p in ours.parameters() if p.requires_grad)}
    return {name: {"cpu": statistics.median(cpu[name]), "cpu_min": min(cpu[name]),
                   "wall": statistics.median(wall[name]), "params": params["normflows" if name == "normflows" else "ours"]}
            for name in variants}


def bare_stepper(net: torch.nn.Module, log_prob, batch: torch.Tensor):
    """A closure taking one mean-NLL Adam step of ``net`` on the fixed ``batch`` (the bare loop)."""
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = -log_prob(batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run_case(case: str, which: str, steps: int, device: str = "cpu") -> dict:
    """One measurement in this (fresh) process: which = normflows | bare | harness."""
    from baselines.registry import get_builder
    from bench.data.base import DataInfo

    torch.manual_seed(0)
    model, hp, kind, twin, _ = CASES[case]
    shape = SHAPE[kind]
    batch = torch.rand(BATCH[kind], *shape) if kind == "image" else torch.randn(BATCH[kind], *shape)
    batch = batch.to(device)
    rss0 = _rss_mb()
    if which == "normflows":
        net = globals()[twin](shape[0] if len(shape) == 1 else shape, hp).to(device)
        fn = getattr(net, "log_prob_x", net.log_prob)
        seconds = bare_steps(net, fn, batch, steps)
    elif which == "bare":
        net = get_builder(model)(DataInfo("bench", kind, shape), **hp).to(device)
        net.train()
        seconds = bare_steps(net, net.log_prob, batch, steps)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            seconds = harness_steps(model, hp, kind, steps, Path(tmp), device)
        net = None
    params = sum(p.numel() for p in net.parameters() if p.requires_grad) if net is not None else None
    cuda = torch.device(device).type == "cuda"
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _rss_mb() - rss0
    return {"seconds": min(seconds), "median_seconds": statistics.median(seconds), "peak_mb": peak,
            "params": params}


def device_name(device: str) -> str:
    """How the tables name the device: CPU, or the GPU's name."""
    return "CPU" if torch.device(device).type == "cpu" else f"{torch.cuda.get_device_name(device)} ({device})"


def interleaved(cases: list[str], steps: int, threads: int, profile: bool, device: str = "cpu") -> None:
    """The interleaved table: per case CPU ms per step of each variant and the two ratios."""
    torch.set_num_threads(threads)
    print(f"one training step, interleaved in one process (order reversed every step), median CPU time of "
          f"{steps} steps after 3 warm-up steps; torch {torch.__version__}, {threads} thread(s), "
          f"{device_name(device)}\n")
    print(f"{'case':<12} {'params nf/ours':>17} {'normflows':>10} {'ours bare':>10} {'harness':>10} "
          f"{'nf/harness':>11} {'harness/bare-1':>15}")
    for case in cases:
        r = interleaved_case(case, steps, profile=profile, device=device)
        nf_r, bare, harness = r.get("normflows"), r["ours bare"], r["ours harness"]
        params = f"{nf_r['params'] if nf_r else 0:,}/{bare['params']:,}"
        speed = f"{nf_r['cpu'] / harness['cpu']:10.2f}x" if nf_r else f"{'-':>11}"
        nf_ms = f"{1e3 * nf_r['cpu']:8.1f} ms" if nf_r else f"{'-':>10}"
        print(f"{case:<12} {params:>17} {nf_ms} {1e3 * bare['cpu']:7.1f} ms {1e3 * harness['cpu']:7.1f} ms "
              f"{speed} {100 * (harness['cpu'] / bare['cpu'] - 1):>+14.1f}%")
        mins = "/".join(f"{1e3 * r[k]['cpu_min']:.1f}" for k in r)
        walls = "/".join(f"{1e3 * r[k]['wall']:.1f}" for k in r)
        print(f"{'':<12} {CASES[case][4]}; min CPU {mins} ms, median wall {walls} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 timed steps instead of 15")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--which", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--only", help="comma-separated cases: " + ", ".join(CASES))
    parser.add_argument("--separate", action="store_true", help="each measurement in its own process, not interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the interleaved run (default 1)")
    parser.add_argument("--profile", action="store_true", help="interleaved: cProfile the harness's steps")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    args = parser.parse_args()
    steps = args.steps or (5 if args.quick else 15)
    if args.case:
        print(json.dumps(run_case(args.case, args.which, steps, args.device)))
        return
    cases = args.only.split(",") if args.only else (list(CASES) if args.separate else list(INTERLEAVED))
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"--only: unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if not args.separate:
        interleaved(cases, steps, args.threads, args.profile, args.device)
        return
    torch_threads = torch.get_num_threads()
    peak = ("max-RSS growth of a fresh process" if torch.device(args.device).type == "cpu"
            else "the allocator's peak (torch.cuda.max_memory_allocated)")
    print(f"one training step, fastest of {steps} (after 3 warm-up steps), torch {torch.__version__}, "
          f"{torch_threads} threads, {device_name(args.device)}; peak = {peak}\n")
    print(f"{'case':<15} {'params':>9} {'normflows':>11} {'ours bare':>11} {'ours harness':>13} "
          f"{'ours/nf':>8} {'harness/bare':>13} {'peak MB nf/ours/harness':>25}")
    here = Path(__file__).resolve()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here.parent.parent),
                                                         os.environ.get("PYTHONPATH", "")])}
    for case in cases:
        twin = CASES[case][3]
        out = {}
        for which in (["normflows"] if twin else []) + ["bare", "harness"]:
            proc = subprocess.run([sys.executable, str(here), "--case", case, "--which", which, "--steps", str(steps),
                                   "--device", args.device],
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
