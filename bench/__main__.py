"""`python -m bench` is the `flowbench` command."""

from bench.cli import entry

__all__: list[str] = []

entry()
