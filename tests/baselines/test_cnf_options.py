"""The CNF options declared once (baselines/cnf_options.py): every builder's defaults as before, flat
keyword arguments and the options dataclass building the same model, and no option restated."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest
import torch

from baselines import ffjord, infocnf, rnode
from baselines.cnf_options import CNFOptions, FFJORDOptions, RNODEOptions
from baselines.registry import flat_signature
from bench.data.base import DataInfo

TOY = DataInfo("8gaussians", "toy", (2,), num_classes=8)
TABULAR = DataInfo("power", "tabular", (6,))

# each builder's defaults before the options were folded into one dataclass (the suites' run ids hash them)
FFJORD_DEFAULTS = dict(n_blocks=None, hidden=None, layer_type="auto", activation="auto", end_time=None,
                       train_end_time=True, divergence="auto", eval_divergence="auto", noise="auto", solver="dopri5",
                       atol=None, rtol=None, step_size=None, eval_solver="dopri5", eval_atol=None, eval_rtol=None,
                       adjoint=True, steer=0.0, batch_norm=False, n_scales=0, zero_last=False, adjoint_seminorm=False,
                       val_divergence=None, first_step=None)  # val_divergence: out of the run id at its default
RNODE_DEFAULTS = dict(FFJORD_DEFAULTS, kinetic=0.01, jacobian=0.01, end_time=1.0, train_end_time=False,
                      noise="gaussian", step_size=0.25, zero_last=True)
INFOCNF_FLOW_DEFAULTS = {**{k: v for k, v in FFJORD_DEFAULTS.items() if k != "first_step"},
                         "eval_atol": 1e-5, "eval_rtol": 1e-5}


def defaults(builder) -> dict:
    return {name: p.default for name, p in list(flat_signature(builder).parameters.items())[1:]}


def test_every_builder_keeps_its_defaults_and_order():
    assert defaults(ffjord.build) == FFJORD_DEFAULTS
    assert list(defaults(ffjord.build)) == list(FFJORD_DEFAULTS)
    assert defaults(rnode.build) == RNODE_DEFAULTS
    assert list(defaults(rnode.build))[:3] == ["kinetic", "jacobian", "n_blocks"]  # RNODE's order, as before
    info = defaults(infocnf.build_infocnf)
    assert {k: info[k] for k in INFOCNF_FLOW_DEFAULTS} == INFOCNF_FLOW_DEFAULTS
    assert "first_step" not in info and "kinetic" not in info
    assert list(info)[0] == "condition_ratio" and list(info)[-1] == "val_divergence"
    assert defaults(infocnf.build_ccnf)["condition_ratio"] == 1.0 and defaults(infocnf.build_ccnf)["dropout"] == 0.0
    assert defaults(infocnf.build_infocnf_learned)["tolerance"] == "learned"


def test_rnode_declares_its_end_time_positive():
    from baselines.constraints import Invalid, conform

    annotation = flat_signature(rnode.build).parameters["end_time"].annotation
    assert conform(2, annotation) == 2.0
    with pytest.raises(Invalid):
        conform(None, annotation)  # FFJORD's None (the kind's default) is not RNODE's
    conform(None, flat_signature(ffjord.build).parameters["end_time"].annotation)


@pytest.mark.parametrize("builder, options", [
    (ffjord.build, FFJORDOptions(hidden=[8], n_blocks=2, atol=1e-6, first_step=0.01, steer=0.1)),
    (rnode.build, RNODEOptions(hidden=[8], kinetic=0.5, solver="rk4", step_size=0.5)),
])
def test_flat_keywords_and_the_dataclass_build_the_same_model(builder, options):
    flat = {f.name: getattr(options, f.name) for f in fields(options)}
    torch.manual_seed(0)
    a = builder(TABULAR, **flat)
    torch.manual_seed(0)
    b = builder(TABULAR, cnf=options)
    blocks_a, blocks_b = a.blocks, b.blocks
    assert len(blocks_a) == len(blocks_b) == (options.n_blocks or 1)
    for x, y in zip(blocks_a, blocks_b):
        assert x.train_solver == y.train_solver and x.eval_solver == y.eval_solver and x.steer == y.steer
        assert all(torch.equal(p, q) for p, q in zip(x.parameters(), y.parameters()))
    assert (a.kinetic, a.jacobian) == (b.kinetic, b.jacobian) == options.regularisation()


def test_options_reach_the_blocks():
    model = ffjord.build(TABULAR, hidden=[8], atol=1e-6, rtol=1e-4, first_step=0.01, eval_atol=1e-7, steer=0.2)
    block = model.blocks[0]
    assert (block.train_solver.atol, block.train_solver.rtol, block.train_solver.first_step) == (1e-6, 1e-4, 0.01)
    assert (block.eval_solver.atol, block.eval_solver.rtol) == (1e-7, 1e-5)  # eval_rtol: min(rtol, 1e-5)
    assert block.steer == 0.2 and model.kinetic == 0.0
    reg = rnode.build(TABULAR, hidden=[8], kinetic=0.5, jacobian=0.0)
    assert (reg.kinetic, reg.jacobian) == (0.5, 0.0) and reg.blocks[0].regularize
    assert reg.blocks[0].train_solver.step_size == 0.25 and not reg.blocks[0].func.sqrt_end_time.requires_grad
    flow = infocnf.build_infocnf(TOY, hidden=[8], atol=1e-4).flow
    assert (flow.blocks[0].train_solver.atol, flow.blocks[0].eval_solver.atol) == (1e-4, 1e-5)
    assert flow.end_times() == [pytest.approx(0.5)]  # the toy kind's T, filled in once by make_cnf_model
    with pytest.raises(TypeError, match="first_step"):
        infocnf.build_infocnf(TOY, first_step=0.1)  # InfoCNF's flow never took it


def test_no_cnf_option_is_listed_twice():
    names = {f.name for f in fields(RNODEOptions)} | {f.name for f in fields(CNFOptions)}
    for module in (ffjord, rnode, infocnf):
        for fn_name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__:
                restated = names & set(inspect.signature(inspect.unwrap(fn)).parameters)
                assert not restated, (module.__name__, fn_name, restated)


def test_the_spec_checks_and_coerces_the_options_once():
    from bench.errors import FlowbenchError
    from bench.spec import resolve_model_config

    out = resolve_model_config("rnode", {"steer": 0, "kinetic": 1, "hidden": [8, 8]}, "here")
    assert out["steer"] == 0.0 and isinstance(out["steer"], float) and out["kinetic"] == 1.0
    assert out["end_time"] == 1.0 and out["step_size"] == 0.25 and out["hidden"] == [8, 8]
    with pytest.raises(FlowbenchError, match=r"here\.atol: expected a number > 0 or null, got '1e-5'"):
        resolve_model_config("ffjord", {"atol": "1e-5"}, "here")  # text is refused, not coerced by the model
    with pytest.raises(FlowbenchError, match=r'here: model "infocnf" has no hyperparameter "first_step"'):
        resolve_model_config("infocnf", {"first_step": 0.1}, "here")
    with pytest.raises(FlowbenchError, match=r"here\.end_time: expected a number > 0, got None"):
        resolve_model_config("rnode", {"end_time": None}, "here")
    model = ffjord.build(TABULAR, **resolve_model_config("ffjord", {"hidden": 8, "end_time": 2}, "here"))
    assert model.blocks[0].func.net.layers[0].out_features == 8 and model.end_times() == [pytest.approx(2.0)]


def test_options_are_frozen():
    with pytest.raises(AttributeError):
        CNFOptions().atol = 1.0  # type: ignore[misc]


def test_the_harness_builds_a_cnf_model_from_flat_options_in_one_place():
    # bench.models.build_model: what training and rebuilding a finished run both call
    from bench.errors import FlowbenchError
    from bench.models import build_model

    model = build_model("rnode", TABULAR, {"hidden": [8], "kinetic": 0.5, "first_step": 0.01}, "run r")
    assert model.kinetic == 0.5 and model.blocks[0].train_solver.first_step == 0.01
    with pytest.raises(FlowbenchError, match=r"run r: model \"ffjord\" takes no hyperparameter 'kinetic'.*hidden"
                                             r".*re-run it with --force"):
        build_model("ffjord", TABULAR, {"kinetic": 1.0}, "run r")  # RNODE's option, not FFJORD's
    with pytest.raises(FlowbenchError, match=r'run r: unknown model "ffjord2" \(did you mean "ffjord"\?\); a plug-in'):
        build_model("ffjord2", TABULAR, {}, "run r")
