"""`python3 -m rewriter`: the same entry point as the `mcountrw` command."""

from rewriter.cli import run_process

run_process()
