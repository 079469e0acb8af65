"""`python -m bench` is the `flowbench` command."""

from bench.cli import main

raise SystemExit(main())
