"""Small suites the launcher, retry and snapshot tests share (seconds to run on a CPU)."""

__all__ = ["REALNVP_MOONS", "SIX_SEEDS"]

# one realnvp run on moons, 30 steps
REALNVP_MOONS = """
datasets:
  moons: {n_train: 1024, n_val: 256, n_test: 256}
models: {realnvp: {n_layers: 2, hidden: 16, batch_norm: false}}  # batch statistics would differ per process
seeds: [0]
train: {max_steps: 30, batch_size: 128, eval_every: 10, lr: 1e-2}
"""

# six seeds of a small realnvp on moons, 60 steps each
SIX_SEEDS = """
datasets:
  moons: {n_train: 512, n_val: 128, n_test: 128}
models: {realnvp: {n_layers: 2, hidden: 8}}
seeds: [0, 1, 2, 3, 4, 5]
train: {max_steps: 60, batch_size: 64, eval_every: 10, checkpoint_every: 20}
"""
