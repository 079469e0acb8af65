"""Seconds per training step, NFE forward/backward and peak memory of FFJORD and RNODE (CPU).

Cases: the official FFJORD toy setting (8gaussians-like batch of 100 and 512, 3x64 concat-squash
tanh, T = 0.5, dopri5 1e-5, exact and Hutchinson divergence), a tabular batch, a small image batch;
each with the adjoint and with direct backpropagation. Prints one row a case and the ratio to the
official FFJORD figures measured on this machine kind (train_toy.py run here; docs/cnf.md).

    python benchmarks/bench_cnf.py [--steps 10] [--threads 2] [--quick] [--device cuda]

``--device`` (default cpu) runs the models there, the device synchronised around each timed step;
the official figures are CPU figures, so their ratios are printed on the CPU only.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from baselines.registry import get_builder
from bench.data.base import DataInfo

# official rtqichen/ffjord train_toy.py measured on this machine kind (docs/cnf.md): s/iter, NFE fwd, NFE bwd
OFFICIAL = {"toy-100-exact": (0.14, 28, 26), "toy-512-hutch": (0.135, 20, 20)}


def toy_batch(n: int, gen: torch.Generator) -> torch.Tensor:
    """8 Gaussians (FFJORD's toy density): radius-2 centres scaled by sqrt(2)... as in bench.data.toy."""
    angles = torch.randint(0, 8, (n,), generator=gen) * (torch.pi / 4)
    centres = torch.stack([angles.cos(), angles.sin()], 1) * 4
    return (centres + 0.5 * torch.randn(n, 2, generator=gen)) / 1.414


def synchronizer(device: torch.device):
    """What waits for the device's queued work before a clock is read (nothing on the CPU)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def measure(model: str, info: DataInfo, batch: torch.Tensor, steps: int, device: torch.device = torch.device("cpu"),
            **hparams) -> dict:
    torch.manual_seed(0)
    m = get_builder(model)(info, **hparams).to(device)
    batch, sync = batch.to(device), synchronizer(device)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    times, cpu, fwd, bwd, graph_mb = [], [], [], [], []
    for i in range(steps + 2):
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        saved = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = m.training_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        f, b = m.read_nfe()
        if i >= 2:  # warm-up steps left out
            times.append(elapsed)
            cpu.append(elapsed_cpu)
            graph_mb.append(saved[0] / 2**20)
            fwd.append(f)
            bwd.append(b)
    s = statistics.median(cpu)
    f, b = statistics.mean(fwd), statistics.mean(bwd)
    return {"s_step": s, "wall": statistics.median(times), "nfe_f": f, "nfe_b": b,
            "ms_per_fe": 1000 * s / max(1.0, f + b),
            "graph_mb": max(graph_mb), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def train_compare(iterations: int, adjoint: bool, seminorm: bool = False,
                  device: torch.device = torch.device("cpu")) -> dict:
    """The official toy run: 8gaussians, batch 100, Adam lr 1e-3 (weight decay 1e-5), default toy model,
    exact divergence; median s/iter and NFE over the run, train and test loss (1,000 test points) at the end."""
    from bench.data import load_dataset

    data = load_dataset("8gaussians", {"n_train": 100 * iterations, "n_val": 100, "n_test": 1000})
    torch.manual_seed(0)
    m = get_builder("ffjord")(data.info, adjoint=adjoint, adjoint_seminorm=seminorm).to(device)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=1e-5)
    cpu, wall, fwd, bwd, losses = [], [], [], [], []
    sync = synchronizer(device)
    for i in range(iterations):
        x = data.train.x[i * 100:(i + 1) * 100].to(device)
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        loss, _ = m.training_loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start)
        f, b = m.read_nfe()
        fwd.append(f)
        bwd.append(b)
        losses.append(float(loss.detach()))
    m.eval()
    with torch.no_grad():
        test = float(-m.log_prob(data.test.x.to(device)).mean())
    return {"s_iter": statistics.median(cpu), "wall": statistics.median(wall), "nfe_f": statistics.median(fwd),
            "nfe_b": statistics.median(bwd), "train": statistics.mean(losses[-10:]), "test": test}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="toy cases only")
    p.add_argument("--train", type=int, default=0, metavar="N",
                   help="instead: N iterations of the official toy run (8gaussians, batch 100), adjoint and direct")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.train:
        print(f"official toy run, {args.train} iterations; official (measured here, docs/cnf.md): 0.14 s/iter, NFE 28/26, "
              "train 3.56, test 3.51 after 150 iterations")
        for adjoint, seminorm in ((True, False), (True, True), (False, False)):
            r = train_compare(args.train, adjoint, seminorm, device)
            print(f"{'direct' if not adjoint else 'adjoint, seminorm' if seminorm else 'adjoint':17} CPU {r['s_iter']:.4f} s/iter (wall {r['wall']:.4f}), "
                  f"NFE {r['nfe_f']:.0f}/{r['nfe_b']:.0f}, train {r['train']:.3f}, test {r['test']:.3f}"
                  + (f"; official/ours {0.14 / r['s_iter']:.2f}x per iter" if device.type == "cpu" else ""), flush=True)
        return
    gen = torch.Generator().manual_seed(0)
    toy = DataInfo("8gaussians", "toy", (2,))
    toy_hp = dict(hidden=[64, 64, 64], end_time=0.5, atol=1e-5, rtol=1e-5)
    cases = []
    for adjoint in (True, False):
        cases.append(("toy-100-exact", "ffjord", toy, toy_batch(100, gen), dict(toy_hp, divergence="exact", adjoint=adjoint)))
        cases.append(("toy-512-exact", "ffjord", toy, toy_batch(512, gen), dict(toy_hp, divergence="exact", adjoint=adjoint)))
        cases.append(("toy-512-hutch", "ffjord", toy, toy_batch(512, gen), dict(toy_hp, divergence="hutchinson", adjoint=adjoint)))
        cases.append(("toy-512-exact", "rnode", toy, toy_batch(512, gen), dict(toy_hp, divergence="exact", adjoint=adjoint)))
        cases.append(("toy-512-rk4", "rnode", toy, toy_batch(512, gen), dict(toy_hp, divergence="exact", adjoint=adjoint,
                                                                             solver="rk4", step_size=0.25)))
        if not args.quick:
            tab = DataInfo("tabular-8d", "tabular", (8,))
            xt = torch.randn(1000, 8, generator=gen)
            cases.append(("tabular-8d-1000", "ffjord", tab, xt, dict(adjoint=adjoint, atol=1e-5, rtol=1e-5)))
            cases.append(("tabular-8d-1000", "rnode", tab, xt, dict(adjoint=adjoint, atol=1e-5, rtol=1e-5)))
            img = DataInfo("image-1x16x16", "image", (1, 16, 16), levels=256)
            xi = torch.rand(16, 1, 16, 16, generator=gen) - 0.5
            cases.append(("image-1x16x16-16", "ffjord", img, xi, dict(adjoint=adjoint, hidden=[32, 32, 32], n_blocks=1)))
            cases.append(("image-1x16x16-16", "rnode", img, xi, dict(adjoint=adjoint, hidden=[32, 32, 32], n_blocks=1,
                                                                     solver="rk4", step_size=0.25)))
    on = "" if device.type == "cpu" else f", on {torch.cuda.get_device_name(device)} ({device})"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads{on}, median of {args.steps} steps; "
          "s/step = process CPU seconds (robust to other load on the machine), wall = wall-clock seconds;\n"
          "graph MB = tensors autograd keeps for the backward pass of the forward solve (the memory adjoint saves); "
          "maxRSS = the process's peak so far (cumulative)")
    print(f"{'case':18} {'model':6} {'backprop':8} {'s/step':>8} {'wall':>7} {'NFE f':>6} {'NFE b':>6} {'ms/FE':>6} "
          f"{'graph MB':>8} {'maxRSS':>7}  official / ours: s/step, s/step at the official NFE")
    for name, model, info, batch, hp in cases:
        r = measure(model, info, batch, args.steps, device, **hp)
        ratio = ""
        if name in OFFICIAL and model == "ffjord" and device.type == "cpu":
            s, f, b = OFFICIAL[name]
            # at equal NFE: our seconds scaled to the official forward (direct) or forward+backward (adjoint) NFE
            ours_at = (r["s_step"] * (f + b) / (r["nfe_f"] + r["nfe_b"]) if hp["adjoint"]
                       else r["s_step"] * f / r["nfe_f"])
            ratio = f"{s / r['s_step']:.2f}x, {s / ours_at:.2f}x"
        print(f"{name:18} {model:6} {'adjoint' if hp['adjoint'] else 'direct':8} {r['s_step']:8.4f} {r['wall']:7.4f} {r['nfe_f']:6.1f} "
              f"{r['nfe_b']:6.1f} {r['ms_per_fe']:6.2f} {r['graph_mb']:8.1f} {r['rss_mb']:7.0f}  {ratio}", flush=True)


if __name__ == "__main__":
    main()
