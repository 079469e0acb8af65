"""`python -m bench` is the `flowbench` command."""

from bench.cli import entry

entry()
