"""SLURM resources as submitit parameters (bench/slurm.py): keys checked, one message for a bad one."""

from __future__ import annotations

import pytest

from bench.errors import FlowbenchError
from bench.slurm import parse_slurm_overrides, slurm_parameters


def test_slurm_options_are_checked():
    assert parse_slurm_overrides("partition=gpu,timeout_min=120") == {"partition": "gpu", "timeout_min": 120}
    params = slurm_parameters({"partition": "gpu", "setup": "module load cuda", "additional": {"requeue": True}}, "s")
    assert params["slurm_partition"] == "gpu" and params["slurm_setup"] == ["module load cuda"]
    assert params["timeout_min"] == 60 and params["slurm_additional_parameters"] == {"requeue": True}
    with pytest.raises(FlowbenchError, match='unknown SLURM option "partiton" \\(did you mean "partition"\\?\\)'):
        slurm_parameters({"partiton": "gpu"}, "suites/x.yaml: slurm")
    with pytest.raises(FlowbenchError, match="expected KEY=VALUE"):
        parse_slurm_overrides("gpu")
