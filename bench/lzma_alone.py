#!/usr/bin/env python3
"""Python's own floor for a .ko.xz tree: read and decompress every module with Python's ``lzma``
(the same liblzma as ``xz``), in ``--jobs`` worker processes as ``mcountrw scan --jobs`` does, and
nothing else. Whatever a Python scan of the tree does, it pays this first: the bench runs it next
to the ``xz -dc`` floor, so that the scan's ratio to that floor splits into what decompressing
costs in Python and what the scan itself adds.

Usage: python3 bench/lzma_alone.py [--jobs N] DIR
"""

from __future__ import annotations

import argparse
import lzma
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def modules(top: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(top):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.endswith(".ko.xz")]
    return found


def decompressed_size(path: str) -> int:
    with open(path, "rb") as fh:
        return len(lzma.LZMADecompressor().decompress(fh.read()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("dir", type=Path)
    args = parser.parse_args()
    files = modules(args.dir)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        total = sum(pool.map(decompressed_size, files, chunksize=64))
    print(f"{len(files)} modules, {total} bytes decompressed")


if __name__ == "__main__":
    main()
