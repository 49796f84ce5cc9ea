#!/usr/bin/env python3
"""A module-tree scan with the site loop taken out: ``mcountrw scan ARGS`` run in this process (its
workers fork from it), every plain module's sites found empty. What is left is everything the scan
does but the sites and their JSON: Python's start-up and imports, reading and decompressing each
file, the ELF parse, the records, the generation, the function table, each image's JSON header and
summary, and the report. Run next to the ``xz -dc`` floor, its time is the best that any faster
site loop and site JSON could give: a target it misses is out of reach of work on the sites alone.

Not a mode of the tool: the bench replaces ``rewriter.sites._module_sites`` here, for this
measurement only (it fails loudly if that function is renamed).

Usage: python3 -P bench/scan_without_sites.py [scan options] PATH... (with the checkout on PYTHONPATH)
"""

from __future__ import annotations

import sys

# rewriter.cli first: it sets OPENBLAS_NUM_THREADS before numpy is imported, as the tool does.
from rewriter.cli import run_process  # isort: skip

import numpy as np

import rewriter.sites


def _no_sites(*_args: object) -> tuple[tuple[()], np.ndarray]:
    """What ``_module_sites`` returns for a module with no sites and no unmatched records."""
    return (), np.zeros(0, np.uint64)


def main() -> None:
    if not hasattr(rewriter.sites, "_module_sites"):
        sys.exit("bench/scan_without_sites.py: rewriter.sites._module_sites is gone; update this script")
    rewriter.sites._module_sites = _no_sites  # type: ignore[assignment]
    sys.argv = ["mcountrw", "scan", *sys.argv[1:]]
    run_process()


if __name__ == "__main__":
    main()
