"""A model rebuilt from its record: ``build_model`` (the one way a run's model is built, for training
and for rebuilding) and ``load_model`` (a completed run's best-validation weights, in eval mode).

It sits above the data registry (``bench.data``), the model registry (``baselines.registry``) and the
file layer (``bench.io``), and below training and reports: the run record (``bench.store``) stays
free of models and data, so everything that only reads or writes records imports neither.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from baselines.registry import call_builder, flat_signature, get_builder, model_names
from bench.data import load_dataset
from bench.errors import FlowbenchError, did_you_mean
from bench.io import UnreadableFile, load_tensors

__all__ = ["build_model", "load_model"]


def build_model(model: str, info: Any, config: dict[str, Any], where: str) -> Any:
    """The model ``model`` for the data ``info`` (a ``DataInfo``) with the hyperparameters ``config``
    (a run spec's ``model_config``, flat): the one way a run's model is built, for training
    (``bench.train.Trainer``) and for rebuilding a finished run (``load_model``), so both build the
    same model. Raises FlowbenchError naming ``where`` when the model is not registered or its
    builder does not take one of the hyperparameters."""
    try:
        builder = get_builder(model)
    except KeyError:
        raise FlowbenchError(f'{where}: unknown model "{model}"{did_you_mean(model, model_names())}; a plug-in '
                             "model needs its module imported first (a suite's plugins:)") from None
    known = list(flat_signature(builder).parameters)[1:]
    unknown = [key for key in config if key not in known]
    if unknown:
        raise FlowbenchError(f'{where}: model "{model}" takes no hyperparameter {", ".join(map(repr, unknown))}'
                             f"{did_you_mean(str(unknown[0]), known)}; its code changed since the run was "
                             "specified: re-run it with --force")
    return call_builder(builder, info, config)


def load_model(run_dir: str | os.PathLike, data_root: str | None = None) -> tuple[Any, Any]:
    """Rebuild a completed run's model (best-validation weights, ``model.pt``) in eval mode; returns
    (model, dataset). Raises FlowbenchError naming the run when its files are missing or do not fit.
    Nothing the run folder names is imported: a plug-in model's module must be imported already."""
    run_dir = Path(run_dir)
    try:
        spec = json.loads((run_dir / "spec.json").read_text())
    except (OSError, ValueError) as err:
        raise FlowbenchError(f"run {run_dir}: cannot read its spec.json ({type(err).__name__}: {err})") from None
    try:
        state = load_tensors(run_dir / "model.pt")
    except FileNotFoundError:
        raise FlowbenchError(f"run {run_dir}: no model.pt; only completed runs keep one") from None
    except (OSError, UnreadableFile) as err:
        raise FlowbenchError(f"run {run_dir}: cannot load model.pt ({err}); re-run it with --force") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise FlowbenchError(f"run {run_dir}: model.pt holds {type(state).__name__}, not the weights flowbench "
                             "saves; re-run it with --force")
    data = load_dataset(spec["dataset"], spec.get("data_config", {}), data_root)
    config = state.get("model_config")
    config = config if isinstance(config, dict) else spec.get("model_config", {})
    if not isinstance(config, dict):
        raise FlowbenchError(f"run {run_dir}: spec.json's model_config is {type(config).__name__}, not a mapping of "
                             "hyperparameters; re-run it with --force")
    model = build_model(str(spec.get("model")), data.info, config, f"run {run_dir}")
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0]
        raise FlowbenchError(f"run {run_dir}: model.pt does not fit the model built from its spec ({first}); "
                             "the model code changed since the run; re-run it with --force") from None
    model.eval()
    return model, data
