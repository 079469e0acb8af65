"""Where a run ran: versions, device, host, git commit, SLURM ids (recorded in result.json)."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "device_name", "environment", "git_sha", "gpu", "numerics", "PACKAGES", "versions"]

PACKAGES = ("torch", "torchdiffeq", "normflows", "numpy", "pandas", "submitit")


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The commit of the flowbench checkout (with '+dirty' for uncommitted changes), if any."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    from bench import __version__

    out: dict[str, str | None] = {"python": platform.python_version(), "flowbench": __version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else the platform's processor or machine name."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: Any) -> str:
    """The device's name, which with its kind is the host class that time is compared within: the
    GPU's name, or the CPU's model and the torch threads the run used."""
    import torch

    try:
        device = torch.device(device)
    except RuntimeError:
        return f"unknown device {device!r}"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "unavailable: no CUDA on this machine"
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def numerics() -> dict[str, bool]:
    """torch's process-wide numerics flags as they are now (``bench.train.apply_numerics`` sets them)."""
    import torch

    return {"tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled())}


def gpu(device: Any) -> dict[str, Any]:
    """The device kind ("cpu" or "cuda"), the GPU's name, the CUDA and cuDNN versions torch was built
    with (None where they do not apply), so time and memory are only compared like with like."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:  # a device string torch does not know: the run's record says so
        kind = "unknown"
    cuda = kind == "cuda" and torch.cuda.is_available()
    return {"device_kind": kind, "gpu_name": torch.cuda.get_device_name(torch.device(device)) if cuda else None,
            "cuda_version": torch.version.cuda, "cudnn_version": torch.backends.cudnn.version() if cuda else None}


def environment(device: Any) -> dict[str, Any]:
    """Everything a reader needs to know about where a number came from."""
    slurm = {k.lower(): os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                                                 "SLURM_JOB_PARTITION", "SLURM_RESTART_COUNT") if k in os.environ}
    return {"git_sha": git_sha(), "versions": versions(), "device": str(device), "device_name": device_name(device),
            **gpu(device), "numerics": numerics(), "host": socket.gethostname(), "pid": os.getpid(), "slurm": slurm}
