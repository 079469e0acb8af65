"""The one training and evaluation loop every model goes through.

Adam-family optimiser (betas, weight decay on all or on model-marked parameters) with warm-up
and schedule, gradient accumulation over micro-batches, an optional Polyak average of the weights
for evaluation and the saved model, budgets (steps, epochs, minutes), periodic validation, early
stopping on the headline metric, best-checkpoint restore (or the final weights), final test
evaluation, NaN/inf and solver-failure detection, periodic checkpoints with exact resume
(model, optimiser, Polyak average, RNG states, data order, metric history), NFE accounting for CNFs.

Model contract (see baselines.base.FlowModel): ``training_loss(x, y) -> (loss, stats)``,
``evaluate(x, y) -> {term: per-example tensor}``; CNFs add ``read_nfe() -> (forward, backward)``,
which returns the function evaluations since the last call and resets the counters; submodules
with an ``evaluation_phase`` attribute (CNF blocks) hold "val" during validation and "test" during
the final test (``baselines.base.evaluation_phase``).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from baselines.base import evaluation_phase
from baselines.shards import Shard, sharded
from bench.data import Dataset, Split, load_dataset
from bench.env import environment
from bench.errors import FlowbenchError
from bench.io import UnreadableFile, atomic_torch_save, load_tensors
from bench.metrics import peak_memory_mb, reported_metrics
from bench.models import build_model
from bench.spec import RunSpec
from bench.store import Claim, RunClaimed, RunRecord
from bench.trackers import Trackers

__all__ = ["BACKENDS", "process_group_backend", "apply_numerics", "CheckpointMismatch", "ClaimLost", "Distributed", "Diverged", "evaluate",
           "init_distributed", "LoopState", "lr_at", "make_optimizer", "out_of_memory", "owned_cores",
           "PLATEAU_STALE", "plateau_drops", "Polyak", "Preempted", "read_model_nfe", "request_stop",
           "resolve_device", "run_one", "run_threads", "seed_everything", "TimedOut", "Trainer", "use_device"]

_stop = threading.Event()


def request_stop() -> None:
    """Ask the running loop to checkpoint and return as ``preempted`` (e.g. on SLURM's signal)."""
    _stop.set()


class Diverged(Exception):
    """The loss or a metric became NaN/inf, or the ODE solver gave up."""


class Preempted(Exception):
    """A stop was requested; the state is checkpointed and the run can resume."""


class TimedOut(Exception):
    """An evaluation ran past the run's wall-clock budget inside an ODE solve."""


class ClaimLost(Exception):
    """Another process took the run over (this one was judged dead); nothing more is written."""


class CheckpointMismatch(FlowbenchError):
    """A checkpoint on disk does not fit the model built from the spec."""


@dataclass
class LoopState:
    """Everything that must survive a restart, besides model and optimiser states."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    epoch_order_state: Any = None  # batch-order generator state at the start of the epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float = math.inf
    best_step: int = -1
    bad_evals: int = 0  # validations since the last improvement (early stopping, the plateau schedule)
    lr_drops: int = 0  # times the plateau schedule has divided the learning rate by 10
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    nfe_forward: int = 0
    nfe_backward: int = 0
    resumes: int = 0
    window_loss: float = 0.0
    window_steps: int = 0
    window_nfe_forward: int = 0
    window_nfe_backward: int = 0
    window_stats: dict[str, float] = field(default_factory=dict)  # sums of training_loss's stats
    stop_reason: str | None = None


@dataclass(frozen=True)
class Distributed:
    """This process's place in a multi-process run (torch.distributed); world 1 means alone."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float], device: torch.device | str = "cpu") -> list[float]:
        """Sum of ``values`` over the processes (identity when alone), reduced on ``device`` (the
        process's own GPU under NCCL)."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def shard(self, total: int, device: torch.device | str, start: int | None = None) -> Shard | None:
        """This process's rows of a global batch of ``total`` rows, from row ``start`` (its rank
        by default) every ``world`` rows (None when alone)."""
        if self.world == 1:
            return None
        return Shard(self.rank if start is None else start, self.world, total, str(device))

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers into every process's ``module`` (identity when alone)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in module.state_dict().values():
                if isinstance(tensor, torch.Tensor) and tensor.numel():
                    dist.broadcast(tensor, src=0)


BACKENDS = ("nccl", "gloo")


def process_group_backend() -> str:
    """torch.distributed's backend: ``$FLOWBENCH_BACKEND`` (nccl or gloo) when set, else NCCL where
    CUDA is available and gloo elsewhere (gloo on GPUs runs several processes on one GPU, as
    benchmarks/gpu_check.py does; NCCL refuses two processes on one GPU)."""
    chosen = os.environ.get("FLOWBENCH_BACKEND", "").strip().lower()
    if chosen and chosen not in BACKENDS:
        raise FlowbenchError(f"$FLOWBENCH_BACKEND={chosen!r}: expected one of {', '.join(BACKENDS)}")
    return chosen or ("nccl" if torch.cuda.is_available() else "gloo")


def init_distributed() -> Distributed:
    """Join the process group that submitit's tasks (or torchrun) describe in the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend=process_group_backend())
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(device: str | None, local_rank: int = 0, world: int = 1) -> torch.device:
    """This process's torch device: ``auto`` is CUDA when available, else the CPU; ``cuda`` (and ``auto``
    on a CUDA machine) is ``cuda:LOCAL_RANK``, one GPU per process of a multi-process run; an explicit
    ``cuda:N`` stays as given for a one-process run. A device this machine lacks is a FlowbenchError."""
    name = str(device or "auto")
    try:
        torch.device(name if name != "auto" else "cpu")
    except RuntimeError:
        raise FlowbenchError(f"--device {name}: not a device torch knows; use auto, cpu, cuda or cuda:N") from None
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    if not name.startswith("cuda"):
        return torch.device(name)
    if not torch.cuda.is_available():
        raise FlowbenchError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    chosen = torch.device(name)
    if chosen.index is None:
        chosen = torch.device("cuda", local_rank)
    elif world > 1:
        raise FlowbenchError(f"--device {name}: a run of {world} processes uses one GPU per process "
                             "(cuda:LOCAL_RANK); use --device cuda or auto")
    count = torch.cuda.device_count()
    if chosen.index >= count:
        raise FlowbenchError(f"--device {name}: this process needs {chosen}, but the machine shows {count} CUDA "
                             "device(s); give the job one GPU per process (SLURM gpus_per_node >= tasks_per_node)")
    return chosen


def use_device(device: str | None, dist: Distributed) -> torch.device:
    """Resolve this process's device (``resolve_device``) and make it the current CUDA device, so that
    everything built afterwards (and NCCL's communicator) lands on this process's own GPU."""
    chosen = resolve_device(device, dist.local_rank, dist.world)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
        torch.cuda.reset_peak_memory_stats(chosen)
    return chosen


def apply_numerics(train: dict[str, Any]) -> None:
    """Set torch's process-wide GPU numerics from a run's train fields, so a number never depends on
    torch's defaults: TF32 products and convolutions (``tf32``), cuDNN's autotuner (``cudnn_benchmark``),
    cuDNN's deterministic convolutions whenever the autotuner is off or ``deterministic`` asks, and
    ``torch.use_deterministic_algorithms`` (warning, not failing, on an operation without one)."""
    tf32, autotune = bool(train.get("tf32", False)), bool(train.get("cudnn_benchmark", False))
    deterministic = bool(train.get("deterministic", False))
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = autotune
    torch.backends.cudnn.deterministic = deterministic or not autotune
    if deterministic:  # cuBLAS's deterministic reductions need a fixed workspace, set before its first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


PLATEAU_STALE = (10, 20)  # the plateau schedule's thresholds: FFJORD's --early_stopping 30 // 3 and // 3 * 2


def plateau_drops(drops: int, stale: int) -> int:
    """The plateau schedule's drop count after a validation: ``drops`` before it, ``stale`` the validations
    since the last improvement counted with this one (0 when it improved). The rate is ``lr / 10**drops``;
    the first drop comes when ``stale`` exceeds 10, the second when it exceeds 20, and a drop is never
    undone: FFJORD's ``update_lr`` in rtqichen/ffjord train_tabular.py (Grathwohl et al. 2019).

    >>> [plateau_drops(0, n) for n in (0, 10, 11)], plateau_drops(1, 11), plateau_drops(1, 21), plateau_drops(2, 0)
    ([0, 0, 1], 1, 2, 2)
    """
    if drops < len(PLATEAU_STALE) and stale > PLATEAU_STALE[drops]:
        return drops + 1
    return drops


def lr_at(step: int, train: dict[str, Any], total_steps: int | None, drops: int = 0) -> float:
    """Learning rate at ``step``: a linear warm-up factor times the schedule (constant, step decay,
    cosine after the warm-up, or plateau: ``lr / 10**drops`` with ``drops`` from ``plateau_drops``).
    A step milestone or a plateau drop inside the warm-up takes effect at once, as the official
    scripts' ``update_lr`` multiplies the warm-up factor into the current rate."""
    lr = train["lr"]
    warmup = train["warmup_steps"]
    factor = (step + 1) / warmup if warmup and step < warmup else 1.0
    if train["schedule"] == "cosine" and total_steps:
        if factor < 1.0:
            return lr * factor
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return lr * 0.5 * (1 + math.cos(math.pi * progress))
    if train["schedule"] == "step":
        return lr * factor * train["gamma"] ** sum(step >= m for m in train["milestones"])
    if train["schedule"] == "plateau":
        return lr * factor / 10**drops
    return lr * factor


def make_optimizer(model: torch.nn.Module, train: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimiser of the run: ``betas`` when given; ``weight_decay`` on every trainable parameter,
    or (``weight_decay_on: marked``) only on those ``model.weight_decay_params()`` returns, as
    RealNVP's L2 term acts only on its weight scales. The multi-tensor (``foreach``) update on every
    device: the same arithmetic as the per-tensor loop torch uses on CPUs by default, in a few
    kernels per step instead of a dozen per parameter (a Glow step 5 ms faster on one CPU thread)."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}[train["optimizer"]]
    params = [p for p in model.parameters() if p.requires_grad]
    options: dict[str, Any] = {"lr": train["lr"], "foreach": True}
    if train.get("betas") is not None:
        options["betas"] = tuple(train["betas"])
    if train.get("weight_decay_on", "all") == "all":
        return cls(params, weight_decay=train["weight_decay"], **options)
    marker = getattr(model, "weight_decay_params", None)
    if marker is None:
        raise FlowbenchError(f"train.weight_decay_on: marked needs a model with weight_decay_params(); "
                             f"{type(model).__name__} has none (use weight_decay_on: all)")
    marked = {id(p) for p in marker()}
    groups = [{"params": [p for p in params if id(p) in marked], "weight_decay": train["weight_decay"]},
              {"params": [p for p in params if id(p) not in marked], "weight_decay": 0.0}]
    return cls([g for g in groups if g["params"]], **options)


class Polyak:
    """A Polyak (exponential moving) average of the trainable parameters, debiased as TensorFlow's
    ``ExponentialMovingAverage(zero_debias=True)`` that openai/glow uses: ``a <- d a + (1 - d) p``
    from ``a = 0``, read as ``a / (1 - d^t)`` after t updates. Buffers (batch-norm statistics) are
    the live model's."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [torch.zeros_like(p) for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        for a, p in zip(self.shadow, self.params):
            a.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)

    @torch.no_grad()
    def averaged(self) -> list[torch.Tensor]:
        """The debiased averages, one per parameter (the live values before the first update)."""
        if not self.updates:
            return [p.detach().clone() for p in self.params]
        scale = 1.0 - self.decay ** self.updates
        return [a / scale for a in self.shadow]

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for p, a in zip(self.params, self.averaged()):
            p.copy_(a)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the model for the duration of the block, then the live ones again."""
        live = [p.detach().clone() for p in self.params]
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self.params, live):
                    p.copy_(v)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": [a.detach().clone() for a in self.shadow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["shadow"]) != len(self.shadow) or any(a.shape != b.shape for a, b in zip(state["shadow"],
                                                                                               self.shadow)):
            raise ValueError("the Polyak average does not match the model's parameters")
        with torch.no_grad():
            for a, b in zip(self.shadow, state["shadow"]):
                a.copy_(b)
        self.updates = int(state["updates"])


def read_model_nfe(model: torch.nn.Module) -> tuple[int, int]:
    """(forward, backward) ODE evaluations of ``model`` since the last read, from its own ``read_nfe()``
    (which resets its counters); (0, 0) for a model that counts none (a discrete flow)."""
    reader = getattr(model, "read_nfe", None)
    return reader() if reader is not None else (0, 0)


def _double(value: torch.Tensor | float) -> torch.Tensor | float:
    """A loss or stat in double precision, detached (a Python number stays one)."""
    return value.detach().double() if isinstance(value, torch.Tensor) else float(value)


def _rng_states(device: torch.device) -> dict[str, Any]:
    """Every RNG state as tensors, numbers and tuples (what ``weights_only`` loading reads back):
    the CPU's, every visible GPU's (``cuda``) and the run's own GPU's (``cuda_device``, restored onto
    whichever GPU the resumed run uses)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    cuda = torch.cuda.is_available()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else [],
            "cuda_device": torch.cuda.get_rng_state(device) if cuda and device.type == "cuda" else None,
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate()}


def _set_rng_states(states: dict[str, Any], device: torch.device) -> list[str]:
    """Restore ``_rng_states`` (loaded onto the CPU) on this machine, whatever its GPUs; the warnings.

    The per-GPU states go back onto the GPUs both machines have; the run's own GPU gets the state it
    saved (``cuda_device``; a checkpoint older than that key has only the per-GPU list)."""
    torch.set_rng_state(states["torch"])
    saved = list(states.get("cuda") or [])
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index in range(min(len(saved), visible)):
        torch.cuda.set_rng_state(saved[index], index)
    own = states.get("cuda_device")
    if own is not None and device.type == "cuda":
        torch.cuda.set_rng_state(own, device)
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if saved and len(saved) != visible:
        return [f"the checkpoint holds the random states of {len(saved)} CUDA device(s) and this machine shows "
                f"{visible}; {min(len(saved), visible)} were restored, so CUDA random draws after the resume "
                "differ from an uninterrupted run's"]
    return []


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Dataset, split: Split, device: torch.device, batch_size: int,
             max_examples: int | None = None, seed: int = 0, dist: Distributed = Distributed(),
             test_dequantize: str | None = None) -> dict[str, float]:
    """Mean of every per-example term of ``model.evaluate`` over a split, in the data's space.

    Preprocessing log-determinants are removed from ``nll*`` terms (so they are NLLs of the data,
    not of the model's input); dequantisation noise is drawn from a fixed seed, so evaluations
    are comparable across steps and do not disturb the training RNG streams. ``test_dequantize``
    (``center``) evaluates images at the bin centre instead of the dataset's own convention.
    """
    was_training = model.training
    model.eval()
    n = len(split) if max_examples is None else min(len(split), max_examples)
    sums: dict[str, torch.Tensor] = {}
    nfe_forward = batches = 0
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, n, batch_size):  # the batches one process takes; each process its rows of each
            stop = min(start + batch_size, n)
            rows = slice(start + dist.rank, stop, dist.world)
            x = split.x[rows].to(device, non_blocking=True)
            y = None if split.y is None else split.y[rows].to(device, non_blocking=True)
            with sharded(dist.shard(stop - start, device)):
                logdet = None
                if data.preprocess is not None:
                    x, logdet = (data.preprocess(x, False) if test_dequantize is None
                                 else data.preprocess(x, False, test_dequantize))
                terms = model.evaluate(x, y)
            for key, value in terms.items():
                if logdet is not None and (key == "nll" or key.startswith("nll_")):
                    value = value - logdet
                total = value.double().sum()
                sums[key] = sums[key] + total if key in sums else total
            nfe_forward += read_model_nfe(model)[0]
            batches += 1
    model.train(was_training)
    keys = sorted(sums)
    totals = torch.stack([sums[k] for k in keys]).tolist() if keys else []  # one read of the device
    if dist.world > 1:
        totals = dist.all_sum(totals + [float(nfe_forward), float(batches)], device)
        totals, nfe_forward, batches = totals[:-2], int(totals[-2]), int(totals[-1])
    means = {k: v / n for k, v in zip(keys, totals)}
    for key, value in means.items():
        if not math.isfinite(value):
            raise Diverged(f"evaluation gave a non-finite {key} ({value})")
    out = reported_metrics(data.info, means)
    if nfe_forward:
        out["nfe"] = nfe_forward / batches
    return out


class Trainer:
    """Trains one RunSpec into its RunRecord; ``run()`` returns the result dictionary."""

    def __init__(self, spec: RunSpec, record: RunRecord, data_root: str | None = None,
                 device: str | None = None, progress: bool = True, claim: Claim | None = None):
        self.spec, self.record, self.claim = spec, record, claim
        self.train = spec.train
        self.dist = init_distributed()
        self.progress = progress and self.dist.main
        self.device = use_device(device, self.dist)  # cuda:LOCAL_RANK, current before anything is built
        apply_numerics(self.train)  # TF32, cuDNN autotuning, determinism: before the model exists
        self.data = load_dataset(spec.dataset, spec.data_config, data_root)
        seed_everything(spec.seed)
        self.model = build_model(spec.model, self.data.info, spec.model_config, f"run {spec.label}").to(self.device)
        self.compiled_blocks = 0  # CNF blocks whose dynamics run torch.compile'd (run --compile)
        if spec.compile:
            from baselines.cnf import compile_dynamics

            self.compiled_blocks = compile_dynamics(self.model)
        self.optimizer = make_optimizer(self.model, self.train)
        polyak = self.train.get("polyak")
        self.polyak = Polyak(self.model, polyak) if polyak is not None else None
        self.order = torch.Generator().manual_seed(spec.seed)
        self.state = LoopState(epoch_order_state=self.order.get_state())
        self.best_model_state: dict[str, Any] | None = None
        self.train_x = self.data.train.x.to(self.device)
        self.train_y = None if self.data.train.y is None else self.data.train.y.to(self.device)
        n = len(self.train_x)
        self.batch_size = min(self.train["batch_size"], n)
        if self.batch_size // self.train.get("accumulate", 1) < self.dist.world:
            raise FlowbenchError(f"run {spec.label}: a batch of {self.batch_size} in {self.train.get('accumulate', 1)} "
                                 f"micro-batches leaves fewer rows per micro-batch than the {self.dist.world} processes "
                                 "of the run; raise train.batch_size or lower train.accumulate or the tasks per run")
        self.steps_per_epoch = max(1, n // self.batch_size)
        epochs_steps = self.train["max_epochs"] * self.steps_per_epoch if self.train["max_epochs"] else None
        self.total_steps = min(filter(None, [self.train["max_steps"], epochs_steps]), default=None)
        self._perm: torch.Tensor | None = None
        # multi-process runs stop together, on the step all agree on (timed_step's all-reduce)
        self._stop_agreed = self._claim_lost_agreed = self._budget_agreed = False
        self._stat_keys: list[str] = []
        self._lr_varies = bool(self.train["warmup_steps"]) or self.train["schedule"] != "constant"
        self.trackers = Trackers(spec, record, enabled=self.dist.main)  # opened at the first metrics line
        self.warnings: list[str] = []  # what the result should say besides its numbers (a partial RNG restore)
        if record.checkpoint_path.exists():
            self._resume()
        self.dist.broadcast_module(self.model)  # every process starts from rank 0's weights and buffers

    # -- checkpoints ----------------------------------------------------------------------
    def _resume(self) -> None:
        path = self.record.checkpoint_path
        try:
            # onto the CPU, whatever device saved it: load_state_dict places each tensor (Adam's step stays on
            # the CPU), and RNG states must be CPU byte tensors; weights only: a planted pickle never runs
            ckpt = load_tensors(path, map_location="cpu")
        except (OSError, UnreadableFile) as err:  # a truncated, foreign or hostile file
            raise CheckpointMismatch(f"run {self.spec.label} ({self.spec.run_id}): cannot read checkpoint {path} "
                                     f"({err}); delete it or re-run with --force") from None
        if not isinstance(ckpt, dict):
            raise CheckpointMismatch(f"run {self.spec.label} ({self.spec.run_id}): checkpoint {path} holds "
                                     f"{type(ckpt).__name__}, not a flowbench checkpoint; delete it or re-run with "
                                     "--force")
        if ckpt.get("run_id") != self.spec.run_id:
            raise CheckpointMismatch(f"run {self.spec.label}: checkpoint {path} belongs to run {ckpt.get('run_id')}, "
                                     f"not {self.spec.run_id}; delete it or re-run with --force")
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.polyak is not None:
                self.polyak.load_state_dict(ckpt["polyak"])
            state = LoopState(**ckpt["loop"])
            self.order.set_state(state.epoch_order_state)
            self.warnings += _set_rng_states(ckpt["rng"], self.device)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
            if isinstance(err, torch.OutOfMemoryError):
                raise  # no room for the state on this device: an oom run, not a mismatched checkpoint
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointMismatch(f"run {self.spec.label} ({self.spec.run_id}): checkpoint {path} does not match "
                                     f"the model ({first}); delete it or re-run with --force") from None
        self.state = state
        self.state.resumes += 1
        self.best_model_state = ckpt.get("best_model")
        self._perm = torch.randperm(len(self.train_x), generator=self.order).to(self.device)
        if self.dist.main:
            self.record.write_metrics(self.state.history)  # drop lines written after the checkpoint

    def checkpoint(self) -> None:
        if not self.dist.main:
            return
        atomic_torch_save(self.record.checkpoint_path, {
            "run_id": self.spec.run_id, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "loop": asdict(self.state), "best_model": self.best_model_state, "rng": _rng_states(self.device),
            "polyak": None if self.polyak is None else self.polyak.state_dict()})

    # -- the loop -------------------------------------------------------------------------
    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """This process's rows of the next global batch (rows ``rank::world``), and the global batch's
        size. The epoch's order is drawn on the CPU and copied to the device once an epoch."""
        s = self.state
        if self._perm is None or s.batch_in_epoch >= self.steps_per_epoch:
            if self._perm is not None:
                s.epoch += 1
                s.batch_in_epoch = 0
            s.epoch_order_state = self.order.get_state()
            self._perm = torch.randperm(len(self.train_x), generator=self.order).to(self.device)
        start = s.batch_in_epoch * self.batch_size
        idx = self._perm[start:start + self.batch_size]
        total = len(idx)
        idx = idx[self.dist.rank::self.dist.world]
        s.batch_in_epoch += 1
        return self.train_x[idx], None if self.train_y is None else self.train_y[idx], total

    def _solve_limits(self, seconds: float | None) -> contextlib.AbstractContextManager:
        """Bounds on every ODE solve inside: ``max_solver_evals`` evaluations per solve, steps no shorter
        than ``min_solver_step`` and, when given, a wall-clock deadline ``seconds`` from now
        (``baselines.cnf.solve_limits``)."""
        from baselines.cnf import solve_limits

        return solve_limits(self.train.get("max_solver_evals"), seconds, self.train.get("min_solver_step"))

    def _evaluate(self, split: Split, max_examples: int | None, seed: int, phase: str,
                  test_dequantize: str | None = None) -> dict[str, float]:
        """``evaluate`` on ``split``, each of its solves bounded, the model told the ``phase`` ("val" or
        "test": ``baselines.base.evaluation_phase``); an evaluation may take as long as the training
        budget (``max_minutes``) and is stopped (``TimedOut``) past it."""
        from baselines.cnf import SolveTimeout

        budget = 60 * self.train["max_minutes"] if self.train["max_minutes"] else None
        try:
            with self._solve_limits(budget), evaluation_phase(self.model, phase):
                return evaluate(self.model, self.data, split, self.device, self.train["eval_batch_size"],
                                max_examples, seed=seed, dist=self.dist, test_dequantize=test_dequantize)
        except SolveTimeout:
            raise TimedOut(f"an evaluation at step {self.state.step} ran past max_minutes "
                           f"({self.train['max_minutes']:g} min) inside an ODE solve; the dynamics are too stiff "
                           "(lower the learning rate, or raise max_minutes)") from None

    def _budget_reached(self) -> str | None:
        s, t = self.state, self.train
        if t["max_steps"] and s.step >= t["max_steps"]:
            return "max_steps"
        if t["max_epochs"] and s.step >= t["max_epochs"] * self.steps_per_epoch:
            return "max_epochs"
        if t["max_minutes"] and (s.train_seconds >= 60 * t["max_minutes"] if self.dist.world == 1
                                 else self._budget_agreed):  # each process's clock; the flag they agreed on
            return "max_minutes"
        return None

    def _micro_batches(self, x: torch.Tensor, y: torch.Tensor | None,
                       total: int) -> list[tuple[torch.Tensor, torch.Tensor | None, Shard | None, float]]:
        """(rows, labels, shard, weight) of each micro-batch: the global batch of ``total`` rows split
        into ``accumulate`` parts as one process splits it, each process holding its rows of each part
        (a contiguous run of its own rows); ``weight`` is the process's rows over the global batch's."""
        parts = self.train.get("accumulate", 1)
        world, rank = self.dist.world, self.dist.rank
        out, first = [], 0
        for part in range(parts):  # torch's tensor_split sizes: the first total % parts parts one row longer
            size = total // parts + (part < total % parts)
            if not size:
                continue
            lo = first + (rank - first) % world  # this process's first global row in the part
            mine = slice((lo - rank) // world, (lo - rank) // world + len(range(lo, first + size, world)))
            out.append((x[mine], None if y is None else y[mine], self.dist.shard(size, self.device, lo - first),
                        (mine.stop - mine.start) / total))
            first += size
        return out

    def _step(self, started: float, seconds_left: float | None) -> torch.Tensor:
        """One optimisation step; returns [loss, stats..., (agreed flags)] as one tensor on the device,
        read by the caller once. In a multi-process run every random draw and batch statistic is the
        global batch's (``baselines.shards``), each process's loss is weighted by its share of the
        batch and the gradients are summed, so the step is the step one process takes; the flags that
        end the loop (a stop request, a lost claim, the time budget) ride on the same all-reduce."""
        x, y, total = self._next_batch()
        if self._lr_varies or self.state.step == 0 or self.state.resumes:
            lr = lr_at(self.state.step, self.train, self.total_steps, self.state.lr_drops)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        if self.data.preprocess is not None:
            with sharded(self.dist.shard(total, self.device)):
                x, _ = self.data.preprocess(x, True)
        self.optimizer.zero_grad(set_to_none=True)
        value: torch.Tensor | float = 0.0
        stats: dict[str, Any] = {}
        for xc, yc, shard, weight in self._micro_batches(x, y, total):
            with sharded(shard):
                loss, parts = self.model.training_loss(xc, yc)
                (loss if weight == 1.0 else loss * weight).backward()
            value = value + _double(loss) * weight
            for key, stat in parts.items():  # regularisers, classification terms: logged per evaluation
                stats[key] = stats.get(key, 0.0) + _double(stat) * weight
        self._stat_keys = list(stats)
        packed = [torch.as_tensor(value, dtype=torch.float64, device=self.device).reshape(1)]
        packed += [torch.as_tensor(v, dtype=torch.float64, device=self.device).reshape(1) for v in stats.values()]
        if self.dist.world > 1:
            over = seconds_left is not None and time.perf_counter() - started >= seconds_left
            lost = self.claim is not None and self.claim.lost.is_set()
            flags = torch.tensor([float(_stop.is_set()), float(lost), float(over)], dtype=torch.float64)
            packed.append(flags.to(self.device))
            packed = self._sum_over_processes(torch.cat(packed))
        else:
            packed = torch.cat(packed)
        if self.train["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train["grad_clip"])
        self.optimizer.step()
        if self.polyak is not None:
            self.polyak.update()
        return packed

    def _sum_over_processes(self, extra: torch.Tensor) -> torch.Tensor:
        """Sum the gradients (each process's share of the global batch's) and ``extra`` over the
        processes in one all-reduce; returns the summed ``extra``."""
        import torch.distributed as dist

        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        dist.all_reduce(extra)  # float64: the loss and stats as logged
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        return extra

    def _validate(self, pbar: Any) -> bool:
        """Evaluate on val, log a metrics line; returns True when early stopping says stop."""
        s, t = self.state, self.train
        start = time.perf_counter()
        snapshot = None
        with self._evaluated_weights():
            val = self._evaluate(self.data.val, t["eval_max_examples"], seed=self.spec.seed, phase="val")
            metric = val.get(self.spec.metric)
            if metric is not None and metric < s.best_metric:  # the weights evaluated, averaged or live
                snapshot = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        s.eval_seconds += time.perf_counter() - start
        steps = max(1, s.window_steps)
        row = {"step": s.step, "epoch": s.step / self.steps_per_epoch, "seconds": round(s.train_seconds, 4),
               "train_loss": s.window_loss / steps, "lr": lr_at(max(0, s.step - 1), t, self.total_steps, s.lr_drops),
               "nfe_forward": s.window_nfe_forward / steps, "nfe_backward": s.window_nfe_backward / steps,
               "nfe_forward_total": s.nfe_forward, "nfe_backward_total": s.nfe_backward,
               **{f"train_{k}": v / steps for k, v in s.window_stats.items()},
               **{f"val_{k}": v for k, v in val.items()}}
        s.history.append(row)
        s.window_loss, s.window_steps, s.window_nfe_forward, s.window_nfe_backward = 0.0, 0, 0, 0
        s.window_stats = {}
        if self.dist.main:
            self.record.write_metrics(s.history)
            self.trackers.log(s.history)  # TensorBoard / MLflow / wandb, when the spec names them
        if metric is None:
            raise FlowbenchError(f"run {self.spec.label}: the headline metric \"{self.spec.metric}\" is not among "
                                 f"the evaluation terms {sorted(val)}; set the suite's metric:")
        if metric < s.best_metric:
            s.best_metric, s.best_step, s.bad_evals = metric, s.step, 0
            self.best_model_state = snapshot
        else:
            s.bad_evals += 1
        if t["schedule"] == "plateau":  # the rate of the steps after this validation
            s.lr_drops = plateau_drops(s.lr_drops, s.bad_evals)
        pbar.set_postfix(loss=f"{row['train_loss']:.3f}", **{f"val_{self.spec.metric}": f"{metric:.4f}"}, refresh=False)
        return bool(t["patience"] and s.bad_evals >= t["patience"])

    def _other_protocols(self, test: dict[str, float]) -> dict[str, float]:
        """Test numbers of the published protocols that differ from ours (``bench.protocol``):
        ``<term>_center`` for images tested at the bin centre (``train.test_center``, one more test
        pass: RNODE's convention), and ``error_min``, the lowest error over the evaluations, when
        they ran on the whole test set (the validation curve is the test set: InfoCNF Table 1's)."""
        out: dict[str, float] = {}
        if self.train.get("test_center") and self.data.info.kind == "image" and self.data.preprocess is not None:
            center = self._evaluate(self.data.test, None, seed=10_000, phase="test", test_dequantize="center")
            out.update({f"{k}_center": v for k, v in center.items() if k.startswith(("nll", "bpd"))})
        errors = [row["val_error"] for row in self.state.history if row.get("val_error") is not None]
        whole_test = self.data.val.x.data_ptr() == self.data.test.x.data_ptr()  # n_val 0: one split, two names
        if errors and whole_test and not self.train["eval_max_examples"] and "error" in test:
            out["error_min"] = min(errors + [test["error"]])
        return out

    def _protocol(self) -> dict[str, str]:
        """The protocol the test metrics were measured under (``bench.protocol``), as a report derives
        it from the spec: recorded so that a reader of result.json alone sees it."""
        from bench.env import device_name
        from bench.protocol import of_spec

        return asdict(of_spec(self.spec.dataset, self.spec.data_config, self.train, device_name(self.device)))

    def _evaluated_weights(self) -> contextlib.AbstractContextManager:
        """The weights evaluations see: the Polyak average when it is on, else the live ones."""
        return self.polyak.swapped_in() if self.polyak is not None else contextlib.nullcontext()

    def timed_step(self, seconds_left: float | None) -> float:
        """One optimisation step inside the solve limits (a solve still running when ``seconds_left``
        is spent stops: SolveTimeout), its seconds, NFE, loss and stats counted into the state; the
        loss. The device is read once, after the optimiser's step (which also makes the time a CUDA
        step's time): a non-finite loss then ends the run as diverged."""
        s = self.state
        start = time.perf_counter()
        try:
            with self._solve_limits(seconds_left):
                packed = self._step(start, seconds_left)
            values = packed.tolist()
        finally:
            s.train_seconds += time.perf_counter() - start
        loss = values[0]
        if not math.isfinite(loss):
            raise Diverged(f"non-finite training loss ({loss}) at step {s.step + 1}")
        keys = self._stat_keys
        for key, stat in zip(keys, values[1:1 + len(keys)]):
            s.window_stats[key] = s.window_stats.get(key, 0.0) + stat
        if self.dist.world > 1:
            stop, lost, over = (bool(v) for v in values[1 + len(keys):])
            self._stop_agreed, self._claim_lost_agreed, self._budget_agreed = stop, lost, over
        forward, backward = read_model_nfe(self.model)
        s.step += 1
        s.window_loss += loss
        s.window_steps += 1
        s.nfe_forward += forward
        s.nfe_backward += backward
        s.window_nfe_forward += forward
        s.window_nfe_backward += backward
        return loss

    def fit(self) -> None:
        from tqdm.auto import tqdm

        from baselines.cnf import SolveTimeout

        s, t = self.state, self.train
        s.stop_reason = self._budget_reached()
        with tqdm(total=self.total_steps, initial=s.step, desc=self.spec.label, leave=False, dynamic_ncols=True,
                  mininterval=0.5, disable=not self.progress) as pbar:
            while s.stop_reason is None:
                if (self.claim is not None and self.claim.lost.is_set()) if self.dist.world == 1 else self._claim_lost_agreed:
                    raise ClaimLost(f"run {self.spec.label}: another process took it over at step {s.step}")
                if (_stop.is_set() if self.dist.world == 1 else self._stop_agreed):
                    self.checkpoint()
                    raise Preempted(f"stop requested at step {s.step}; checkpointed")
                left = 60 * t["max_minutes"] - s.train_seconds if t["max_minutes"] else None
                try:
                    self.timed_step(left)
                except SolveTimeout:  # the budget ran out inside this step: it is dropped, as a budget stops
                    s.stop_reason = "max_minutes"
                    self.optimizer.zero_grad(set_to_none=True)
                    if not s.history or s.history[-1]["step"] != s.step:
                        self._validate(pbar)
                    break
                pbar.update(1)
                s.stop_reason = self._budget_reached()
                if s.step % t["eval_every"] == 0 or s.stop_reason:
                    if self._validate(pbar):
                        s.stop_reason = "early_stopping"
                if s.step % t["checkpoint_every"] == 0 and not s.stop_reason:
                    self.checkpoint()

    def run(self) -> dict[str, Any]:
        """Train, restore the best validation state, evaluate on test; the result record."""
        wall = time.perf_counter()
        if self.dist.main:
            self.record.write_result({"status": "running", "run_id": self.spec.run_id,
                                      "env": environment(self.device)})
        self.model.train()
        self.fit()
        restore = self.train.get("restore_best", True) and self.best_model_state is not None
        if restore:
            self.model.load_state_dict(self.best_model_state)
        elif self.polyak is not None:
            self.polyak.copy_to_model()
        start = time.perf_counter()
        test = self._evaluate(self.data.test, None, seed=10_000, phase="test")
        test.update(self._other_protocols(test))
        self.state.eval_seconds += time.perf_counter() - start
        s = self.state
        if self.dist.main:
            atomic_torch_save(self.record.model_path, {"run_id": self.spec.run_id, "model": self.model.state_dict(),
                                                       "step": s.best_step if restore else s.step,
                                                       "polyak": self.polyak is not None,
                                                       "model_config": self.spec.model_config})
        best_val = next((r for r in s.history if r["step"] == s.best_step), s.history[-1] if s.history else {})
        return {
            "status": "completed", "error": None, "stop_reason": s.stop_reason,
            "steps": s.step, "epochs": s.step / self.steps_per_epoch, "best_step": s.best_step,
            "test_step": s.best_step if restore else s.step,
            "test": test, "val": {k[4:]: v for k, v in best_val.items() if k.startswith("val_")},
            "train_loss": s.history[-1]["train_loss"] if s.history else None,
            "nfe": {"train_forward": s.nfe_forward / max(1, s.step), "train_backward": s.nfe_backward / max(1, s.step),
                    "test_forward": test.get("nfe")},
            "train_seconds": s.train_seconds, "eval_seconds": s.eval_seconds,
            "seconds_per_step": s.train_seconds / max(1, s.step), "wall_seconds": time.perf_counter() - wall,
            "params": int(sum(p.numel() for p in self.model.parameters() if p.requires_grad)),
            "peak_memory_mb": peak_memory_mb(self.device), "resumes": s.resumes, "world_size": self.dist.world,
            "compiled_blocks": self.compiled_blocks, "protocol": self._protocol(),
            "data": {"notes": self.data.info.notes, "n_train": len(self.data.train), "n_val": len(self.data.val),
                     "n_test": len(self.data.test)},
        }


def owned_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup (v2) CPU quota."""
    from bench.forking import usable_cores

    cores = usable_cores()
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def run_threads(concurrent: int = 1) -> int:
    """Intra-op threads for one run: $FLOWBENCH_THREADS when set, else $OMP_NUM_THREADS, else SLURM's
    cpus_per_task inside a SLURM job, else this process's cores divided among the ``concurrent`` runs
    started at once."""
    for name in ("FLOWBENCH_THREADS", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(name, "").split(",")[0].strip()  # OpenMP's nested form: "4,2"
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                raise FlowbenchError(f"${name}={value!r}: expected a whole number of threads, e.g. 4") from None
    return max(1, owned_cores() // max(1, concurrent))


def _io_error(err: OSError) -> str:
    """One line for a failed read or write of the record (a full disk, a folder made read-only)."""
    where = f" {err.filename}" if err.filename else ""
    return (f"cannot use{where}: {err.strerror or err}; free space or make the run folder writable, then run again "
            "(it resumes from its last checkpoint)")


def out_of_memory(err: BaseException, device: torch.device | str, step: int) -> dict[str, Any]:
    """The ``oom`` result of a run that ran out of memory: the error's first line, what to change, and
    the memory figures (MB): on a GPU the allocator's peaks and the device's total, on a CPU the peak RSS."""
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    where = torch.device(device)
    if where.type == "cuda" and torch.cuda.is_available():
        mb = 2 ** 20
        memory = {"max_allocated_mb": torch.cuda.max_memory_allocated(where) / mb,
                  "max_reserved_mb": torch.cuda.max_memory_reserved(where) / mb,
                  "total_mb": torch.cuda.get_device_properties(where).total_memory / mb}
        torch.cuda.empty_cache()  # the sweep's next run starts with this one's cache given back
    else:
        memory = {"peak_rss_mb": peak_memory_mb("cpu")}
    return {"status": "oom", "memory": memory,
            "error": f"out of memory after {step} steps: {first[:240]}; lower train.batch_size or raise "
                     "train.accumulate (or use a larger device), then run with --retry oom"}


def _requested_device(device: str | None) -> torch.device | str:
    """The device a run that never built its Trainer asked for: resolved when it exists, else as given."""
    try:
        return resolve_device(device)
    except FlowbenchError:
        return str(device)


def _train(spec: RunSpec, record: RunRecord, data_root: str | None, device: str | None, progress: bool,
           claim: Claim | None, annotate: Callable[[dict[str, Any]], dict[str, Any]] | None = None
           ) -> dict[str, Any] | None:
    """Train (or resume) and write result.json once (``annotate`` adds the caller's fields first);
    None when the claim was lost (nothing written)."""
    base = spec.identity()
    trainer = None
    try:
        trainer = Trainer(spec, record, data_root=data_root, device=device, progress=progress, claim=claim)
        result = trainer.run()
    except CheckpointMismatch:
        raise
    except ClaimLost:
        return None
    except Preempted as err:
        result = {"status": "preempted", "error": str(err)}
    except Diverged as err:
        result = {"status": "diverged", "error": str(err)}
    except (TimedOut, TimeoutError) as err:
        result = {"status": "timeout", "error": str(err) or "the wall-clock budget ran out inside an ODE solve"}
    except torch.OutOfMemoryError as err:  # torch.cuda.OutOfMemoryError too: the same class
        result = out_of_memory(err, trainer.device if trainer else _requested_device(device),
                               trainer.state.step if trainer else 0)
    except (AssertionError, FloatingPointError) as err:
        if "underflow" in str(err) or isinstance(err, FloatingPointError):
            result = {"status": "diverged", "error": f"ODE solver failure: {err}"}
        else:
            result = {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    except FlowbenchError as err:
        result = {"status": "failed", "error": str(err)}
    except OSError as err:  # the record cannot be written: a full disk, a read-only folder
        result = {"status": "failed", "error": _io_error(err)}
    except Exception as err:  # the sweep goes on; the record carries the traceback
        result = {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    if trainer is not None and result["status"] != "completed":
        s = trainer.state
        result.update(steps=s.step, train_seconds=s.train_seconds, resumes=s.resumes)
    if trainer is not None and trainer.warnings:
        result["warnings"] = list(trainer.warnings)
    result = {**base, **result, "env": environment(trainer.device if trainer else _requested_device(device))}
    if annotate is not None:
        result = annotate(result)
    if trainer is not None:
        trainer.trackers.finish(result)  # test metrics; closes them (never raises)
    if trainer is not None and not trainer.dist.main:
        return result  # the main process writes the record
    try:
        record.write_result(result)
        if result["status"] == "completed":  # model.pt holds the weights; the training state is spent
            record.checkpoint_path.unlink(missing_ok=True)
    except OSError as err:  # a nearly full disk may still take the short form; else the sweep says it
        result = {**base, "status": "failed", "error": f"{result.get('error') or 'the run finished'}; writing "
                                                       f"its result: {_io_error(err)}"}
        try:
            record.write_result(result)
        except OSError:
            pass
    return result


def run_one(spec: RunSpec, record: RunRecord, data_root: str | None = None, device: str | None = None,
            progress: bool = True, force: bool = False, threads: int | None = None,
            annotate: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Claim, run (or resume) one spec and write its result.json; returns the result. ``annotate``
    maps the result to what is written (a job adds the code it ran and why it stopped).

    The run is claimed first (``RunRecord.claim``): one another live process holds comes back as
    status ``claimed``, and one completed meanwhile (unless ``force``, which clears the record once
    claimed) as its completed result with ``skipped`` set; neither is touched. A diverging, timed-out
    or crashing run gets a record saying so and returns normally, so a sweep goes on. A checkpoint
    that does not fit raises CheckpointMismatch before anything in the record changes. Intra-op
    threads: ``threads``, else ``run_threads`` with the cores shared among the runs of the suite that
    processes on this host hold now.
    """
    _stop.clear()
    record.create(spec.to_dict())
    if int(os.environ.get("RANK", "0") or 0) != 0:  # the other processes of a multi-process run follow rank 0
        torch.set_num_threads(threads or run_threads())
        return (_train(spec, record, data_root, device, progress, None, annotate)
                or {**spec.identity(), "status": "claimed"})
    try:
        claim = record.claim()
    except RunClaimed as err:
        return {**spec.identity(), "status": "claimed", "error": str(err)}
    except OSError as err:
        return {**spec.identity(), "status": "failed", "error": _io_error(err)}
    with claim:
        # the cores are shared with the runs of this suite that other processes on this host train now
        torch.set_num_threads(threads or run_threads(concurrent=1 + record.claimed_here()))
        problem = record.result_problem()
        if problem:
            return {**spec.identity(), "status": "failed",
                    "error": f"{problem}; move it away (or delete it) and run again"}
        if force:
            try:
                record.clear()
            except OSError as err:
                return {**spec.identity(), "status": "failed", "error": _io_error(err)}
        else:
            done = record.read_result()
            if done and done.get("status") == "completed":
                return {**done, "skipped": "completed by another process meanwhile"}
        result = _train(spec, record, data_root, device, progress, claim, annotate)
    if result is None:
        return {**spec.identity(), "status": "claimed",
                "error": f"another process took the run over ({record.claim_path}); this one stopped"}
    return result
