"""flowbench: a benchmark and reproduction harness for normalizing flows.

Nothing here imports torch or pandas: the command line answers at once.
"""

__all__: list[str] = []

__version__ = "0.1.0"
