"""The flow families under comparison.

Each model is a plain ``torch.nn.Module`` built by ``build(data, **hparams)``; nothing here
imports the harness (``bench``). Importing this package is cheap: model modules load lazily.
"""

from baselines.registry import get_builder, model_names, describe_models, register

__all__ = ["get_builder", "model_names", "describe_models", "register"]
