"""NFE and seconds per training step of CCNF, InfoCNF (fixed tolerances) and InfoCNF with learned
tolerances, side by side, at suites/infocnf-small.yaml's settings (CPU).

For each dataset of the suite (8gaussians, digits) and each model: the suite's model config,
batch size and learning rate, ``--steps`` training steps (Adam, the suite's data, seeded), then
the median CPU seconds a step, the mean forward / backward NFE a step over the last half of the
steps (the learned policy moves during training), the learned tolerances at the end, and one
evaluation solve's NFE at the evaluation tolerance (1e-5). The paper's direction (InfoCNF fewer
NFE than CCNF; learned fewer than fixed) is printed next to what was measured, on the paper's
count: the function evaluations of a training iteration, forward and backward solves together
(Table 1). The suite backpropagates directly (no backward solve, backward NFE 0); ``--adjoint``
adds the adjoint's backward solves to the count.

    python benchmarks/bench_infocnf.py [--steps 60] [--threads 1] [--only 8gaussians] [--adjoint]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from baselines.registry import get_builder
from bench.data import load_dataset
from bench.spec import load_suite

MODELS = ("ccnf", "infocnf", "infocnf_learned")


def measure(spec, steps: int, adjoint: bool | None) -> dict:
    """Train ``spec``'s model for ``steps`` steps on its data; timings, NFE and learned tolerances."""
    data = load_dataset(spec.dataset, spec.data_config)
    config = dict(spec.model_config)
    if adjoint is not None:
        config["adjoint"] = adjoint
    torch.manual_seed(spec.seed)
    model = get_builder(spec.model)(data.info, **config)
    opt = torch.optim.Adam(model.parameters(), lr=spec.train["lr"])
    gen = torch.Generator().manual_seed(spec.seed)
    batch = min(spec.train["batch_size"], len(data.train))
    cpu, fwd, bwd, tols = [], [], [], {}
    for _ in range(steps):
        idx = torch.randint(0, len(data.train), (batch,), generator=gen)
        x, y = data.train.x[idx], data.train.y[idx]
        if data.preprocess is not None:
            x, _ = data.preprocess(x, True)
        start = time.process_time()
        loss, stats = model.training_loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        cpu.append(time.process_time() - start)
        f, b = model.read_nfe()
        fwd.append(f)
        bwd.append(b)
        tols = {k: v for k, v in stats.items() if k.startswith("tol_")}
    model.eval()
    x, y = data.test.x[:500], data.test.y[:500]
    if data.preprocess is not None:
        x, _ = data.preprocess(x, False)
    with torch.no_grad():
        model.evaluate(x, y)
    eval_nfe = model.read_nfe()[0]
    half = steps // 2
    return {"s_step": statistics.median(cpu), "nfe_f": statistics.mean(fwd[half:]),
            "nfe_b": statistics.mean(bwd[half:]), "nfe_f_first": statistics.mean(fwd[:half]),
            "eval_nfe": eval_nfe, "tols": tols}


def verdict(rows: dict[str, dict]) -> str:
    """The paper's two NFE claims (Table 1: forward + backward NFE of a training iteration) against the
    measured forward + backward NFE a step over the last half."""
    total = {m: r["nfe_f"] + r["nfe_b"] for m, r in rows.items()}
    out = []
    if "ccnf" in total and "infocnf" in total:
        rel = 100 * (total["infocnf"] / total["ccnf"] - 1)
        out.append(f"InfoCNF vs CCNF: {rel:+.0f}% NFE ({'as' if rel < 0 else 'not as'} the paper: -16%)")
    if "infocnf" in total and "infocnf_learned" in total:
        rel = 100 * (total["infocnf_learned"] / total["infocnf"] - 1)
        out.append(f"learned vs fixed: {rel:+.0f}% NFE ({'as' if rel < 0 else 'not as'} the paper: -21%)")
    return "; ".join(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", default=None, help="one dataset of the suite (8gaussians or digits)")
    p.add_argument("--adjoint", action="store_true", help="backpropagate by the adjoint (the suite: direct)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    specs = load_suite("infocnf-small").runs(only={"dataset": {args.only}} if args.only else None)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.steps} training steps a model, "
          f"suites/infocnf-small.yaml settings{', adjoint' if args.adjoint else ''}; s/step = median process CPU "
          "seconds; NFE f/b = mean forward/backward NFE a step over the last half of the steps (first half in "
          "brackets; f + b is the paper's count); eval NFE = one evaluation pass of 500 test examples at 1e-5 "
          "(learned model: two passes)")
    print(f"{'dataset':10} {'model':16} {'batch':>5} {'s/step':>7} {'NFE f':>14} {'NFE b':>6} {'eval NFE':>8}  "
          "learned tolerances at the end")
    for dataset in dict.fromkeys(s.dataset for s in specs):
        rows = {}
        for spec in (s for s in specs if s.dataset == dataset and s.model in MODELS):
            r = rows[spec.model] = measure(spec, args.steps, True if args.adjoint else None)
            tols = " ".join(f"{v:.1e}" for v in r["tols"].values())
            print(f"{dataset:10} {spec.model:16} {spec.train['batch_size']:5d} {r['s_step']:7.3f} "
                  f"{r['nfe_f']:6.1f} ({r['nfe_f_first']:5.1f}) {r['nfe_b']:6.1f} {r['eval_nfe']:8d}  {tols}",
                  flush=True)
        print(f"{dataset:10} {verdict(rows)}", flush=True)


if __name__ == "__main__":
    main()
