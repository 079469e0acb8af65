"""The paper-scale suites build the official architectures: parameter counts equal to the official
code's (trainable parameters, as its ``count_parameters`` counts them), worked out by hand below."""

from __future__ import annotations

import pytest

from suite_models import build_from_suite


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
