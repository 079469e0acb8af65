"""Count host-device synchronisations of a piece of code with ``torch.profiler`` (on any device).

On CUDA every read of a device value on the host (``.item()``, ``float(t)``, ``bool(t)``, ``if t:``)
stalls the pipeline until the GPU catches up. Each such read runs ``aten::_local_scalar_dense``
once, on the CPU too, so counting that event on a CPU build counts the syncs the same code makes
on a GPU. ``aten::item`` and ``aten::is_nonzero`` are the usual entry points above it, counted
for the record (one ``bool(t)`` shows as one of each of the three).
"""

from __future__ import annotations

import collections
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["SYNC_EVENT", "SyncCount", "count_syncs", "model_step", "sync_sites"]

SYNC_EVENT = "aten::_local_scalar_dense"  # one per host read of a device scalar
_RECORDED = (SYNC_EVENT, "aten::item", "aten::is_nonzero")
OPTIMIZER_STEP = "Optimizer.step#"  # the profiler region torch.optim records around every step
# ops whose host reads are in their CPU kernels only (so a CPU build counts syncs CUDA does not make):
# lu_solve checks its pivots' range (BatchLinearAlgebraKernel.cpp lu_solve_kernel: slogdet's backward
# runs it), var/std reduce to one element through std_var_all_cpu (ReduceOps.cpp), one_hot checks the
# labels' range (Onehot.cpp; on CUDA scatter's device assert does, "to avoid sync here").
CPU_ONLY_READS = ("aten::linalg_lu_solve", "aten::var", "aten::std", "aten::var_mean", "aten::std_mean",
                  "aten::one_hot")


@dataclass(frozen=True)
class SyncCount:
    """The sync-related profiler events of one run. ``syncs``: host reads that are device syncs on
    CUDA; ``optimizer_reads``: reads inside an optimizer step (torch's non-capturable optimizers read
    their step counters, which live on the CPU even for CUDA parameters: no device sync);
    ``cpu_only_reads``: reads inside the CPU kernels of ``CPU_ONLY_READS`` (none on CUDA)."""

    events: dict[str, int] = field(default_factory=dict)
    optimizer_reads: int = 0
    cpu_only_reads: int = 0

    @property
    def syncs(self) -> int:
        return self.events.get(SYNC_EVENT, 0) - self.optimizer_reads - self.cpu_only_reads


def _ancestors(event: Any) -> list[str]:
    """The names of the profiler events enclosing ``event``, innermost first."""
    names, parent = [], event.cpu_parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    return names


def count_syncs(fn: Callable[[], Any]) -> SyncCount:
    """Run ``fn`` once under the CPU profiler; the counts of its sync events."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name in _RECORDED]
    counts = collections.Counter(e.name for e in events)
    enclosing = [_ancestors(e) for e in events if e.name == SYNC_EVENT]
    in_optimizer = sum(1 for names in enclosing if any(n.startswith(OPTIMIZER_STEP) for n in names))
    cpu_only = sum(1 for names in enclosing if not any(n.startswith(OPTIMIZER_STEP) for n in names)
                   and any(n in CPU_ONLY_READS for n in names))
    return SyncCount(dict(counts), in_optimizer, cpu_only)


def sync_sites(fn: Callable[[], Any], limit: int = 6) -> list[str]:
    """Where ``fn``'s host reads happen: the innermost ``limit`` Python frames of each (for diagnosis;
    the profiler's own stacks miss C++-only call paths, so this patches the Python entry points)."""
    sites: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "__bool__", "__float__", "__int__", "tolist")}

    def wrap(name: str, original: Callable) -> Callable:
        def hooked(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            frames = traceback.format_stack(limit=limit + 1)[:-1]
            sites.append(f"{name}: " + "".join(frames))
            return original(self, *args, **kwargs)
        return hooked

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, wrap(name, original))
        fn()
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return sites


def model_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor | None = None) -> Callable[[], None]:
    """One bare training step of ``model`` (``training_loss``, backward, ``optimizer.step``), no harness."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = model.training_loss(x, y)
        loss.backward()
        optimizer.step()

    return step

