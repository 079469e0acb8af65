"""The paper-scale suites build the official architectures: parameter counts equal to the official
code's (trainable parameters, as its ``count_parameters`` counts them), worked out by hand below; the
published numbers are compared with the row that ran the published architecture only."""

from __future__ import annotations

import pytest

from suite_models import TABULAR_DIMS, build_from_suite


def odenvp_params(channels: list[int], hidden: int = 64, n_layers: int = 3) -> int:
    """One concat-conv ODE-net per entry of ``channels``: 3x3 convs C+1 -> 64 -> 64 -> 64 -> C, each
    with a bias, time entering every layer as one more input channel."""
    total = 0
    for c in channels:
        dims = [c, *[hidden] * n_layers, c]
        total += sum((a + 1) * b * 9 + b for a, b in zip(dims[:-1], dims[1:]))
    return total


# Per CNF block, the channels it sees: 2 blocks before and 2 after each squeeze, half the channels
# go on; MNIST 28 -> 14 -> 7 (3 scales), CIFAR10 32 -> 16 -> 8 -> 4 (4 scales).
MNIST_BLOCKS = [1, 1, 4, 4, 2, 2, 8, 8, 4, 4]
CIFAR_BLOCKS = [3, 3, 12, 12, 6, 6, 24, 24, 12, 12, 48, 48, 24, 24]


def test_block_arithmetic_gives_the_official_totals():
    # + one trainable sqrt(T) per CNF block (FFJORD trains T)
    assert odenvp_params(MNIST_BLOCKS) + len(MNIST_BLOCKS) == 800_646
    assert odenvp_params(CIFAR_BLOCKS) + len(CIFAR_BLOCKS) == 1_358_882


@pytest.mark.parametrize("suite,dataset,expected", [("mnist", "mnist", 800_646), ("cifar10", "cifar10", 1_358_882)])
def test_ffjord_paper_suites_have_the_official_parameter_count(suite, dataset, expected):
    model = build_from_suite(suite, "ffjord", dataset)
    assert model.num_params() == expected
    blocks = [m for m in model.modules() if m.__class__.__name__ == "CNF"]
    assert all(b.func.net.concat for b in blocks)


@pytest.mark.parametrize("suite,dataset,blocks", [("mnist", "mnist", MNIST_BLOCKS), ("cifar10", "cifar10", CIFAR_BLOCKS)])
def test_rnode_paper_suites_have_the_official_parameter_count(suite, dataset, blocks):
    """RNODE's end time is fixed (a buffer in its code), so it counts no T: 800,636 and 1,358,868."""
    model = build_from_suite(suite, "rnode", dataset)
    assert model.num_params() == odenvp_params(blocks)


def ffjord_glow_params(dim: int, depth: int = 10, dims: str = "100-100") -> int:
    """The count rtqichen/ffjord train_discrete_tabular.py --glow logs, from its layer definitions: per
    block (--depth) a BruteForceLayer (one dim x dim weight, no bias) and a MaskedCouplingLayer of two
    build_net MLPs (net_scale, net_shift), each nn.Linear layers dim -> dims... -> dim, weights and biases."""
    widths = [dim, *map(int, dims.split("-")), dim]
    build_net = sum(n_in * n_out + n_out for n_in, n_out in zip(widths[:-1], widths[1:]))
    return depth * (dim * dim + 2 * build_net)


@pytest.mark.parametrize("dataset", ["power", "miniboone"])
def test_ffjord_tabular_glow_has_the_official_parameter_count(dataset):
    """At the official defaults (--depth 10, --dims 100-100): 228,480 on POWER (D = 6), 395,350 on
    MINIBOONE (D = 43)."""
    model = build_from_suite("tabular", "glow_ffjord", dataset)
    assert model.num_params() == ffjord_glow_params(TABULAR_DIMS[dataset])


def test_ffjords_glow_numbers_sit_beside_the_ffjord_glow_row_only():
    """FFJORD's Table 2 Glow rows (published.csv: glow, setting "") are compared with glow_ffjord, the
    architecture that produced them, on every set; our Glow row is compared with none."""
    from bench.published import index, load_published, lookup
    from bench.spec import SUITES_DIR, load_suite

    refs = index(load_published())
    expected = {"power": -0.17, "gas": -8.15, "hepmass": 18.92, "miniboone": 11.35, "bsds300": -155.07}
    runs = [s for s in load_suite(SUITES_DIR / "tabular.yaml").runs() if s.seed == 0]
    found = {}
    for spec in runs:
        ref, _ = lookup(refs, spec.model, spec.dataset, "nll", spec.setting, spec.published_model)
        if spec.model == "glow_ffjord":
            found[spec.dataset] = ref.value if ref else None
        elif spec.model == "glow":
            assert ref is None, (spec.label, ref)
        elif spec.model == "realnvp":
            assert ref is not None, spec.label  # the other rows still find theirs
    assert found == expected
