"""The settings a suite may name and how their values are read: the YAML loader (``_Loader``: no duplicate
keys, aliases bounded by ``MAX_NODES``), ``parse_value`` (a command-line value as YAML reads it), the
training fields (``Field``, ``TRAIN_FIELDS``, ``TRAIN_DEFAULTS``, the fields left out of run ids) and
their checks (``declaration``, ``checked``, ``check_field``, ``check_train``).

It sits low (only ``baselines.constraints``, ``bench.errors`` and PyYAML), so the suite loader
(``bench.spec``), its variants, the SLURM options and the data registry all check values here
without importing one another.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Optional, Union

import yaml

from baselines.constraints import Choice, Invalid, Range, conform
from bench.errors import FlowbenchError, did_you_mean

__all__ = ["check_field", "check_train", "checked", "declaration", "Field", "MAX_NODES", "MODEL_RUN_ID_OPTIONAL",
           "parse_value", "RUN_ID_OPTIONAL", "TRAIN_DEFAULTS", "TRAIN_FIELDS"]


# -- YAML: 1e-3 is a float (YAML 1.1 wants 1.0e-3); no duplicate keys; aliases bounded ----------
MAX_NODES = 100_000  # values in a document with every alias expanded (a suite has a few hundred)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (the last would silently win) and a
    document whose aliases expand to more than MAX_NODES values or refer to themselves (an "alias
    bomb" of nested anchors reads in a moment but is gigabytes once expanded)."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        _check_expansion(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue  # merged keys may be overridden; non-scalar keys are refused by PyYAML itself
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f'duplicate key "{key}" (first at line {seen[key].start_mark.line + 1}); '
                        "keep one", key_node.start_mark)
                seen[key] = key_node
        return super().construct_mapping(node, deep)


def _check_expansion(root: yaml.Node) -> None:
    """Count the document's values with every alias expanded (each shared node once, so the count
    costs no more than the document); refuse more than MAX_NODES, or an alias inside its own anchor."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            open_nodes.discard(id(node))
            size[id(node)] = min(MAX_NODES + 1, 1 + sum(size[id(c)] for c in children))
            if size[id(node)] > MAX_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"the document expands to more than {MAX_NODES:,} values through its aliases "
                    "(*name); write the values out or use fewer aliases", node.start_mark)
            continue
        if id(node) in open_nodes:
            raise yaml.composer.ComposerError(None, None, "an alias (*name) refers to the anchor it is inside",
                                              node.start_mark)
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?(?:[eE][-+]?\d+)$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A command-line value as YAML would read it (numbers, booleans, lists, null)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


# -- the training fields ----------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """A training setting: its type(s), default, choices, whether null is allowed, its minimum."""

    types: tuple[type, ...]
    default: Any
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    minimum: float | None = None
    help: str = ""


TRAIN_FIELDS: dict[str, Field] = {
    "batch_size": Field((int,), 256, minimum=1, help="training batch size"),
    "eval_batch_size": Field((int,), 2048, minimum=1, help="batch size for val/test evaluation"),
    "optimizer": Field((str,), "adam", choices=("adam", "adamw", "adamax")),
    "lr": Field((float,), 1e-3, minimum=0.0),
    "betas": Field((list,), None, nullable=True,
                   help="the optimiser's [beta1, beta2] (null: its defaults, 0.9 and 0.999)"),
    "weight_decay": Field((float,), 0.0, minimum=0.0),
    "weight_decay_on": Field((str,), "all", choices=("all", "marked"),
                             help="all parameters, or only those the model's weight_decay_params() marks"),
    "accumulate": Field((int,), 1, minimum=1,
                        help="micro-batches per step: batch_size is split and the gradients summed (the same step "
                             "for models without batch statistics, less memory)"),
    "polyak": Field((float,), None, nullable=True, minimum=0.0,
                    help="decay of a Polyak (exponential moving) average of the weights, used for evaluation "
                         "and the saved model; null: off"),
    "restore_best": Field((bool,), True,
                          help="test the best-validation weights (false: the final weights)"),
    "schedule": Field((str,), "constant", choices=("constant", "cosine", "step", "plateau"),
                      help="learning-rate schedule after warm-up (plateau: lr / 10 after 10 and lr / 100 after 20 "
                           "validations without improvement, FFJORD's update_lr)"),
    "milestones": Field((list,), [], help="steps at which the 'step' schedule multiplies lr by gamma"),
    "gamma": Field((float,), 0.1, minimum=0.0),
    "warmup_steps": Field((int,), 0, minimum=0, help="linear learning-rate warm-up"),
    "grad_clip": Field((float,), None, nullable=True, minimum=0.0, help="max gradient norm"),
    "max_steps": Field((int,), 1000, nullable=True, minimum=1),
    "max_epochs": Field((int,), None, nullable=True, minimum=1),
    "max_minutes": Field((float,), None, nullable=True, minimum=0.0,
                         help="training wall-clock budget; a solve still running when it is spent is stopped, "
                              "and an evaluation may take as long again before it is stopped (status timeout)"),
    "max_solver_evals": Field((int,), 20_000, nullable=True, minimum=1,
                              help="function evaluations one ODE solve may take (forward, or the adjoint's backward) "
                                   "before the run is stopped as diverged; null: unbounded"),
    "min_solver_step": Field((float,), 1e-7, nullable=True, minimum=0.0,
                             help="the shortest step an adaptive ODE solver may try (in the ODE's time) before the "
                                  "run is stopped as diverged; null: no floor"),
    "eval_every": Field((int,), 100, minimum=1, help="steps between validation evaluations"),
    "eval_max_examples": Field((int,), None, nullable=True, minimum=1,
                               help="cap on validation examples per evaluation during training"),
    "patience": Field((int,), None, nullable=True, minimum=1,
                      help="early stopping after this many evaluations without improvement"),
    "checkpoint_every": Field((int,), 200, minimum=1, help="steps between checkpoints"),
    "test_center": Field((bool,), False, help="images: also test with the pixels at the bin centre, (x + 0.5) / "
                                                 "levels (RNODE's test), as <metric>_center (one more test pass)"),
    "tf32": Field((bool,), False, help="TF32 matrix products and convolutions on GPUs that have them (faster, about "
                                        "10 bits of mantissa); false: full float32"),
    "cudnn_benchmark": Field((bool,), False, help="let cuDNN time its convolution algorithms and keep the fastest "
                                                   "(faster, not deterministic); false: cuDNN's deterministic ones"),
    "deterministic": Field((bool,), False, help="torch.use_deterministic_algorithms (warns on an operation that has "
                                                 "no deterministic form) and cuDNN's deterministic convolutions even "
                                                 "with cudnn_benchmark"),
}
TRAIN_DEFAULTS = {k: f.default for k, f in TRAIN_FIELDS.items()}
# training fields added after run ids were in use: left out of the hashed content while at their default,
# so every run (and pinned number) from before they existed keeps its id
RUN_ID_OPTIONAL = ("tf32", "cudnn_benchmark", "deterministic", "test_center")
# model options added after run ids were in use: left out of the resolved model_config while at the
# builder's default (which the builder fills in again), so every run from before they existed keeps its id
MODEL_RUN_ID_OPTIONAL = ("val_divergence",)

def declaration(spec: Field) -> Any:
    """A training field as the declaration ``baselines.constraints.conform`` checks."""
    base = Union[spec.types] if len(spec.types) > 1 else spec.types[0]
    marks = ([Choice(*spec.choices)] if spec.choices is not None else []) + (
        [Range(min=spec.minimum)] if spec.minimum is not None else [])
    declared = Annotated[(base, *marks)] if marks else base
    return Optional[declared] if spec.nullable else declared


def checked(value: Any, declared: Any, where: str) -> Any:
    """``value`` checked against a declaration (type, range, choices) and normalised (an integer
    for a number becomes a float); nan/inf and integers beyond 64 bits are refused whatever the
    declaration. Raises FlowbenchError naming ``where``, the value and what is allowed."""
    try:
        return conform(value, declared)
    except Invalid as err:
        raise FlowbenchError(f"{where}: {err}") from None


def check_field(value: Any, spec: Field, where: str) -> Any:
    """Validate (and normalise int -> float) one training value; raises FlowbenchError naming ``where``."""
    return checked(value, declaration(spec), where)


def check_train(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate a (possibly partial) train mapping; unknown keys get a did-you-mean."""
    if not isinstance(config, Mapping):
        raise FlowbenchError(f"{where}: expected a mapping of training settings, got {config!r}")
    out = {}
    for key, value in config.items():
        if key not in TRAIN_FIELDS:
            raise FlowbenchError(f"{where}: unknown training setting \"{key}\"{did_you_mean(str(key), TRAIN_FIELDS)}")
        out[key] = check_field(value, TRAIN_FIELDS[key], f"{where}.{key}")
    if "milestones" in out and not all(isinstance(m, int) and not isinstance(m, bool) for m in out["milestones"]):
        raise FlowbenchError(f"{where}.milestones: expected a list of integer steps, got {out['milestones']!r}")
    betas = out.get("betas")
    if betas is not None and not (len(betas) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                                          and 0 <= b < 1 for b in betas)):
        raise FlowbenchError(f"{where}.betas: expected [beta1, beta2], two numbers in [0, 1), got {betas!r}")
    if betas is not None:
        out["betas"] = [float(b) for b in betas]
    if out.get("polyak") is not None and not out["polyak"] < 1:
        raise FlowbenchError(f"{where}.polyak: {out['polyak']!r} is not below 1 (the average's decay, e.g. 0.999)")
    return out
