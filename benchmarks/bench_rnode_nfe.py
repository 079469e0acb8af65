"""Does RNODE end with fewer function evaluations than FFJORD on the same budget? (issue 5)

Trains FFJORD (its toy defaults: T = 0.5 learned) and RNODE (T = 1, kinetic + Jacobian
regularisers) with the same dynamics network (3x64 concat-squash, tanh), solver (dopri5, atol =
rtol = 1e-5, direct backpropagation), batch, learning rate and number of steps on a toy density,
through the harness (`flowbench run` on a generated suite, in a temporary results folder), and
prints per model: test NLL, forward NFE per training step over the last evaluation window, and the
NFE of the test evaluation at 1e-5; then RNODE / FFJORD ratios. Whichever way it comes out.

    python benchmarks/bench_rnode_nfe.py [--steps 600] [--seeds 0,1] [--weight 0.05] [--dataset 8gaussians]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SUITE = """name: rnode-nfe
metric: nll
datasets:
  {dataset}: {{n_train: 20000, n_val: 1000, n_test: 2000}}
models:
  ffjord: {{adjoint: false}}
  rnode: {{adjoint: false, solver: dopri5, atol: 1e-5, rtol: 1e-5, hidden: [64, 64, 64], kinetic: {w}, jacobian: {w}}}
train: {{batch_size: 256, lr: 1e-3, max_steps: {steps}, eval_every: {every}, checkpoint_every: {steps},
        eval_max_examples: 1000}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--weight", type=float, default=0.05, help="RNODE's kinetic and Jacobian weights")
    parser.add_argument("--dataset", default="8gaussians")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "rnode-nfe.yaml"
        suite.write_text(SUITE.format(dataset=args.dataset, w=args.weight, steps=args.steps,
                                      every=max(1, args.steps // 3)))
        results = Path(tmp) / "results"
        subprocess.run([sys.executable, "-m", "bench", "run", str(suite), "--results", str(results), "--seeds",
                        args.seeds, "--quiet", "--no-report"], check=True)
        rows: dict[str, list[tuple[float, float, float, float]]] = {}
        for run in sorted((results / "rnode-nfe").iterdir()):
            spec = json.loads((run / "spec.json").read_text())
            result = json.loads((run / "result.json").read_text())
            last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
            rows.setdefault(spec["model"], []).append((result["test"]["nll"], last["nfe_forward"],
                                                       result["test"]["nfe"], result["seconds_per_step"]))
    print(f"{args.dataset}, {args.steps} steps, batch 256, dopri5 1e-5, seeds {args.seeds}, RNODE weights {args.weight}")
    print(f"{'model':8} {'test NLL':>9} {'NFE/step (last window)':>23} {'test NFE @1e-5':>15} {'s/step':>7}")
    means = {}
    for model, vals in rows.items():
        means[model] = [statistics.mean(v[i] for v in vals) for i in range(4)]
        nll, nfe, test_nfe, sps = means[model]
        print(f"{model:8} {nll:9.3f} {nfe:23.1f} {test_nfe:15.1f} {sps:7.3f}")
    if {"ffjord", "rnode"} <= set(means):
        r, f = means["rnode"], means["ffjord"]
        print(f"RNODE / FFJORD: training NFE {r[1] / f[1]:.2f}x, test NFE {r[2] / f[2]:.2f}x, "
              f"NLL difference {r[0] - f[0]:+.3f} nats")


if __name__ == "__main__":
    main()
